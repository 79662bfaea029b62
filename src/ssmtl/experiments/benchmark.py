"""The paper's experiment as one resumable protocol: methods x label budgets x seeds.

For every *method* (a set of pretext tasks, or ``scratch``) the network is
pre-trained **once** on ``data`` (its train subjects only). Every (method, budget,
seed) *cell* then fine-tunes on ``budget`` labeled subjects chosen by ``seed`` from
the training subjects of ``finetune_data`` (``data`` by default; another modality
for cross-domain transfer) and is evaluated on the **same held-out test subjects**,
the split stored in the fine-tuning cache. 3D Dice and HD95 are reported per
structure and per test volume.

Everything is cached under ``out/``: a pre-training whose export matches its
configuration and data is reused, one that was interrupted is resumed, and a
cell whose ``eval.json`` matches its configuration is skipped. Anything missing,
unreadable or made from another configuration is recomputed, never reused.

Layout::

    out/pretrain/<method>/                 pre-training runs (export/, checkpoints/)
    out/finetune/<method>/<protocol>/n<budget>/seed<seed>/   fine-tuning runs + eval.json
    out/results.json  out/results.md  out/dice_vs_labels.png
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel, Field, field_validator

from ssmtl.api.rules import CONFIG_RULES, Seed
from ssmtl.settings.sources import validate_model
from ssmtl.data.cache_set import data_record, open_caches
from ssmtl.downstream.config import FinetuneTrainConfig
from ssmtl.pretraining.config import RunConfig, config_to_dict, resolve_run_config
from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import save_json, save_text
from ssmtl.experiments.results import SCRATCH, plot_dice_vs_labels, render_markdown, summarise_cells

INIT_PARTS = ("all", "encoder")


@dataclass(frozen=True)
class Method:
    name: str
    tasks: tuple[str, ...]  # empty: no pre-training (random init)
    init_parts: str = "all"  # what fine-tuning loads from the export: "all" or "encoder"

    @property
    def pretrained(self) -> bool:
        return bool(self.tasks)


def parse_methods(text: str | list[str], available_tasks: set[str], task_sets: Mapping[str, tuple[str, ...]]) -> list[Method]:
    """``scratch,SET,NAME=task+task[:encoder]`` -> methods (order kept, names unique).

    ``SET`` is a task set of the plugins' defaults; ``NAME=`` takes a task combination, ``scratch``
    or a SET, and a ``:encoder`` suffix fine-tunes from the pre-trained encoder only (random decoder).
    """
    named = {SCRATCH: (), **task_sets}
    items = text if isinstance(text, list) else [t for t in text.split(",")]
    methods: list[Method] = []
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        name, sep, combo = raw.partition("=")
        combo, _, parts = combo.partition(":")
        parts = parts.strip() or "all"
        if sep:
            if parts not in INIT_PARTS:
                raise SsmtlError(f"--methods {raw!r}: unknown suffix ':{parts}'; use ':encoder' (load only the pre-trained encoder) or ':all'")
            if combo.strip() in named:
                tasks = named[combo.strip()]
            else:
                tasks = tuple(t.strip() for t in combo.split("+") if t.strip())
                if not tasks:
                    raise SsmtlError(f"--methods {raw!r}: name a combination as NAME=task+task")
        elif name in named:
            tasks = named[name]
        else:
            raise SsmtlError(f"--methods: unknown method {name!r}; use {', '.join(named)} or NAME=task+task")
        unknown = [t for t in tasks if t not in available_tasks]
        if unknown:
            raise SsmtlError(f"--methods {raw!r}: unknown task(s) {', '.join(unknown)}; available: {', '.join(sorted(available_tasks))}")
        if any(m.name == name for m in methods):
            raise SsmtlError(f"--methods: {name!r} is given twice")
        if parts == "encoder" and not tasks:
            raise SsmtlError(f"--methods {raw!r}: ':encoder' needs a pre-trained method, not scratch")
        methods.append(Method(name, tasks, parts))
    if not methods:
        raise SsmtlError("--methods: give at least one method")
    return methods


FINETUNE_DEFAULTS = FinetuneTrainConfig()  # a benchmark fine-tunes the way `ssmtl finetune` does unless told otherwise


class BenchmarkConfig(BaseModel):
    model_config = CONFIG_RULES
    data: Path | list[Path] = Field(description="Cache for pre-training (its train subjects), a folder of caches, or a list of caches read as one dataset.")
    finetune_data: Path | list[Path] | None = Field(None, description="Labeled cache (folder, or list) for fine-tuning and testing (default: data).")
    out: Path = Field(description="Benchmark directory (reused across re-runs).")
    methods: list[str] | None = Field(None, description="Methods: scratch, a task set named by the plugins' defaults (built-in: contrastive, multitask), NAME=task+task, NAME=METHOD_OR_TASKS:encoder (fine-tune from the pre-trained encoder only). None: scratch and every task set.")
    labeled_volumes: list[int] = Field(default_factory=lambda: [1, 2, 4], description="Label budgets, in subjects.")
    seeds: int = Field(3, ge=1, le=100, description="Fine-tuning seeds per cell (labeled subjects and initialisation).")
    pretrain_steps: int = Field(500, ge=1, description="Pre-training steps per method.")
    finetune_steps: int | Literal["auto"] = Field(FINETUNE_DEFAULTS.steps, description="Fine-tuning steps per cell, or auto (stop on a validation plateau, see `ssmtl finetune --steps`; the default, as for `ssmtl finetune`).")
    finetune_batch_size: int = Field(FINETUNE_DEFAULTS.batch_size, ge=1, description="Slices per fine-tuning step.")
    finetune_lr: float = Field(FINETUNE_DEFAULTS.lr, gt=0, description="Fine-tuning peak learning rate (the default is `ssmtl finetune`'s).")
    frozen_encoder: bool = Field(False, description="Also run the frozen-encoder protocol (decoder + head trained on a fixed encoder).")
    pretrain_sets: list[str] = Field(default_factory=list, description="KEY=VALUE overrides for every pre-training (e.g. model.base_channels=8).")
    split_seed: Seed = Field(0, description="Seed of the test split when the fine-tuning cache stores none.")

    @field_validator("labeled_volumes")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 for n in v):
            raise ValueError("label budgets must be positive integers")
        return sorted(set(v))


def _relocatable(config: dict[str, Any]) -> dict[str, Any]:
    """A run config without its paths: a moved or copied benchmark directory stays reusable
    (the data is identified by its fingerprint, checked separately)."""
    config = dict(config)
    config.pop("out", None)
    config["data"] = {k: v for k, v in (config.get("data") or {}).items() if k != "path"}
    return config


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Benchmark:
    """Runs the protocol; ``log(msg)`` reports each stage."""

    def __init__(self, config: BenchmarkConfig, registry, log: Callable[[str], None] = print, progress: bool = False):
        if config.methods is None:  # scratch and every task set the plugins name
            config = config.model_copy(update={"methods": [SCRATCH, *registry.defaults.task_sets]})
        self.config = config
        self.registry = registry
        self.log, self.progress = log, progress
        self.out = Path(config.out)
        self.methods = parse_methods(config.methods, set(registry.tasks), registry.defaults.task_sets)
        self.pre_cache = open_caches(config.data)
        self.ft_path = config.finetune_data or config.data
        self.ft_cache = open_caches(self.ft_path)
        if not any(v.has_label for v in self.ft_cache.volumes):
            raise SsmtlError(f"{self.ft_cache.path}: no labeled volumes to fine-tune and test on")
        # scratch gets exactly the network the pre-trained methods export, and fine-tuning
        # runs at the pre-training precision
        reference = self._pretrain_config(next((m.tasks for m in self.methods if m.pretrained), registry.defaults.tasks), self.out)
        self.model_config = reference.model
        self.mixed_precision = reference.train.mixed_precision or "no"

    # -- pre-training -------------------------------------------------------------------
    def _pretrain_config(self, tasks: tuple[str, ...], out: Path) -> RunConfig:
        sets = list(self.config.pretrain_sets)
        enabled = set(tasks)
        # options for tasks a method does not use are dropped, not errors
        sets = [s for s in sets if not (s.startswith("tasks.") and s.split(".")[1] not in enabled)]
        return resolve_run_config(
            flags={"data.path": self.config.data, "out": out, "train.steps": self.config.pretrain_steps},
            tasks=list(tasks), sets=sets, registry=self.registry, environ={},
        )

    def pretrain(self, method: Method) -> Path:
        from ssmtl.pretraining.engine import run_pretraining
        from ssmtl.training.export import load_pretrained_network

        run_dir = self.out / "pretrain" / method.name
        config = self._pretrain_config(method.tasks, run_dir)
        expected = _relocatable(config_to_dict(config))
        try:
            _, manifest = load_pretrained_network(run_dir, self.registry)
            if _relocatable(manifest.get("config") or {}) == expected and manifest["data"]["fingerprint"] == self.pre_cache.fingerprint:
                self.log(f"pretrain {method.name}: reusing {run_dir / 'export'}")
                return run_dir
            self.log(f"pretrain {method.name}: export is from another configuration or data; recomputing")
        except Exception as exc:  # missing, unreadable or corrupt export: recompute
            if run_dir.exists():
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                self.log(f"pretrain {method.name}: no usable export ({reason})")
        resume = False
        saved = run_dir / "config.json"
        if (run_dir / "checkpoints").is_dir() and saved.is_file():
            try:
                resume = _relocatable(json.loads(saved.read_text())) == expected
            except json.JSONDecodeError:
                resume = False
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        self.log(f"pretrain {method.name}: {'resuming' if resume else 'training'} {'+'.join(method.tasks)} for {config.train.steps} steps")
        run_pretraining(config, resume=resume, registry=self.registry, progress=self.progress)
        return run_dir

    # -- fine-tuning cells --------------------------------------------------------------
    def cell(self, method: Method, protocol: str, budget: int, seed: int, init: Path | None) -> dict[str, Any]:
        from ssmtl.downstream.evaluate import evaluate_run
        from ssmtl.downstream.config import FinetuneConfig
        from ssmtl.downstream.finetune import run_finetune

        cell_dir = self.out / "finetune" / method.name / protocol / f"n{budget}" / f"seed{seed}"
        ft = FinetuneConfig.model_validate(dict(
            data=self.ft_path, out=cell_dir, init=str(init) if init else "none", labeled_volumes=budget,
            seed=seed, labeled_seed=seed, split_seed=self.config.split_seed,
            freeze_encoder=protocol == "frozen", model=None if init else self.model_config, init_parts=method.init_parts,
            train={"steps": self.config.finetune_steps, "batch_size": self.config.finetune_batch_size,
                   "lr": self.config.finetune_lr, "mixed_precision": self.mixed_precision},
        ), context={"registry": self.registry}).with_defaults(self.registry)
        settings = ft.model_dump(mode="json", exclude={"out", "init", "data"})  # where things live is not what they are
        # the head's resolved options too: a changed default of the head plugin is a different cell
        head_spec = self.registry.head(ft.head)
        head = validate_model(head_spec.config_model, {**ft.head_options, "name": ft.head}, prefix=ft.head).model_dump(mode="json")
        key = _digest({"finetune": settings, "head": head, "init": self._export_id(init), "data": self.ft_cache.fingerprint})
        record = cell_dir / "cell.json"
        try:
            if json.loads(record.read_text())["key"] == key:
                evaluation = json.loads((cell_dir / "eval.json").read_text())
                if isinstance(evaluation.get("per_volume"), list) and "mean_dice" in evaluation and "space" in evaluation:
                    return evaluation
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        if cell_dir.exists():
            shutil.rmtree(cell_dir)
        self.log(f"finetune {method.name}/{protocol} n={budget} seed={seed}")
        run_finetune(ft, registry=self.registry, progress=self.progress)
        evaluation = evaluate_run(cell_dir, registry=self.registry)
        save_json(record, {"key": key})
        return evaluation

    @staticmethod
    def _export_id(init: Path | None) -> str | None:
        if init is None:
            return None
        weights = init / "export" / "model.safetensors"
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    # -- everything ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        available = sum(1 for v in self.ft_cache.volumes if v.has_label)
        inits: dict[str, Path | None] = {}
        by_tasks: dict[tuple[str, ...], Path] = {}  # methods with the same tasks share one pre-training
        for m in self.methods:
            if m.pretrained and m.tasks not in by_tasks:
                by_tasks[m.tasks] = self.pretrain(m)
            inits[m.name] = by_tasks.get(m.tasks) if m.pretrained else None
        protocols = ["finetune"] + (["frozen"] if self.config.frozen_encoder else [])
        cells = []
        for protocol in protocols:
            for method in self.methods:
                if protocol == "frozen" and not method.pretrained:
                    continue  # a frozen random encoder is not a representation
                for budget in self.config.labeled_volumes:
                    for seed in range(self.config.seeds):
                        evaluation = self.cell(method, protocol, budget, seed, inits[method.name])
                        cells.append({
                            "method": method.name, "tasks": list(method.tasks), "init_parts": method.init_parts, "protocol": protocol,
                            "labeled_volumes": budget, "seed": seed,
                            "labeled_subjects": evaluation.get("labeled_subjects"),
                            "test_subjects": evaluation.get("test_subjects"),
                            "mean_dice": evaluation.get("mean_dice"), "mean_hd95": evaluation.get("mean_hd95"),
                            "space": evaluation.get("space"), "space_reason": evaluation.get("space_reason"),
                            "per_class": evaluation.get("per_class"), "per_volume": evaluation.get("per_volume"),
                        })
        tests = {tuple(c["test_subjects"] or []) for c in cells}
        if len(tests) > 1:
            raise SsmtlError("cells were evaluated on different test subjects; delete the benchmark directory and re-run")
        test_subjects = sorted(next(iter(tests))) if tests else []
        leaked = sorted({s for c in cells for s in (c["labeled_subjects"] or []) if s in set(test_subjects)})
        if leaked:
            raise SsmtlError(f"test subjects {leaked} were used for fine-tuning")
        results = {
            "config": self.config.model_dump(mode="json"),
            "methods": {m.name: list(m.tasks) for m in self.methods},
            "init_parts": {m.name: m.init_parts for m in self.methods if m.pretrained},
            "pretrain_data": data_record(self.pre_cache, self.config.data),
            "finetune_data": {**data_record(self.ft_cache, self.ft_path), "labeled_subjects": available},
            "test_subjects": test_subjects,
            "class_names": list(cells[0]["per_class"] or {}) if cells else [],
            "space": sorted({c["space"] for c in cells if c.get("space")}),
            "cells": cells,
            "summary": summarise_cells(cells, references=(SCRATCH, *filter(None, [self.registry.defaults.baseline]))),
        }
        save_json(self.out / "results.json", results)
        save_text(self.out / "results.md", render_markdown(results))
        plot_dice_vs_labels(results, self.out / "dice_vs_labels.png")
        return results
