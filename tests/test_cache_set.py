"""Several caches as one dataset: identity, routed reads, agreement checks, weighted sampling, runs."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_PRETRAIN, slice_value, write_cache
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.cli.app import app
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import CacheSet, open_caches
from ssmtl.data.sampling import SequenceDataset, StepBatchSampler, WeightedStepBatchSampler
from ssmtl.data.splits import split_cache
from ssmtl.host.registry import get_registry

runner = CliRunner()


@pytest.fixture(scope="module")
def other_tiny_cache(tmp_path_factory):
    """The tiny cache's subjects (same names, same split) drawn with another phantom seed: a second
    cache that is not a copy (a copy beside its original is refused: every subject would count twice)."""
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.testing.fixtures import TINY_CACHE

    out = tmp_path_factory.mktemp("other_tiny_cache") / "other.h5"
    return build_cache(dataset="phantom", dataset_options={**TINY_CACHE, "seed": 1},
                       preprocess=PreprocessConfig(size=TINY_CACHE["size"]), out=out, registry=get_registry())


def set_root_attr(path, key, value) -> None:
    """Edit a root attribute (the fingerprint covers the volumes only, so the cache stays valid)."""
    with h5py.File(path, "a") as f:
        f.attrs[key] = json.dumps(value)


def test_one_path_is_the_plain_cache_and_a_set_names_subjects_by_cache(tmp_path):
    a = write_cache(tmp_path / "site_a.h5", [3, 4])
    b = write_cache(tmp_path / "site_b.h5", [5])
    assert type(open_caches(a)) is SliceCache  # one file: exactly today's reader
    assert type(open_caches([a])) is SliceCache

    both = open_caches(tmp_path)  # a folder: its caches, sorted
    assert isinstance(both, CacheSet) and both.paths == [a, b]
    # the same subject id in two caches is two subjects
    assert [v.subject for v in both.volumes] == ["site_a/subject/00", "site_a/subject/01", "site_b/subject/00"]
    assert [v.index for v in both.volumes] == [0, 1, 2]
    assert [v.num_slices for v in both.volumes] == [3, 4, 5]
    # reads go to the owning file: volume 2 of the set is volume 0 of site_b
    np.testing.assert_array_equal(both.read_slices(2, np.array([1, 3]))[:, 0, 0], [slice_value(0, 1), slice_value(0, 3)])
    np.testing.assert_array_equal(both.read_slices(1, np.array([2]))[:, 0, 0], [slice_value(1, 2)])
    assert int(both.read_label_slice(2, 4)[0, 0]) == 4 % 3
    assert both.read_label(0).shape == (3, 8, 8)
    assert both.records() == [{"path": str(a), "fingerprint": SliceCache(a).fingerprint},
                              {"path": str(b), "fingerprint": SliceCache(b).fingerprint}]
    # the set's sequences span both files
    dataset = SequenceDataset(both, length=3)
    assert sorted({int(v) for v in dataset.windows[:, 0]}) == [0, 1, 2]

    with pytest.raises(InputFileError, match="named twice"):
        open_caches([a, tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no \\*.h5 cache"):
        open_caches(tmp_path / "empty")


def test_same_stems_are_told_apart_by_their_folders(tmp_path):
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    # (different depths: two caches of identical voxels are one cache under two names, refused)
    both = open_caches([write_cache(tmp_path / "x" / "train.h5", [3]), write_cache(tmp_path / "y" / "train.h5", [4])])
    assert [v.subject for v in both.volumes] == ["x/train/subject/00", "y/train/subject/00"]


def test_each_caches_stored_split_is_kept_and_no_subject_spans_two_splits(tmp_path):
    a = write_cache(tmp_path / "a.h5", [3, 3, 3])
    b = write_cache(tmp_path / "b.h5", [3, 3, 4])  # not a copy of a.h5
    for path, test_subject in ((a, "subject/00"), (b, "subject/02")):
        with h5py.File(path, "a") as f:
            for name in f["volumes"]:
                group = f["volumes"][name]
                group.attrs["split"] = "test" if group.attrs["subject"] == test_subject else "train"
    split = split_cache(open_caches([a, b]), seed=0)
    assert split["source"] == "cache"
    assert split["test"] == ["a/subject/00", "b/subject/02"]
    assert "a/subject/02" in split["train"] and "b/subject/00" in split["train"]
    assert not set(split["test"]) & set(split["train"])


def test_labeled_work_needs_the_same_classes_and_normalisation(tmp_path):
    a = write_cache(tmp_path / "a.h5", [3, 3])  # volume 0 ct, volume 1 mr
    b = write_cache(tmp_path / "b.h5", [3])  # ct
    unlabeled = write_cache(tmp_path / "u.h5", [3], labeled=False)
    set_root_attr(unlabeled, "class_names", {"0": "background"})
    # an unlabeled cache's class names do not matter
    assert open_caches([a, unlabeled]).class_names == {0: "background", 1: "a", 2: "b"}

    set_root_attr(b, "class_names", {"0": "background", "1": "a", "2": "c"})
    with pytest.raises(InputFileError) as caught:
        open_caches([a, b]).class_names
    assert str(b) in str(caught.value) and "class names" in str(caught.value) and str(a) in str(caught.value)

    set_root_attr(b, "class_names", {"0": "background", "1": "a", "2": "b"})
    set_root_attr(a, "preprocess", {"size": 8, "spacing": None, "ct_window": [-250, 750], "mr_percentiles": [1, 99]})
    set_root_attr(b, "preprocess", {"size": 8, "spacing": None, "ct_window": [-100, 300], "mr_percentiles": [5, 95]})
    with pytest.raises(InputFileError) as caught:
        open_caches([a, b]).attrs
    assert str(b) in str(caught.value) and "ct_window" in str(caught.value)
    # b holds no MR volume: its mr_percentiles are not compared
    set_root_attr(b, "preprocess", {"size": 8, "spacing": None, "ct_window": [-250, 750], "mr_percentiles": [5, 95]})
    assert open_caches([a, b]).attrs["preprocess"]["mr_percentiles"] == [1, 99]

    # fine-tuning stops before any run directory with the cache named
    set_root_attr(b, "class_names", {"0": "background", "1": "a", "2": "c"})
    result = runner.invoke(app, ["--no-plugins", "finetune", "--data", str(a), "--data", str(b), "--out",
                                 str(tmp_path / "ft"), "--steps", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "b.h5" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ft").exists()


def test_slices_of_different_sizes_cannot_train_together(tmp_path):
    from ssmtl.data.cache_set import check_slice_shapes

    a = write_cache(tmp_path / "a.h5", [3])
    b = write_cache(tmp_path / "b.h5", [3], size=16)
    with pytest.raises(InputFileError, match="slices are 16x16 but .*a.h5 has 8x8"):
        check_slice_shapes(open_caches([a, b]))


def test_weighted_sampling_follows_the_weights():
    groups = [np.arange(0, 10), np.arange(10, 60), np.arange(60, 65), np.arange(65, 70)]
    sampler = WeightedStepBatchSampler(groups, [1, 2, 1, 0], 8, seed=3)
    drawn = np.concatenate([sampler.batch(m) for m in range(3000)])
    owner = np.searchsorted([10, 60, 65, 70], drawn, side="right")
    share = np.bincount(owner, minlength=4) / len(drawn)
    # 24000 draws: a share's standard error is <= 0.0032, so 0.015 is > 4.5 sigma
    np.testing.assert_allclose(share, [0.25, 0.5, 0.25, 0.0], atol=0.015)
    assert share[3] == 0  # weight 0: never drawn
    # within a cache, every window is reachable
    assert set(drawn[owner == 2]) == set(range(60, 65))
    # a pure function of the step (resume) and different per rank
    again = WeightedStepBatchSampler(groups, [1, 2, 1, 0], 8, seed=3)
    assert again.batch(1234) == sampler.batch(1234)
    assert WeightedStepBatchSampler(groups, [1, 2, 1, 0], 8, seed=3, rank=1, world=2).batch(0) != \
        WeightedStepBatchSampler(groups, [1, 2, 1, 0], 8, seed=3, rank=0, world=2).batch(0)
    with pytest.raises(SsmtlError, match="no sequence"):
        WeightedStepBatchSampler([np.arange(3), np.arange(0)], [1, 1], 2, seed=0)


def test_the_engine_samples_one_cache_as_before_and_weights_a_set(tmp_path):
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.pretraining.engine import make_sampler

    a = write_cache(tmp_path / "a.h5", [4, 4])
    b = write_cache(tmp_path / "b.h5", [6])
    one = resolve_pretrain_config(flags={"data.path": a, "out": tmp_path / "r"}, registry=get_registry())
    sampler = make_sampler(one, SequenceDataset(open_caches(a), 2), 0, 1, 0, 5)
    assert type(sampler) is StepBatchSampler  # one cache, no weights: the very same batches as before

    config = resolve_pretrain_config(flags={"data.path": [a, b], "out": tmp_path / "r"}, sets=["data.weights=[3,1]"], registry=get_registry())
    dataset = SequenceDataset(open_caches(config.data.path), 2)
    sampler = make_sampler(config, dataset, 0, 1, 0, 5)
    assert isinstance(sampler, WeightedStepBatchSampler)
    volumes_of_group = [sorted({int(dataset.windows[i, 0]) for i in g}) for g in sampler.groups]
    assert volumes_of_group == [[0, 1], [2]]
    bad = resolve_pretrain_config(flags={"data.path": [a, b], "out": tmp_path / "r"}, sets=["data.weights=[1]"], registry=get_registry())
    with pytest.raises(SsmtlError, match="data.weights has 1 value"):
        make_sampler(bad, dataset, 0, 1, 0, 5)


def test_pretraining_on_two_caches_records_both_and_keeps_held_out_subjects_out(tmp_path, ssmtl_tiny_cache,
                                                                                 other_tiny_cache):
    import ssmtl

    other = other_tiny_cache  # the same subject ids: two subjects each
    out = tmp_path / "pre"
    ssmtl.pretrain([ssmtl_tiny_cache, other], out, steps=2, batch_size=2, settings=TINY_PRETRAIN, progress=False)
    data = json.loads((out / "export" / "manifest.json").read_text())["data"]
    assert data["caches"] == [{"path": str(ssmtl_tiny_cache), "fingerprint": SliceCache(ssmtl_tiny_cache).fingerprint},
                              {"path": str(other), "fingerprint": SliceCache(other).fingerprint}]
    assert json.loads((out / "config.json").read_text())["data"]["path"] == [str(ssmtl_tiny_cache), str(other)]
    held_out = {v.subject for v in SliceCache(ssmtl_tiny_cache).volumes if v.split in ("val", "test")}
    trained = {s.split("/", 1)[1] for s in data["volumes"]}
    assert held_out and not held_out & trained
    assert {s.split("/", 1)[0] for s in data["volumes"]} == {ssmtl_tiny_cache.stem, "other"}


def test_cache_info_shows_the_union(tmp_path):
    a = write_cache(tmp_path / "a.h5", [3, 4])
    b = write_cache(tmp_path / "b.h5", [5])
    result = runner.invoke(app, ["--no-plugins", "cache", "info", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    union = json.loads(result.output)
    assert (union["caches"], union["volumes"], union["slices"]) == (2, 3, 12)
    assert union["modalities"] == {"ct": 2, "mr": 1}
    assert [c["volumes"] for c in union["per_cache"]] == [2, 1]
    table = runner.invoke(app, ["--no-plugins", "cache", "info", str(tmp_path)])
    assert table.exit_code == 0 and "2 caches read as one dataset" in table.output


def test_native_references_of_a_set_come_from_each_volumes_own_dataset(ball_run, tmp_path):
    """Evaluation at native resolution re-reads each volume's label through its own cache's dataset."""
    from ssmtl.host.registry import build_registry
    from ssmtl.downstream.native_eval import NativeReferences

    _, cache, _ = ball_run
    other = write_cache(tmp_path / "synthetic.h5", [3])  # format-2 writer, no way back recorded
    registry = build_registry(external=False)
    both = open_caches([other, cache])
    alone = NativeReferences(SliceCache(cache), registry)
    through_set = NativeReferences(both, registry)
    for local in range(len(SliceCache(cache).volumes)):
        expected, got = alone.get(local), through_set.get(1 + local)
        assert got.origin == expected.origin == "the label file, re-read by the dataset"
        np.testing.assert_array_equal(got.label, expected.label)


def test_runs_on_two_caches_can_be_read_back_by_every_later_command(tmp_path, ssmtl_tiny_cache, other_tiny_cache):
    """A run trained on several caches records data.path as a list; the readers of its
    manifest.json, run.json and eval.json accept it (fine-tune --init, evaluate, report)."""
    import ssmtl
    from ssmtl.publish.report import write_report

    both = [ssmtl_tiny_cache, other_tiny_cache]
    pre = tmp_path / "pre"
    ssmtl.pretrain(both, pre, steps=2, batch_size=2, settings=TINY_PRETRAIN, progress=False)
    ft = tmp_path / "ft"
    ssmtl.finetune(both, ft, init=pre, labeled_volumes=1, steps=2, batch_size=2, progress=False)
    assert json.loads((ft / "run.json").read_text())["data"]["path"] == [str(p) for p in both]
    evaluation = ssmtl.evaluate(ft)
    assert evaluation.results["data"] == [str(p) for p in both]
    assert len(evaluation.per_volume) == 2 * len([v for v in SliceCache(ssmtl_tiny_cache).volumes if v.split == "test"])
    assert 0.0 <= evaluation.mean_dice <= 1.0
    report = write_report(ft, registry=get_registry())
    assert report.is_file() and report.stat().st_size > 0
