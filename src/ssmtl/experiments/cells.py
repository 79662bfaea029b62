"""A benchmark's cells: one method, protocol, label budget and draw, fine-tuned and tested.

A cell fine-tunes one run per *candidate* (a recipe from ``finetune_recipes`` x a learning
rate from ``finetune_lrs``), every candidate on the draw's labeled subjects with the draw's
seed, and keeps the candidate whose run scored the best Dice on the draw's **validation**
subjects (:func:`choose`; the first candidate on a tie). Only that run is evaluated on the
test subjects: no test score exists for the others, so none can sway the choice.

Each candidate run lives in ``runs/finetune/<method>/<protocol>/n<budget>/draw<d>/`` under a
name that carries its lr and a digest of its key: the fine-tuning configuration (paths
aside), the head's resolved options, the exact weights it starts from and the data's
fingerprint. A run is reused only when its stored key is that key; anything else is made again.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ssmtl.api.errors import SsmtlError
from ssmtl.downstream.config import FinetuneConfig
from ssmtl.settings.sources import deep_merge, validate_model
from ssmtl.storage.files import save_json
from ssmtl.experiments.config import BenchmarkConfig
from ssmtl.experiments.methods import Method
from ssmtl.experiments.pretrain_runs import PretrainRun
from ssmtl.experiments.store import claimed, digest, read_key
from ssmtl.storage.files import sha256_file

CELL_KEY = "cell.json"


@dataclass(frozen=True)
class Candidate:
    """One fine-tuning recipe at one learning rate (None: the recipe's own or the default)."""

    recipe: str
    lr: float | None
    table: dict[str, Any] = field(compare=False, hash=False)


def candidates(config: BenchmarkConfig) -> list[Candidate]:
    """Recipes in the order given, learning rates ascending."""
    lrs = config.finetune_lrs or [None]
    return [Candidate(name, lr, table) for name, table in config.recipes.items() for lr in lrs]


def candidate_name(candidate: Candidate, lr: float | None = None) -> str:
    """``lp-ft at lr 0.001``; the recipe is left out when there is only the default one."""
    lr = candidate.lr if lr is None else lr
    at = f"lr {lr:g}" if lr is not None else "its lr"
    return at if candidate.recipe == "default" else f"{candidate.recipe} at {at}"


def choose(validation: Sequence[float | None]) -> int:
    """Which candidate a cell keeps: the best validation Dice, the first on a tie.

    Only validation scores enter; one candidate is kept whatever its score (it may have none).

    >>> choose([0.61, 0.70, 0.70]), choose([None])
    (1, 0)
    """
    if len(validation) == 1:
        return 0
    if any(v is None or math.isnan(v) for v in validation):
        raise SsmtlError("no validation Dice to choose a fine-tuning candidate on")
    return max(range(len(validation)), key=lambda i: (validation[i], -i))


def stop_reason(run: dict[str, Any]) -> str:
    """Why a fine-tuning run stopped: run.json's own ``stop_reason`` when it has one."""
    if run.get("stop_reason"):
        return str(run["stop_reason"])
    if (run.get("validation") or {}).get("dice") is None:
        return "fixed schedule (no validation)"
    return "validation plateau" if run.get("stopped_early") else "end of schedule"


@dataclass
class Tried:
    """A candidate's fine-tuning run."""

    candidate: Candidate
    run_dir: Path
    key: str
    run: dict[str, Any]  # its run.json
    lr: float

    @property
    def validation(self) -> float | None:
        """The best Dice on the draw's validation subjects (None without validation)."""
        return (self.run.get("validation") or {}).get("dice")


class Cells:
    """Makes, reuses and records cells. ``train_fn(FinetuneConfig)`` and ``evaluate_fn(run_dir)``
    are ``run_finetune`` and ``evaluate_run`` unless replaced (a test's fake)."""

    def __init__(self, config: BenchmarkConfig, registry, root: Path, ft_path, fingerprint: str, model_config,
                 mixed_precision: str, log: Callable[[str], None] = print, progress: bool = False):
        self.config, self.registry, self.root, self.ft_path, self.fingerprint = config, registry, root, ft_path, fingerprint
        self.model_config, self.mixed_precision = model_config, mixed_precision
        self.log, self.progress = log, progress
        self.candidates = candidates(config)
        self.train_fn: Callable[[FinetuneConfig], Any] = self._train
        self.evaluate_fn: Callable[[Path], dict[str, Any]] = self._evaluate
        self._export_ids: dict[Path, str] = {}

    # -- one candidate run -----------------------------------------------------------------------
    def finetune_config(self, method: Method, protocol: str, budget: int, draw: int, init: PretrainRun | None,
                        candidate: Candidate, out: Path) -> FinetuneConfig:
        base = {"data": self.ft_path, "out": out, "init": str(init.path) if init else "none", "labeled_volumes": budget,
                "seed": draw, "labeled_seed": draw, "split_seed": self.config.split_seed,
                "freeze_encoder": protocol == "frozen", "model": None if init else self.model_config,
                "init_parts": method.init_parts, "train": {"mixed_precision": self.mixed_precision}}
        merged = deep_merge(base, candidate.table)
        if candidate.lr is not None:
            merged["train"] = {**merged["train"], "lr": candidate.lr}
        return validate_model(FinetuneConfig, merged, prefix="finetune",
                              context={"registry": self.registry}).with_defaults(self.registry)

    def key(self, ft: FinetuneConfig, init: PretrainRun | None) -> str:
        settings = ft.model_dump(mode="json", exclude={"out", "init", "data"})  # where things live is not what they are
        # the head's resolved options too: a changed default of the head plugin is a different cell
        head_spec = self.registry.head(ft.head)
        head = validate_model(head_spec.config_model, {**ft.head_options, "name": ft.head}, prefix=ft.head).model_dump(mode="json")
        return digest({"finetune": settings, "head": head, "init": self._export_id(init), "data": self.fingerprint})

    def _export_id(self, init: PretrainRun | None) -> str | None:
        if init is None:
            return None
        if init.path not in self._export_ids:
            self._export_ids[init.path] = sha256_file(init.path / "export" / "model.safetensors")
        return self._export_ids[init.path]

    def _trained(self, where: Path, method: Method, protocol: str, budget: int, draw: int, init: PretrainRun | None,
                 candidate: Candidate) -> "Tried":
        """The candidate's run: reused, or made now."""
        ft = self.finetune_config(method, protocol, budget, draw, init, candidate, where / "pending")
        key = self.key(ft, init)
        run_dir = where / f"lr{ft.train.lr:g}-{key[:12]}"
        with claimed(run_dir):
            run = read_key(run_dir / "run.json")
            if read_key(run_dir / CELL_KEY).get("key") == key and run:
                return Tried(candidate, run_dir, key, run, ft.train.lr)
            if run_dir.exists():
                shutil.rmtree(run_dir)
            label = "" if len(self.candidates) == 1 else f" ({candidate.recipe}, lr {ft.train.lr:g})"
            self.log(f"finetune {method.name}/{protocol} n={budget} draw={draw}{label}")
            self.train_fn(ft.model_copy(update={"out": run_dir}))
            run = read_key(run_dir / "run.json")
            if not run:
                raise SsmtlError(f"{run_dir}: fine-tuning finished without a readable run.json")
            save_json(run_dir / CELL_KEY, {"key": key, "recipe": candidate.recipe, "lr": ft.train.lr})
            return Tried(candidate, run_dir, key, run, ft.train.lr)

    def _evaluated(self, run_dir: Path, key: str) -> tuple[dict[str, Any], float | None]:
        """The test scores of the kept run (eval.json): reused, or computed now."""
        record = read_key(run_dir / CELL_KEY)
        evaluation = read_key(run_dir / "eval.json")
        if record.get("evaluated") == key and isinstance(evaluation.get("per_volume"), list) \
                and "mean_dice" in evaluation and "space" in evaluation:
            return evaluation, record.get("eval_seconds")
        start = time.perf_counter()
        evaluation = self.evaluate_fn(run_dir)
        seconds = time.perf_counter() - start
        save_json(run_dir / CELL_KEY, {**record, "evaluated": key, "eval_seconds": seconds})
        return evaluation, seconds

    # -- a cell ----------------------------------------------------------------------------------
    def cell(self, method: Method, protocol: str, budget: int, draw: int, init: PretrainRun | None) -> dict[str, Any]:
        """Fine-tune every candidate, keep the best on validation, test it; the cell's record."""
        where = self.root / "finetune" / method.name / protocol / f"n{budget}" / f"draw{draw}"
        tried: list[Tried] = []
        for candidate in self.candidates:
            tried.append(self._trained(where, method, protocol, budget, draw, init, candidate))
            if len(self.candidates) > 1 and tried[-1].validation is None:
                reason = (tried[-1].run.get("validation") or {}).get("reason", "validation is off")
                raise SsmtlError(
                    f"finetune {method.name}/{protocol} n={budget} draw={draw}: {len(self.candidates)} fine-tuning candidates "
                    f"but no validation subject to choose on ({reason}); give one learning rate and no recipes, "
                    "or leave labeled training subjects for validation")
        kept = tried[choose([t.validation for t in tried])]
        with claimed(kept.run_dir):
            evaluation, eval_seconds = self._evaluated(kept.run_dir, kept.key)
        run = kept.run
        record = {
            "method": method.name, "tasks": list(method.tasks), "init_parts": method.init_parts, "protocol": protocol,
            "labeled_volumes": budget, "draw": draw, "finetune_seed": draw,
            "pretrain_run": init.run if init else None, "pretrain_seed": init.seed if init else None,
            "labeled_subjects": run.get("labeled_subjects") or evaluation.get("labeled_subjects"),
            "validation_subjects": list((run.get("validation") or {}).get("subjects") or []),
            "recipe": kept.candidate.recipe, "lr": kept.lr, "chosen_on": "validation" if len(tried) > 1 else None,
            "candidates": [{"recipe": t.candidate.recipe, "lr": t.lr, "run": t.run_dir.name, "validation_dice": t.validation,
                            "selected_step": t.run.get("selected_step"), "stop_reason": stop_reason(t.run)} for t in tried],
            "selected_step": run.get("selected_step"), "steps": run.get("steps"), "stop_reason": stop_reason(run),
            "seconds": {"finetune": sum(float(t.run.get("seconds") or 0.0) for t in tried), "evaluate": eval_seconds},
            "test_subjects": evaluation.get("test_subjects"),
            "mean_dice": evaluation.get("mean_dice"), "mean_hd95": evaluation.get("mean_hd95"),
            "space": evaluation.get("space"), "space_reason": evaluation.get("space_reason"),
            "per_class": evaluation.get("per_class"), "per_volume": evaluation.get("per_volume"),
        }
        for name in ("selection", "weight_change"):  # the recipe's records, where run.json has them
            if run.get(name) is not None:
                record[name] = run[name]
        return record

    # -- the real work -----------------------------------------------------------------------------
    def _train(self, ft: FinetuneConfig) -> None:
        from ssmtl.downstream.finetune import run_finetune

        run_finetune(ft, registry=self.registry, progress=self.progress)

    def _evaluate(self, run_dir: Path) -> dict[str, Any]:
        from ssmtl.downstream.evaluate import evaluate_run

        return evaluate_run(run_dir, registry=self.registry)

