"""The ``msd`` dataset on tiny Medical Segmentation Decathlon task folders."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from dataset_json_helpers import build, error_line, label_map, save, write_msd
from ingest_helpers import cache_files

from ssmtl.data.cache import SliceCache
from ssmtl.plugins.datasets.msd import build_source, MsdConfig

BRAIN = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
BRAIN_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def test_a_task_builds_from_its_dataset_json_only(tmp_path):
    root = write_msd(tmp_path / "Task02_Heart")
    result = build("msd", tmp_path / "c.h5", "--path", str(root))
    assert result.exit_code == 0, result.output
    cache = SliceCache(tmp_path / "c.h5")
    assert cache.class_names == {0: "background", 1: "left atrium"}
    # the listed files only: neither the ._ resource forks nor the unlisted la_999
    assert [v.subject for v in cache.volumes] == ["la_003", "la_004", "la_007", "la_001"]  # training, then test
    assert {v.subject: (v.modality, v.has_label) for v in cache.volumes} == {
        "la_001": ("mr", False), "la_003": ("mr", True), "la_004": ("mr", True), "la_007": ("mr", True)}
    labeled = [v for v in cache.volumes if v.has_label]
    assert all(set(np.unique(cache.read_label(v.index)).tolist()) == {0, 1} for v in labeled)
    assert cache.summary()["labeled_volumes"] == 3 and cache.attrs["dataset"] == "msd"
    assert build("msd", tmp_path / "tr.h5", "--path", str(root), "--no-include-test").exit_code == 0
    assert [v.subject for v in SliceCache(tmp_path / "tr.h5").volumes] == ["la_003", "la_004", "la_007"]


def test_a_multi_modal_task_needs_channel_and_reads_that_channel(tmp_path):
    root = write_msd(tmp_path / "Task01_BrainTumour", modalities=BRAIN, labels=BRAIN_LABELS)
    line = error_line(build("msd", tmp_path / "c.h5", "--path", str(root)))
    assert line == (f"error: {root / 'dataset.json'}: modality declares 4 channels (0 FLAIR, 1 T1w, 2 t1gd, 3 T2w); "
                    "ssmtl's networks take one channel per volume: choose one with --channel N")
    assert cache_files(tmp_path) == []
    # --channel 2 (t1gd): the volume is that channel of the 4D image, an MR by its name
    source = build_source(MsdConfig(path=root, channel=2))
    assert source.class_names == {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
    volume = source.items[0].load()  # la_003, the first training entry
    four_d = nib.as_closest_canonical(nib.load(str(root / "imagesTr" / "la_003.nii.gz")))
    np.testing.assert_allclose(volume.image, four_d.get_fdata()[..., 2], atol=1e-3)
    assert volume.modality == "mr" and volume.image.shape == (32, 32, 8)
    assert set(np.unique(volume.label).tolist()) == {0, 1, 2}
    result = build("msd", tmp_path / "c.h5", "--path", str(root), "--channel", "2")
    assert result.exit_code == 0, result.output
    assert {v.modality for v in SliceCache(tmp_path / "c.h5").volumes} == {"mr"}
    line = error_line(build("msd", tmp_path / "d.h5", "--path", str(root), "--channel", "4"))
    assert line.endswith("--channel 4: modality declares channels 0 FLAIR, 1 T1w, 2 t1gd, 3 T2w")


@pytest.mark.parametrize("problem", ["missing label", "undeclared value", "3D image in a 4D task", "no dataset.json",
                                     "numTest", "bad entry"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, problem):
    modalities = BRAIN if problem == "3D image in a 4D task" else None
    root = write_msd(tmp_path / "Task", modalities=modalities, labels=BRAIN_LABELS if modalities else None)
    args = ["--channel", "0"] if modalities else []
    dataset = json.loads((root / "dataset.json").read_text())
    named, words = root / "dataset.json", None
    if problem == "missing label":
        (root / "labelsTr" / "la_004.nii.gz").unlink()
        named, words = root / "labelsTr" / "la_004.nii.gz", f"file not found (listed in training entry 2 of {root / 'dataset.json'})"
    elif problem == "undeclared value":
        named = save(root / "labelsTr" / "la_007.nii.gz", label_map((1, 2)))
        words = "label values [2] are not in the label mapping [1]"
    elif problem == "3D image in a 4D task":
        named = save(root / "imagesTr" / "la_004.nii.gz", np.zeros((32, 32, 8), np.float32))
        words = "expected a 4D image of 4 channels (X, Y, Z, 4), got shape (32, 32, 8)"
    elif problem == "no dataset.json":
        (root / "dataset.json").unlink()
        words = "file not found"
    elif problem == "numTest":
        dataset["numTest"] = 2
        words = "numTest is 2 but the test list holds 1"
    elif problem == "bad entry":
        dataset["training"][1] = "./imagesTr/la_004.nii.gz"
        words = "training entry 2: expected {\"image\": ..., \"label\": ...}"
    if problem in ("numTest", "bad entry"):
        (root / "dataset.json").write_text(json.dumps(dataset))
    line = error_line(build("msd", tmp_path / "c.h5", "--path", str(root), *args))
    assert line.startswith(f"error: {named}: ") and words in line, line
    assert cache_files(tmp_path) == []
