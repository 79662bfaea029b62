"""``png-stack``: volumes stored as folders of 2D slice images.

Layout::

    IMAGES/
      patient01/          one sub-folder per volume (the subject id)
        slice_000.png     one grayscale slice per file, sorted by file name
        slice_001.png
      patient02/
        0001.tif ...

Files ending in ``.png``, ``.tif`` or ``.tiff`` are read (hidden files are
skipped); each must be a single-frame grayscale image (8- or 16-bit integer, or
32-bit float TIFF; RGB is converted to luminance). All slices of a volume must have
the same shape. Slices are read with Pillow, which matplotlib (an ssmtl
dependency) installs; Pillow keeps the stored integer values, which matters for
16-bit CT exported as ``HU + 1024``.

Every image is shown as a viewer would show an axial slice: row 0 at the top
(anterior), column 0 on the left (the patient's right), the first file the most
inferior slice. That is exactly the cache's slice layout, so the stack is handed
to the cache builder through :func:`ssmtl.api.from_slices`.

Intensities: ``value * rescale_slope + rescale_intercept`` (as DICOM's rescale),
so CT slices can be brought back to Hounsfield units before the CT window. The
volumes are unlabeled: the dataset is meant for pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ssmtl.api import (
    check_finite,
    ConfigError,
    DatasetConfig,
    from_slices,
    InputFileError,
    RawVolume,
    VolumeItem,
    VolumeSource,
)


SLICE_EXTENSIONS = (".png", ".tif", ".tiff")


class PngStackConfig(DatasetConfig):
    """Options of the ``png-stack`` dataset (``ssmtl cache build --dataset png-stack --images DIR``)."""

    name: Literal["png-stack"] = Field("png-stack", description="Dataset plugin name.")
    images: Path | None = Field(None, description="Folder with one sub-folder of slice images per volume. Required.")
    modality: Literal["ct", "mr"] = Field("mr", description="Modality of every volume (selects the intensity normalisation).")
    rescale_slope: float = Field(1.0, description="Stored value -> intensity: value * slope + intercept.")
    rescale_intercept: float = Field(0.0, description="Added after the slope, e.g. -1024 for CT stored as HU + 1024.")
    pixel_spacing: float = Field(1.0, gt=0, description="In-plane pixel size in mm.")
    slice_spacing: float = Field(1.0, gt=0, description="Distance between consecutive slices in mm.")


def read_slice(path: Path) -> np.ndarray:
    """One grayscale slice as float32 (H, W), stored values unchanged."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise InputFileError(path, f"{image.n_frames} frames in one file; store one slice per file")
            if image.mode in ("RGB", "RGBA", "P", "LA"):
                image = image.convert("L")
            return np.asarray(image, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputFileError(path, f"cannot read slice image ({exc})") from None


def slice_files(folder: Path) -> list[Path]:
    """The slice images of one volume folder, sorted by file name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLICE_EXTENSIONS),
        key=lambda p: p.name,
    )


@dataclass
class PngStackItem(VolumeItem):
    """One volume folder. Only paths and numbers: picklable into cache-builder workers."""

    files: list[Path]
    modality: Literal["ct", "mr"]
    slope: float
    intercept: float
    spacing: tuple[float, float, float]

    def load(self) -> RawVolume:
        slices = [read_slice(p) for p in self.files]
        shapes = {s.shape for s in slices}
        if len(shapes) != 1:
            raise InputFileError(self.source, f"slices have different shapes {sorted(shapes)}")
        stack = np.stack(slices) * np.float32(self.slope) + np.float32(self.intercept)
        check_finite(stack, self.source)
        image = np.ascontiguousarray(from_slices(stack))
        return RawVolume(
            image=image,
            spacing=self.spacing,
            modality=self.modality,
            label=None,
            affine=np.diag([*self.spacing, 1.0]),
        )


def build_source(config: PngStackConfig) -> VolumeSource:
    """One :class:`PngStackItem` per sub-folder of ``config.images`` that holds slices."""
    if config.images is None:
        raise ConfigError("png-stack: pass --images DIR (a folder with one sub-folder of slices per volume)")
    root = Path(config.images)
    if not root.is_dir():
        raise InputFileError(root, "not found or not a folder")
    spacing = (config.pixel_spacing, config.pixel_spacing, config.slice_spacing)
    items: list[VolumeItem] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = slice_files(folder)
        if files:
            items.append(
                PngStackItem(
                    subject=folder.name, source=str(folder), files=files, modality=config.modality,
                    slope=config.rescale_slope, intercept=config.rescale_intercept, spacing=spacing,
                )
            )
    if not items:
        raise InputFileError(root, f"no sub-folder holds slice images ({', '.join(SLICE_EXTENSIONS)})")
    return VolumeSource(
        items=items,
        class_names={0: "background"},
        description=f"{len(items)} {config.modality.upper()} slice stacks from {root}",
    )
