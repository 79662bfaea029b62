"""Building a slice cache from a dataset plugin: load -> preprocess -> write, one volume at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ValidationError

from ssmtl import __version__
from ssmtl.core.cache import CacheWriter, check_output_path
from ssmtl.core.config import _rows
from ssmtl.core.errors import ConfigError, InputFileError
from ssmtl.core.preprocess import PreprocessConfig, preprocess_volume
from ssmtl.core.splits import make_split
from ssmtl.core.volume import VolumeSource


def validate_model(model: type[BaseModel], data: dict[str, Any], prefix: str) -> BaseModel:
    """Validate ``data`` with ``model``; raise a ConfigError naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        rows = _rows(exc, prefix=prefix)
        loc, msg = rows[0]
        raise ConfigError(f"invalid {prefix} option {loc}: {msg}", rows) from None


def build_cache(
    *,
    dataset: str,
    dataset_options: dict[str, Any],
    preprocess: PreprocessConfig,
    out: Path,
    force: bool = False,
    compression: str = "gzip",
    registry=None,
    on_volume: Callable[[int, int, str], None] | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.3,
    val_fraction: float = 0.0,
) -> Path:
    """Build ``out`` from the named dataset plugin. Nothing is written at ``out`` unless it all succeeds.

    A subject-level split is stored with the cache (``split`` attribute per volume):
    ``test_fraction`` of the labeled subjects, drawn with ``split_seed``, are held
    out for testing, so pre-training (``data.split=train``) and fine-tuning never
    see them. ``test_fraction=0`` stores no held-out subjects.
    """
    if registry is None:
        from ssmtl.core.registry import get_registry

        registry = get_registry()
    spec = registry.dataset(dataset)
    check_output_path(Path(out), force)  # before any slow work
    config = validate_model(spec.config_model, {"name": dataset, **dataset_options}, prefix=dataset)
    source: VolumeSource = spec.factory(config)
    if not source.items:
        raise InputFileError(dataset_options.get("images", dataset), "the dataset has no volumes")
    attrs = {
        "ssmtl_version": __version__,
        "dataset": dataset,
        "dataset_config": config.model_dump(mode="json"),
        "preprocess": preprocess.model_dump(mode="json"),
        "class_names": {str(k): v for k, v in source.class_names.items()},
    }
    subjects: list[str] = []
    labeled: set[str] = set()
    with CacheWriter(Path(out), force=force, attrs=attrs, compression=compression) as writer:
        if on_volume is not None:
            on_volume(0, len(source.items), "")
        for i, item in enumerate(source.items):
            raw = item.load()
            processed = preprocess_volume(raw, preprocess, source=item.source)
            if processed.label is not None:
                unknown = set(np.unique(processed.label).tolist()) - set(source.class_names)
                if unknown:
                    raise InputFileError(item.source, f"label values {sorted(unknown)} have no class name")
            writer.add_volume(
                item.subject,
                processed.image,
                processed.label,
                {
                    "source": item.source,
                    "modality": processed.modality,
                    "spacing": np.asarray(processed.spacing, dtype=np.float64),
                    "original_spacing": np.asarray(processed.original_spacing, dtype=np.float64),
                    "original_shape": np.asarray(processed.original_shape, dtype=np.int64),
                    "orientation": "RAS",
                },
            )
            subjects.append(item.subject)
            if processed.label is not None:
                labeled.add(item.subject)
            if on_volume is not None:
                on_volume(i + 1, len(source.items), item.subject)
        writer.set_split(*_subject_split(subjects, labeled, split_seed, test_fraction, val_fraction))
    return Path(out)


def _subject_split(subjects, labeled, seed, test_fraction, val_fraction) -> tuple[dict[str, str], dict[str, Any]]:
    """subject -> split, and a record of how it was drawn. Too few labeled subjects: all train."""
    meta = {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction}
    if test_fraction <= 0 and val_fraction <= 0 or len(labeled) < 2:
        return {}, {**meta, "held_out": 0}
    split = make_split(subjects, labeled, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    split_of = {s: name for name in ("train", "val", "test") for s in split[name]}
    return split_of, {**meta, "held_out": len(split["test"]) + len(split["val"])}
