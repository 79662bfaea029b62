"""Writers of tiny nnU-Net raw and Medical Segmentation Decathlon folders, with the dataset.json files those tools write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ingest_helpers import invoke, save_nifti

SHAPE = (32, 32, 8)  # (x, y, z): 8 slices of 32 x 32
SPACING = np.diag([1.25, 1.25, 3.0, 1.0])


def scan(seed: int, ct: bool = True, shape=SHAPE) -> np.ndarray:
    """A body in air (CT, Hounsfield units) or positive MR-like intensities; (x, y, z) float32."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000.0 if ct else 20.0, dtype=np.float32)
    image[2:-2, 2:-2, :] = 40.0 if ct else 300.0
    image[4:14, 4:14, 1:-1] = 400.0 if ct else 900.0
    return image + rng.normal(0, 5, shape).astype(np.float32)


def label_map(values: Sequence[int] = (1, 2), shape=SHAPE) -> np.ndarray:
    """values[0] in one block, values[1] (if any) in another; 0 elsewhere. Blocks survive resampling to 16 px."""
    label = np.zeros(shape, dtype=np.uint8)
    label[4:14, 4:14, 1:-1] = values[0]
    if len(values) > 1:
        label[18:28, 16:28, 2:-2] = values[1]
    return label


def save(path: Path, data: np.ndarray) -> Path:
    return save_nifti(path, data, SPACING)


def nnunet_json(labels: dict[str, Any] | None = None, channels: dict[str, str] | None = None, training: int = 3,
                ending: str = ".nii.gz", **extra: Any) -> dict[str, Any]:
    """A dataset.json as nnU-Net v2's generate_dataset_json writes it."""
    return {"channel_names": channels or {"0": "MRI"},
            "labels": labels or {"background": 0, "left atrium": 1, "aorta": 2},
            "numTraining": training, "file_ending": ending, "name": "Dataset001_Tiny", **extra}


def write_nnunet(root: Path, *, cases: Sequence[str] = ("case000", "case001", "case002"), test: Sequence[str] = ("case100",),
                 labeled_test: Sequence[str] = (), dataset: dict[str, Any] | None = None, channels: int = 1) -> Path:
    """An nnU-Net raw folder: imagesTr/CASE_000C.nii.gz, labelsTr/CASE.nii.gz, imagesTs/ (+ labelsTs/), dataset.json.

    Channel c of every case is CT-like for c = 0 and MR-like otherwise; ``dataset=None`` writes no dataset.json.
    """
    for n, case in enumerate(cases):
        for c in range(channels):
            save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", scan(n, ct=c == 0))
        save(root / "labelsTr" / f"{case}.nii.gz", label_map())
    for n, case in enumerate(test):
        for c in range(channels):
            save(root / "imagesTs" / f"{case}_{c:04d}.nii.gz", scan(50 + n, ct=c == 0))
        if case in labeled_test:
            save(root / "labelsTs" / f"{case}.nii.gz", label_map())
    (root / "imagesTr" / f"._{cases[0]}_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    if dataset is not None:
        (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return root


MSD_HEART = {
    "name": "LeftAtrium",
    "description": "Left atrium segmentation",
    "reference": "King's College London",
    "licence": "CC-BY-SA 4.0",
    "relase": "1.0 04/05/2018",
    "tensorImageSize": "3D",
    "modality": {"0": "MRI"},
    "labels": {"0": "background", "1": "left atrium"},
}


def write_msd(root: Path, *, training: Sequence[str] = ("la_003", "la_004", "la_007"), test: Sequence[str] = ("la_001",),
              modalities: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> Path:
    """A Decathlon task folder (Task02_Heart's dataset.json), with ``._`` resource forks and an unlisted file.

    With several ``modalities`` the images are 4D (x, y, z, channel): channel c holds ``scan(n, ct=c == 0) + 1000 * c``.
    """
    modalities = modalities or {"0": "MRI"}
    channels = len(modalities)

    def image(n: int) -> np.ndarray:
        if channels == 1:
            return scan(n, ct=False)
        return np.stack([scan(n, ct=c == 0) + 1000.0 * c for c in range(channels)], axis=-1)

    for n, name in enumerate(training):
        save(root / "imagesTr" / f"{name}.nii.gz", image(n))
        save(root / "labelsTr" / f"{name}.nii.gz", label_map((1,) if labels is None else (1, 2)))
    for n, name in enumerate(test):
        save(root / "imagesTs" / f"{name}.nii.gz", image(50 + n))
    for folder, name in (("imagesTr", training[0]), ("labelsTr", training[0]), ("imagesTs", test[0] if test else "x")):
        (root / folder / f"._{name}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    save(root / "imagesTr" / "la_999.nii.gz", image(99))  # not in dataset.json: never read
    dataset = {**MSD_HEART, "tensorImageSize": "3D" if channels == 1 else "4D", "modality": modalities,
               "labels": labels or MSD_HEART["labels"], "numTraining": len(training), "numTest": len(test),
               "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in training],
               "test": [f"./imagesTs/{n}.nii.gz" for n in test]}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return root


def build(dataset: str, out: Path, *args: str):
    """``ssmtl cache build --dataset DATASET ... --out OUT --size 16``."""
    return invoke("cache", "build", "--dataset", dataset, *args, "--out", str(out), "--size", "16")


def error_line(result) -> str:
    """The one line a user error prints (exit code 2, no traceback)."""
    text = result.stderr if result.stderr else result.output
    lines = [line for line in text.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]
