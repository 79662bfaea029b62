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
) -> Path:
    """Build ``out`` from the named dataset plugin. Nothing is written at ``out`` unless it all succeeds."""
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
            if on_volume is not None:
                on_volume(i + 1, len(source.items), item.subject)
    return Path(out)
