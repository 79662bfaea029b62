"""What ``ssmtl benchmark`` runs: :class:`BenchmarkConfig`.

The design it describes (docs/benchmarks.md, "How the protocol works"):

* **Draws.** For every label budget, ``draws`` independent draws. Draw ``d`` fixes
  everything random before testing, the same for every method: the labeled subjects and the
  validation subjects (both drawn with seed ``d``), the fine-tuning seed ``d`` and the step
  budget. Every draw is tested on the same held-out subjects.
* **Pre-training runs.** Each pre-trained method is pre-trained ``pretrain_seeds`` times
  (seeds ``s0 .. s0 + K - 1``, ``s0`` the ``pretrain`` table's ``seed``, 0 by default); draw
  ``d`` fine-tunes from run ``d mod K``. The default, one run per draw (``K = draws``),
  makes every draw a full independent replicate. With fewer runs the draws that share one are
  not independent, and the statistics use the pre-training run as the unit
  (:func:`ssmtl.experiments.paired.compare`).
* **Fine-tuning candidates.** Each draw fine-tunes every method once per candidate recipe x
  learning rate (``finetune_recipes`` x ``finetune_lrs``) and keeps the candidate with the
  best Dice on that draw's *validation* subjects; only that one is tested. The choice never
  sees a test subject, and because it is made inside every draw, the interval over draws
  covers it.
* **Override tables.** ``pretrain`` applies to every pre-training (a ``PretrainConfig`` table:
  ``{"train": {"steps": 1500}, "model": {"base_channels": 8}}`` or dotted keys
  ``{"train.steps": 1500}``), ``finetune`` to every fine-tuning cell (a ``FinetuneConfig``
  table), and scratch gets both like every method. The fields the benchmark sets itself
  (data, seeds, the initialisation ...) are refused in the tables, with the field to use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ssmtl.api.errors import ConfigError
from ssmtl.api.rules import CONFIG_RULES, Seed
from ssmtl.settings.sources import deep_merge, error_rows, set_path

#: fine-tuning fields every cell gets from the benchmark, and where to set them instead
FINETUNE_RESERVED = {
    "data": "finetune_data (or data)",
    "out": "runs (where the benchmark keeps its runs)",
    "init": "methods (scratch starts from random weights, a task set from its pre-training run)",
    "init_parts": "methods (NAME=METHOD:encoder)",
    "labeled_volumes": "labeled_volumes",
    "seed": "draws (the draw is the fine-tuning seed)",
    "labeled_seed": "draws (the draw chooses the labeled subjects)",
    "split_seed": "split_seed",
    "freeze_encoder": "frozen_encoder",
    "model": "pretrain.model (scratch gets the network the pre-trained methods export)",
}
#: pre-training fields the benchmark sets itself
PRETRAIN_RESERVED = {"out": "runs", "data.path": "data"}
_RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def nested(table: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.steps": 5, "model": {"depth": 2}}`` -> ``{"train": {"steps": 5}, "model": {"depth": 2}}``.

    Dotted keys and nested tables may be mixed; a later key overrides an earlier one."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        layer: dict[str, Any] = {}
        try:
            set_path(layer, str(key), nested(value) if isinstance(value, Mapping) else value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        out = deep_merge(out, layer)
    return out


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The leaves of a nested table by dotted path (an empty table is no leaf)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _refuse(table: Mapping[str, Any], reserved: Mapping[str, str], what: str) -> None:
    for path in flatten(table):
        for field, instead in reserved.items():
            if path == field or path.startswith(f"{field}."):
                raise ValueError(f"{what}.{path}: set by the benchmark in every run; use {instead}")


def check_finetune_table(table: Mapping[str, Any], what: str) -> None:
    """Validate an override table against the fine-tuning config (its fields, types and ranges)."""
    from ssmtl.downstream.config import FinetuneConfig

    try:
        FinetuneConfig.model_validate({**table, "data": "cache.h5", "out": "run"})
    except ValidationError as exc:
        loc, msg = error_rows(exc, prefix=what)[0]
        raise ValueError(f"{loc}: {msg}") from None


class BenchmarkConfig(BaseModel):
    """Everything ``ssmtl benchmark`` runs. ``--set PATH=VALUE`` reaches any field
    (``--set pretrain.train.steps=1500``, ``--set finetune.train.lp_steps=100``)."""

    model_config = CONFIG_RULES
    data: Path | list[Path] = Field(description="Cache for pre-training (its train subjects), a folder of caches, or a list of caches read as one dataset (e.g. the cohort plus a large unlabeled pool).")
    finetune_data: Path | list[Path] | None = Field(None, description="Labeled cache (folder, or list) for fine-tuning and testing (default: data).")
    out: Path = Field(description="Benchmark directory: results.json, results.md, dice_vs_labels.png (and the runs, unless `runs` names another folder).")
    runs: Path | None = Field(None, description="Folder of the pre-training runs and fine-tuning cells (default: out). Benchmarks that name the same folder share every run whose configuration and data are identical; a run another process is making is waited for.")
    methods: list[str] | None = Field(None, description="Methods: scratch, a task set named by the plugins' defaults (built-in: contrastive, multitask), NAME=task+task, NAME=METHOD_OR_TASKS:encoder (fine-tune from the pre-trained encoder only). None: scratch and every task set.")
    labeled_volumes: list[int] = Field(default_factory=lambda: [1, 2, 4], description="Label budgets, in subjects.")
    draws: int = Field(3, ge=1, le=1000, description="Draws per label budget: labeled and validation subjects, fine-tuning seed; the same for every method within a draw. The unit of replication: no interval below 3.")
    pretrain_seeds: int | None = Field(None, ge=1, le=1000, description="Pre-training runs per method (K); draw d fine-tunes from run d mod K. None: one run per draw, every draw a full replicate. With K < draws the pre-training run is the unit of the statistics.")
    finetune_lrs: list[float] | None = Field(None, description="Fine-tuning learning-rate grid; each draw keeps, per method, the lr with the best validation Dice (never a test score). None: finetune.train.lr, or `ssmtl finetune`'s default.")
    finetune_recipes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named fine-tuning recipes, each an override table on top of `finetune` (e.g. {\"lp-ft\": {\"train\": {\"lp_steps\": 100}}}); chosen per draw and method on validation together with the lr. Empty: the `finetune` table alone.")
    frozen_encoder: bool = Field(False, description="Also run the frozen-encoder protocol (decoder + head trained on a fixed encoder), with a frozen random encoder (scratch) as its floor.")
    split_seed: Seed = Field(0, description="Seed of the test split when the fine-tuning cache stores none.")
    identify_subjects: bool = Field(False, description="Write the real subject names into results.json and results.md (for internal use: by default they carry pseudonyms, subject-001 ..., and counts).")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="Overrides for every pre-training (a pre-training config table: dotted keys or nested tables, e.g. {\"train\": {\"steps\": 1500}, \"model\": {\"base_channels\": 8}}); `seed` is the first pre-training run's seed.")
    finetune: dict[str, Any] = Field(default_factory=dict, description="Overrides for every fine-tuning cell, scratch included (a fine-tuning config table, e.g. {\"train\": {\"steps\": 600, \"warmup_steps\": 50}}).")

    @field_validator("labeled_volumes")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 for n in v):
            raise ValueError("label budgets must be positive integers")
        return sorted(set(v))

    @field_validator("finetune_lrs")
    @classmethod
    def _lrs(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v or any(lr <= 0 for lr in v):
            raise ValueError("give at least one learning rate, each above 0")
        return sorted(set(v))

    @field_validator("pretrain")
    @classmethod
    def _pretrain_table(cls, v: dict[str, Any]) -> dict[str, Any]:
        table = nested(v)
        _refuse(table, PRETRAIN_RESERVED, "pretrain")
        return table

    @field_validator("finetune")
    @classmethod
    def _finetune_table(cls, v: dict[str, Any]) -> dict[str, Any]:
        table = nested(v)
        _refuse(table, FINETUNE_RESERVED, "finetune")
        check_finetune_table(table, "finetune")
        return table

    @field_validator("finetune_recipes")
    @classmethod
    def _recipes(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out = {}
        for name, table in v.items():
            if not _RECIPE_NAME.match(name):
                raise ValueError(f"recipe name {name!r}: use letters, digits, '.', '_' or '-'")
            out[name] = nested(table)
            _refuse(out[name], FINETUNE_RESERVED, f"finetune_recipes.{name}")
        return out

    @model_validator(mode="after")
    def _design(self) -> "BenchmarkConfig":
        if self.pretrain_seeds is not None and self.pretrain_seeds > self.draws:
            raise ValueError(f"pretrain_seeds ({self.pretrain_seeds}) above draws ({self.draws}): a pre-training run no draw fine-tunes from is wasted")
        sets_lr = "lr" in (self.finetune.get("train") or {}) or any("lr" in (t.get("train") or {}) for t in self.finetune_recipes.values())
        if self.finetune_lrs is not None and sets_lr:
            raise ValueError("finetune_lrs and a train.lr in finetune (or a recipe): give the learning rate in one place")
        for name, table in self.finetune_recipes.items():
            check_finetune_table(deep_merge(self.finetune, table), f"finetune_recipes.{name}")
        return self

    # -- the design ----------------------------------------------------------------------------
    @property
    def pretrain_runs(self) -> int:
        """K: pre-training runs per pre-trained method."""
        return self.pretrain_seeds or self.draws

    def pretrain_run_of(self, draw: int) -> int:
        """The pre-training run draw ``draw`` fine-tunes from."""
        return draw % self.pretrain_runs

    @property
    def recipes(self) -> dict[str, dict[str, Any]]:
        """Recipe name -> the full fine-tuning override table (``finetune`` with the recipe on top)."""
        if not self.finetune_recipes:
            return {"default": self.finetune}
        return {name: deep_merge(self.finetune, table) for name, table in self.finetune_recipes.items()}
