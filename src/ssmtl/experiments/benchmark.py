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
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ssmtl.core.settings import validate_model
from ssmtl.data.cache import SliceCache
from ssmtl.pretrain.config import RunConfig, config_to_dict, resolve_run_config
from ssmtl.api.errors import SsmtlError
from ssmtl.core.files import save_json

SCRATCH = "scratch"  # the random-init baseline; the other named methods are the plugins' task sets
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


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: Path = Field(description="Cache for pre-training (its train subjects).")
    finetune_data: Path | None = Field(None, description="Labeled cache for fine-tuning and testing (default: data).")
    out: Path = Field(description="Benchmark directory (reused across re-runs).")
    methods: list[str] | None = Field(None, description="Methods: scratch, a task set named by the plugins' defaults (built-in: contrastive, multitask), NAME=task+task, NAME=METHOD_OR_TASKS:encoder (fine-tune from the pre-trained encoder only). None: scratch and every task set.")
    labeled_volumes: list[int] = Field(default_factory=lambda: [1, 2, 4], description="Label budgets, in subjects.")
    seeds: int = Field(3, ge=1, le=100, description="Fine-tuning seeds per cell (labeled subjects and initialisation).")
    pretrain_steps: int = Field(500, ge=1, description="Pre-training steps per method.")
    finetune_steps: int = Field(300, ge=1, description="Fine-tuning steps per cell.")
    finetune_batch_size: int = Field(16, ge=1, description="Slices per fine-tuning step.")
    finetune_lr: float = Field(1e-3, gt=0, description="Fine-tuning peak learning rate.")
    frozen_encoder: bool = Field(False, description="Also run the frozen-encoder protocol (decoder + head trained on a fixed encoder).")
    pretrain_sets: list[str] = Field(default_factory=list, description="KEY=VALUE overrides for every pre-training (e.g. model.base_channels=8).")
    split_seed: int = Field(0, description="Seed of the test split when the fine-tuning cache stores none.")

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
        self.pre_cache = SliceCache(config.data)
        self.ft_path = Path(config.finetune_data or config.data)
        self.ft_cache = SliceCache(self.ft_path)
        if not any(v.has_label for v in self.ft_cache.volumes):
            raise SsmtlError(f"{self.ft_path}: no labeled volumes to fine-tune and test on")
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
        from ssmtl.pretrain.engine import run_pretraining
        from ssmtl.core.export import load_pretrained_network

        run_dir = self.out / "pretrain" / method.name
        config = self._pretrain_config(method.tasks, run_dir)
        expected = _relocatable(config_to_dict(config))
        try:
            _, manifest = load_pretrained_network(run_dir)
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
        ft = FinetuneConfig(
            data=self.ft_path, out=cell_dir, init=str(init) if init else "none", labeled_volumes=budget,
            seed=seed, labeled_seed=seed, split_seed=self.config.split_seed,
            freeze_encoder=protocol == "frozen", model=None if init else self.model_config, init_parts=method.init_parts,
            train={"steps": self.config.finetune_steps, "batch_size": self.config.finetune_batch_size,
                   "lr": self.config.finetune_lr, "mixed_precision": self.mixed_precision},
        ).with_defaults(self.registry)
        settings = ft.model_dump(mode="json", exclude={"out", "init", "data"})  # where things live is not what they are
        # the head's resolved options too: a changed default of the head plugin is a different cell
        head_spec = self.registry.head(ft.head)
        head = validate_model(head_spec.config_model, {**ft.head_options, "name": ft.head}, prefix=ft.head).model_dump(mode="json")
        key = _digest({"finetune": settings, "head": head, "init": self._export_id(init), "data": self.ft_cache.fingerprint})
        record = cell_dir / "cell.json"
        try:
            if json.loads(record.read_text())["key"] == key:
                evaluation = json.loads((cell_dir / "eval.json").read_text())
                if isinstance(evaluation.get("per_volume"), list) and "mean_dice" in evaluation:
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
            "pretrain_data": {"path": str(self.config.data), "fingerprint": self.pre_cache.fingerprint},
            "finetune_data": {"path": str(self.ft_path), "fingerprint": self.ft_cache.fingerprint, "labeled_subjects": available},
            "test_subjects": test_subjects,
            "class_names": list(cells[0]["per_class"] or {}) if cells else [],
            "cells": cells,
            "summary": summarise_cells(cells, references=(SCRATCH, *filter(None, [self.registry.defaults.baseline]))),
        }
        save_json(self.out / "results.json", results)
        (self.out / "results.md").write_text(render_markdown(results))
        plot_dice_vs_labels(results, self.out / "dice_vs_labels.png")
        return results


