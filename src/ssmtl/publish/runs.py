"""What a run directory is, what it holds, and its trained network as a torch module.

Two kinds of runs leave weights:

* a **pre-training** run (``ssmtl pretrain``): ``export/manifest.json`` and
  ``export/model.safetensors``, the shared encoder-decoder;
* a **fine-tuning** run (``ssmtl finetune``): ``run.json`` and ``model.safetensors``,
  the shared network plus a head that gives class logits.

:func:`read_run` gathers what describes a run (config, data, tasks, steps, evaluation)
for model cards and reports, with the table that names its subjects in them (pseudonyms, or
the real names with ``identify_subjects``: :mod:`ssmtl.data.pseudonyms`); :func:`load_network` rebuilds its module from the saved
configs and weights alone (safetensors, ``strict=True``), in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ssmtl.api.errors import SsmtlError
from ssmtl.data.pseudonyms import Pseudonyms
from ssmtl.training.export import EXPORT_DIR, load_pretrained_network, read_manifest
from ssmtl.storage.files import load_json_object
from ssmtl.downstream.records import read_eval_json, read_run_json
from ssmtl.host.networks import resolve_network_config

RunKind = Literal["pretrain", "finetune"]
EVAL_FILE = "eval.json"


@dataclass
class RunInfo:
    """What describes one run, as far as its files tell."""

    path: Path
    kind: RunKind
    network: dict[str, Any]  # the model table (``name`` and options)
    config: dict[str, Any]  # the run's resolved config (config.json)
    steps: int | None
    tasks: dict[str, Any]  # pre-training tasks (of the run, or of the export a fine-tuning started from)
    data: dict[str, Any]  # path, fingerprint, subjects, modalities, slice_shape, preprocess (when the cache is readable)
    native_class: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    num_classes: int | None = None
    class_names: dict[str, str] = field(default_factory=dict)
    init: str | None = None  # fine-tuning: the pre-training run it started from ("none": scratch)
    labeled_subjects: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None  # eval.json
    trained_size: tuple[int, int] | None = None  # the slice size it was trained at, from its records (None: unknown)
    preprocess: dict[str, Any] | None = None  # how its training cache prepared slices (fine-tuning runs record it)
    names: Pseudonyms = field(default_factory=Pseudonyms)  # how shareable files name its subjects and volumes

    @property
    def name(self) -> str:
        return self.path.resolve().name


def run_kind(run_dir: Path) -> RunKind:
    run_dir = Path(run_dir)
    if (run_dir / "run.json").is_file():
        return "finetune"
    if (run_dir / EXPORT_DIR / "manifest.json").is_file():
        return "pretrain"
    if not run_dir.is_dir():
        raise SsmtlError(f"{run_dir}: no such run directory")
    raise SsmtlError(f"{run_dir}: neither a finished pre-training run (no {EXPORT_DIR}/manifest.json) "
                     "nor a finished fine-tuning run (no run.json)")


def _cache_facts(path: str | list[str] | None, fingerprint: str | None, identify: bool) -> tuple[dict[str, Any], Pseudonyms]:
    """Subjects, modalities, slice shape and preprocessing of a cache (or a set), and its names table,
    when it is still readable and still the data the run recorded (same fingerprint): a cache rebuilt
    at the same path since describes other data."""
    unknown = Pseudonyms(identify=identify, known=False)
    if not path:
        return {}, unknown
    from ssmtl.data.cache_set import open_caches

    try:
        cache = open_caches(path)
        summary = cache.summary()
    except SsmtlError:
        return {}, unknown
    if fingerprint is not None and summary.get("fingerprint") != fingerprint:
        return {}, unknown
    return {
        "subjects": len({volume["subject"] for volume in summary["subjects"]}),
        "volumes": summary["volumes"],
        "modalities": summary["modalities"],
        "slice_shape": summary.get("slice_shape") or (summary.get("slice_shapes") or [None])[0],
        "preprocess": summary.get("preprocess"),
        "dataset": summary.get("dataset"),
    }, Pseudonyms.of(cache, identify)


def _network(table: dict[str, Any], registry) -> dict[str, Any]:
    """The model table with its network named (runs from before networks were plugins name none)."""
    config, _ = resolve_network_config(table, registry)
    return table if config is None else config.model_dump(mode="json")


def _size(shape: Any) -> tuple[int, int] | None:
    if isinstance(shape, (list, tuple)) and len(shape) == 2 and all(isinstance(n, int) and n > 0 for n in shape):
        return int(shape[0]), int(shape[1])
    return None


def modality_names(data: dict[str, Any]) -> list[str]:
    """The modalities a run trained on: a cache's counts ({"ct": 3}) or a run's record (["ct"])."""
    modalities = data.get("modalities") or []
    return sorted(modalities.keys() if isinstance(modalities, dict) else map(str, modalities))


def read_run(run_dir: Path, registry, identify_subjects: bool = False) -> RunInfo:
    """Everything :class:`RunInfo` holds, from the run's own files; ``identify_subjects``: its names
    table answers real names (for files that stay inside the institution)."""
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    config_path = run_dir / "config.json"
    config = load_json_object(config_path, "run config", {}) if config_path.is_file() else {}
    evaluation = read_eval_json(run_dir / EVAL_FILE) if (run_dir / EVAL_FILE).is_file() else None
    if kind == "pretrain":
        manifest = read_manifest(run_dir)
        data = dict(manifest.get("data") or {})
        data["trained_on"] = len(data.get("volumes") or [])
        facts, names = _cache_facts(data.get("path"), data.get("fingerprint"), identify_subjects)
        return RunInfo(
            path=run_dir, kind=kind, network=_network(manifest.get("model") or {}, registry), config=manifest.get("config") or config,
            steps=manifest.get("steps"), tasks=manifest.get("tasks") or {}, data={**data, **facts},
            native_class=manifest.get("native_class"), evaluation=evaluation,
            trained_size=_size(data.get("slice_shape")) or _size(facts.get("slice_shape")), preprocess=facts.get("preprocess"),
            names=names,
        )
    run = read_run_json(run_dir)
    data = dict(run.get("data") or {})
    data["trained_on"] = len(run.get("labeled_subjects") or [])
    init_manifest = run.get("init_manifest") or {}
    facts, names = _cache_facts(data.get("path"), data.get("fingerprint"), identify_subjects)
    if not names.known and evaluation and evaluation.get("data"):  # evaluated on a copy of the cache
        names = Pseudonyms.of_data(evaluation["data"], data.get("fingerprint"), identify_subjects)
    preprocess = run.get("preprocess") if isinstance(run.get("preprocess"), dict) else facts.get("preprocess")
    recorded_size = (preprocess or {}).get("size")
    return RunInfo(
        path=run_dir, kind=kind, network=_network(run.get("model") or {}, registry), config=config, steps=run.get("steps"),
        tasks=init_manifest.get("tasks") or {}, data={**data, **facts},
        head=run.get("head"), num_classes=run.get("num_classes"), class_names=run.get("class_names") or {},
        init=run.get("init"), labeled_subjects=list(run.get("labeled_subjects") or []), evaluation=evaluation,
        trained_size=_size([recorded_size, recorded_size]) or _size(facts.get("slice_shape")), preprocess=preprocess,
        names=names,
    )


def load_network(run_dir: Path, registry) -> nn.Module:
    """The trained module of a run, in eval mode: a pre-training run's shared network
    (``forward(images) -> NetworkOutput``: encoder features and decoder features), or a
    fine-tuning run's network + head (``forward(images) -> logits (N, classes, H, W)``)."""
    if run_kind(run_dir) == "pretrain":
        network, _ = load_pretrained_network(Path(run_dir), registry)
    else:
        from ssmtl.downstream.model import load_finetuned

        network, _ = load_finetuned(Path(run_dir), registry)
    return network.eval()
