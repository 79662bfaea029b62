"""Shared fixtures: small slice caches written directly or built from the phantom plugin, real sample data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

from ssmtl.data.cache_writer import CacheWriter

CACHE_SIZE = 8  # in-plane size of caches written by `cache_factory`
REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / ".sample-data"


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """Fetch (once; skipped when present) and return the real sample data folder
    (``scripts/fetch_sample_data.py``). Fails, never skips: silently skipping would hide
    that the real data paths are untested."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_sample_data.py"), "--dest", str(SAMPLE_DATA)],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"cannot fetch the real sample data:\n{result.stderr}", pytrace=False)
    return SAMPLE_DATA


def slice_value(volume: int, slice_index: int) -> float:
    """The constant intensity `cache_factory` writes into slice `slice_index` of volume `volume`."""
    return 100.0 * volume + slice_index


def write_cache(
    out: Path,
    depths: Sequence[int],
    *,
    size: int = CACHE_SIZE,
    labeled: bool = True,
    force: bool = False,
) -> Path:
    """A cache whose volume v has depths[v] slices; slice d of volume v is filled with slice_value(v, d).

    Labels (when ``labeled``) are ``d % 3`` everywhere in slice d, so image and label alignment
    can be checked slice by slice. Spacing attrs are (2 + v, 1.5, 1.5).
    """
    attrs = {"dataset": "synthetic", "class_names": {"0": "background", "1": "a", "2": "b"}}
    with CacheWriter(Path(out), force=force, attrs=attrs) as writer:
        for v, depth in enumerate(depths):
            image = np.empty((depth, size, size), dtype=np.float32)
            label = np.empty((depth, size, size), dtype=np.uint8)
            for d in range(depth):
                image[d] = slice_value(v, d)
                label[d] = d % 3
            writer.add_volume(
                f"subject/{v:02d}",
                image,
                label if labeled else None,
                {
                    "source": f"synthetic://{v}",
                    "modality": "ct" if v % 2 == 0 else "mr",
                    "spacing": np.array([2.0 + v, 1.5, 1.5]),
                },
            )
    return Path(out)


@pytest.fixture
def cache_factory(tmp_path) -> Callable[..., Path]:
    """``cache_factory(depths, name="cache.h5", **kw)`` writes a synthetic cache under tmp_path."""

    def _make(depths: Sequence[int], name: str = "cache.h5", **kwargs) -> Path:
        return write_cache(tmp_path / name, depths, **kwargs)

    return _make


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A phantom cache: 4 CT subjects, 8 slices of 32x32 each (built once per session)."""
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.host.registry import build_registry

    out = tmp_path_factory.mktemp("tiny_cache") / "ph.h5"
    return build_cache(
        dataset="phantom",
        dataset_options={"subjects": 4, "size": 32, "num_slices": 8, "variability": "low"},
        preprocess=PreprocessConfig(size=32),
        out=out,
        registry=build_registry(external=False),
    )


# -- tiny finished runs, made once per session through the Python API -----------------------------

#: options that make a pre-training tiny (U-Net width 4, depth 2; a small MoCo queue)
TINY_PRETRAIN = {"model.base_channels": 4, "model.depth": 2, "tasks.contrastive.queue_size": 16, "data.num_workers": 0}
TINY_MONAI = {"model.name": "monai-basic-unet", "model.features": [4, 4, 8, 8, 16, 4],
              "tasks.contrastive.queue_size": 16, "data.num_workers": 0}


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory, ssmtl_tiny_cache) -> Path:
    """A finished 3-step U-Net pre-training (contrastive + order) on the tiny phantom cache."""
    import ssmtl

    out = tmp_path_factory.mktemp("runs") / "pre"
    ssmtl.pretrain(ssmtl_tiny_cache, out, steps=3, batch_size=2, settings=TINY_PRETRAIN, progress=False)
    return out


@pytest.fixture(scope="session")
def finetuned_run(tmp_path_factory, ssmtl_tiny_cache, pretrained_run) -> Path:
    """A 3-step fine-tuning from ``pretrained_run`` on one labeled subject, evaluated (eval.json)."""
    import ssmtl

    out = tmp_path_factory.mktemp("runs") / "ft"
    ssmtl.finetune(ssmtl_tiny_cache, out, init=pretrained_run, labeled_volumes=1, steps=3, batch_size=2, progress=False)
    ssmtl.evaluate(out)
    return out


@pytest.fixture(scope="session")
def monai_run(tmp_path_factory, ssmtl_tiny_cache) -> Path:
    """A finished 2-step pre-training of MONAI's BasicUNet (the monai-basic-unet network plugin)."""
    import ssmtl

    out = tmp_path_factory.mktemp("runs") / "monai"
    ssmtl.pretrain(ssmtl_tiny_cache, out, steps=2, batch_size=2, settings=TINY_MONAI, progress=False)
    return out


@pytest.fixture(scope="session")
def ball_run(tmp_path_factory):
    """A tiny model fine-tuned to segment bright balls, on NIfTI scans with oblique, flipped and
    non-square grids: (root folder, its cache, the run directory). Shared by the way-back tests."""
    from native_helpers import write_ball_dataset

    from ssmtl.host.registry import build_registry
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.downstream.config import FinetuneConfig
    from ssmtl.downstream.finetune import run_finetune

    root = tmp_path_factory.mktemp("balls")
    images, labels = write_ball_dataset(root, subjects=6)
    registry = build_registry(external=False)
    cache = build_cache(dataset="nifti", dataset_options={"images": images, "labels": labels, "modality": "ct"},
                        preprocess=PreprocessConfig(size=32), out=root / "balls.h5", registry=registry,
                        test_fraction=0.34)
    config = FinetuneConfig.model_validate(
        dict(data=cache, out=root / "run", labeled_volumes=3, validation="none", class_balance=0.5,
             model={"base_channels": 4, "depth": 2},
             train={"steps": 80, "batch_size": 8, "lr": 1e-2, "log_every": 10, "checkpoint_every": 80}),
        context={"registry": registry})
    run_finetune(config, registry=registry, progress=False)
    return root, cache, root / "run"