# -- aggregation ---------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    clean = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return math.nan, math.nan, 0
    arr = np.asarray(clean, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def summarise_cells(cells: list[dict[str, Any]], references: tuple[str, ...] = (SCRATCH,)) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (protocol, method, budget), and paired differences vs each reference method."""
    by = {}
    for c in cells:
        by.setdefault((c["protocol"], c["method"], c["labeled_volumes"]), {})[c["seed"]] = c
    rows = []
    for (protocol, method, budget), seeds in by.items():
        mean, std, n = _mean_std([c["mean_dice"] for c in seeds.values()])
        hd_mean, hd_std, _ = _mean_std([c["mean_hd95"] for c in seeds.values()])
        classes = next(iter(seeds.values()))["per_class"] or {}
        per_class = {name: _mean_std([(c["per_class"] or {}).get(name, {}).get("dice") for c in seeds.values()])[:2] for name in classes}
        row = {"protocol": protocol, "method": method, "labeled_volumes": budget, "seeds": n,
               "dice_mean": mean, "dice_std": std, "hd95_mean": hd_mean, "hd95_std": hd_std,
               "per_class_dice": {k: {"mean": v[0], "std": v[1]} for k, v in per_class.items()}}
        for reference in references:
            ref = by.get(("finetune", reference, budget)) or by.get((protocol, reference, budget))
            if ref is None or reference == method or method == SCRATCH:
                continue
            diffs = [seeds[s]["mean_dice"] - ref[s]["mean_dice"] for s in seeds if s in ref
                     and seeds[s]["mean_dice"] is not None and ref[s]["mean_dice"] is not None]
            d_mean, d_std, d_n = _mean_std(diffs)
            row[f"vs_{reference}"] = {"mean": d_mean, "std": d_std, "pairs": d_n, "wins": int(sum(d > 0 for d in diffs))}
        rows.append(row)
    return rows


def _fmt(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def render_markdown(results: dict[str, Any]) -> str:
    summary = results["summary"]
    budgets = sorted({r["labeled_volumes"] for r in summary})
    lines = ["# Benchmark results", ""]
    lines.append(f"Pre-training data: `{results['pretrain_data']['path']}`; fine-tuning/test data: `{results['finetune_data']['path']}`.")
    lines.append(f"Test subjects (same for every cell): {', '.join(results['test_subjects'])}.")
    cfg = results["config"]
    lines.append(f"Pre-training {cfg['pretrain_steps']} steps per method; fine-tuning {cfg['finetune_steps']} steps; {cfg['seeds']} seed(s); mean ± std over seeds of the mean 3D Dice over structures and test volumes.")
    lines.append("")
    for protocol in sorted({r["protocol"] for r in summary}, key=lambda p: p != "finetune"):
        rows = [r for r in summary if r["protocol"] == protocol]
        lines += [f"## {protocol}: 3D Dice by label budget", "", "| method | " + " | ".join(f"{b} labeled" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = {r["labeled_volumes"]: r for r in rows if r["method"] == method}
            lines.append(f"| {method} | " + " | ".join(_fmt(cells[b]["dice_mean"], cells[b]["dice_std"]) if b in cells else "–" for b in budgets) + " |")
        lines.append("")
        for reference in dict.fromkeys(key[3:] for r in rows for key in r if key.startswith("vs_")):  # summarise_cells' order
            diff_rows = [r for r in rows if f"vs_{reference}" in r]
            if not diff_rows:
                continue
            lines += [f"Paired difference in mean Dice against **{reference}** (same budget and seed; wins = seeds where the method is better):", "",
                      "| method | " + " | ".join(f"{b} labeled" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
            for method in dict.fromkeys(r["method"] for r in diff_rows):
                cells = {r["labeled_volumes"]: r[f"vs_{reference}"] for r in diff_rows if r["method"] == method}
                lines.append(f"| {method} | " + " | ".join(
                    f"{cells[b]['mean']:+.3f} ± {cells[b]['std']:.3f} ({cells[b]['wins']}/{cells[b]['pairs']})" if b in cells and cells[b]["pairs"] else "–"
                    for b in budgets) + " |")
            lines.append("")
        lines += [f"### {protocol}: Dice per structure (mean over seeds)", ""]
        classes = list(rows[0]["per_class_dice"]) if rows else []
        lines += ["| method | labeled | " + " | ".join(classes) + " | HD95 (mm) |", "|---|---|" + "---|" * (len(classes) + 1)]
        for r in rows:
            hd = "–" if math.isnan(r["hd95_mean"]) else f"{r['hd95_mean']:.1f}"
            lines.append(f"| {r['method']} | {r['labeled_volumes']} | " + " | ".join(
                "–" if math.isnan(r["per_class_dice"][c]["mean"]) else f"{r['per_class_dice'][c]['mean']:.3f}" for c in classes) + f" | {hd} |")
        lines.append("")
    return "\n".join(lines)


def plot_dice_vs_labels(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for protocol in sorted({r["protocol"] for r in results["summary"]}, key=lambda p: p != "finetune"):
        for method in dict.fromkeys(r["method"] for r in results["summary"] if r["protocol"] == protocol):
            rows = sorted((r for r in results["summary"] if r["protocol"] == protocol and r["method"] == method), key=lambda r: r["labeled_volumes"])
            label = method if protocol == "finetune" else f"{method} ({protocol})"
            ax.errorbar([r["labeled_volumes"] for r in rows], [r["dice_mean"] for r in rows], yerr=[r["dice_std"] for r in rows],
                        marker="o", capsize=3, label=label, linestyle="-" if protocol == "finetune" else "--")
    budgets = sorted({r["labeled_volumes"] for r in results["summary"]})
    ax.set_xticks(budgets)
    ax.set_xlabel("labeled volumes")
    ax.set_ylabel("mean 3D Dice (± std over seeds)")
    ax.set_title("Dice vs label budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
