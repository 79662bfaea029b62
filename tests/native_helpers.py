"""Synthetic scans with a known structure in world coordinates, for the way-back tests.

A "ball scan" is a CT-like volume on any voxel grid (oblique, LPS-oriented, axes
permuted, non-square) with a bright ball at a given world position; its label is the
ball. Because the ball is defined in millimetres, a label map written back in the
scan's own space must put the ball at the same world position, whatever the grid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

BALL_HU, BACKGROUND_HU, NOISE_HU = 300.0, -100.0, 20.0


def grid_affine(spacing, *, angle_deg: float = 0.0, axes=(0, 1, 2), flips=(False, False, False),
                origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A voxel -> RAS affine: voxel axis ``a`` runs along world axis ``axes[a]`` (reversed if ``flips[a]``),
    rotated about z by ``angle_deg`` (an oblique grid), with ``spacing[a]`` mm voxels."""
    columns = np.zeros((3, 3))
    for voxel_axis, (world_axis, flip) in enumerate(zip(axes, flips)):
        columns[world_axis, voxel_axis] = -1.0 if flip else 1.0
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ columns @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def world_coordinates(shape, affine: np.ndarray) -> np.ndarray:
    """(i, j, k, 3) world position of every voxel centre."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def ball_scan(shape, affine: np.ndarray, center, radius_mm: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(image in HU, uint8 label) of a ball of ``radius_mm`` around world ``center`` on the grid (shape, affine)."""
    distance = np.linalg.norm(world_coordinates(shape, affine) - np.asarray(center, dtype=np.float64), axis=-1)
    label = (distance <= radius_mm).astype(np.uint8)
    image = np.where(label == 1, BALL_HU, BACKGROUND_HU) + rng.normal(0.0, NOISE_HU, shape)
    return image.astype(np.float32), label


def balls_scan(shape, affine: np.ndarray, centers, radius_mm: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(image in HU, uint8 label) of several balls of ``radius_mm`` around the world ``centers``."""
    world = world_coordinates(shape, affine)
    label = np.zeros(shape, dtype=np.uint8)
    for center in centers:
        label |= (np.linalg.norm(world - np.asarray(center, dtype=np.float64), axis=-1) <= radius_mm).astype(np.uint8)
    image = np.where(label == 1, BALL_HU, BACKGROUND_HU) + rng.normal(0.0, NOISE_HU, shape)
    return image.astype(np.float32), label


def fixed_spacing_copy(run: Path, copy: Path, spacing_mm: float) -> Path:
    """A copy of a fine-tuning run whose run.json records a fixed cache spacing of ``spacing_mm``
    (the ball model's caches fitted each scan into 32 px, about 1.9 mm per pixel): its field of
    view is then 32 x ``spacing_mm``, and wider scans are predicted in sliding windows."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    record = json.loads((copy / "run.json").read_text())
    assert record["preprocess"]["size"] == 32 and record["preprocess"]["spacing"] is None
    record["preprocess"]["spacing"] = spacing_mm
    (copy / "run.json").write_text(json.dumps(record))
    return copy


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World position (mm) of the centre of mass of a binary mask on the grid of ``affine``."""
    index = np.argwhere(mask).astype(np.float64)
    return index.mean(axis=0) @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


#: Training grids: non-square, different spacings, one of them LPS-like and permuted.
TRAIN_GRIDS = [
    ((40, 30, 12), grid_affine((1.5, 2.0, 4.0), origin=(-30.0, -30.0, -24.0))),
    ((36, 36, 12), grid_affine((1.8, 1.8, 4.0), flips=(True, True, False), origin=(30.0, 30.0, -24.0))),
    ((30, 40, 12), grid_affine((2.0, 1.5, 4.0), angle_deg=10.0, origin=(-30.0, -30.0, -24.0))),
]


def write_ball_dataset(folder: Path, subjects: int, seed: int = 0) -> tuple[Path, Path]:
    """``subjects`` labeled ball scans (images/, labels/) on the training grids; balls at random positions."""
    rng = np.random.default_rng(seed)
    for n in range(subjects):
        shape, affine = TRAIN_GRIDS[n % len(TRAIN_GRIDS)]
        center = affine[:3, :3] @ (np.asarray(shape) / 2 - 0.5) + affine[:3, 3] + rng.uniform(-8, 8, 3) * (1, 1, 0.5)
        image, label = ball_scan(shape, affine, center, rng.uniform(9, 13), rng)
        save(folder / "images" / f"ball{n:02d}.nii.gz", image, affine)
        save(folder / "labels" / f"ball{n:02d}.nii.gz", label, affine)
    return folder / "images", folder / "labels"
