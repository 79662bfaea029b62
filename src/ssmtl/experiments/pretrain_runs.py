"""A benchmark's pre-training runs: ``K`` per pre-trained method, each made once and reused.

Run ``k`` of a method pre-trains its tasks on ``data`` (its train subjects) with the
``pretrain`` table applied and seed ``s0 + k`` (``s0``: the table's ``seed``, 0 by default).
Methods with the same tasks share their runs (``NAME=METHOD:encoder`` fine-tunes from
METHOD's). A finished run whose export matches its configuration and data is reused, an
interrupted one resumes from its checkpoint, anything else is made again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ssmtl.api.errors import ConfigError
from ssmtl.pretraining.config import PretrainConfig, config_to_dict, resolve_pretrain_config
from ssmtl.settings.sources import as_set_flags
from ssmtl.storage.files import save_json
from ssmtl.experiments.config import BenchmarkConfig, flatten
from ssmtl.experiments.methods import Method
from ssmtl.experiments.store import claimed, digest, read_key, relocatable

TIMING = "benchmark_seconds.json"  # beside the export: how long the run took when it was made


@dataclass(frozen=True)
class PretrainRun:
    path: Path
    run: int  # k: draws d with d mod K == k fine-tune from it
    seed: int
    seconds: float | None  # measured when it was made (None: not recorded)


class PretrainRuns:
    """Resolves, validates and makes the pre-training runs of a benchmark."""

    def __init__(self, config: BenchmarkConfig, registry, methods: list[Method], root: Path, fingerprint: str,
                 log: Callable[[str], None] = print, progress: bool = False):
        self.config, self.registry, self.root, self.fingerprint = config, registry, root, fingerprint
        self.log, self.progress = log, progress
        table = dict(config.pretrain)
        base = table.pop("seed", 0)
        if not isinstance(base, int) or isinstance(base, bool) or base < 0:
            raise ConfigError(f"invalid benchmark option pretrain.seed: the first pre-training run's seed, an integer >= 0 (got {base!r})",
                              [("pretrain.seed", "an integer >= 0")])
        self.base_seed = base
        self.options = flatten(table)
        tasks_table = table.get("tasks", {})
        if not isinstance(tasks_table, dict) or any(not isinstance(v, dict) for v in tasks_table.values()):
            raise ConfigError("invalid benchmark option pretrain.tasks: task options only, as tasks.NAME.OPTION (the methods choose the tasks)",
                              [("pretrain.tasks", "task options only")])
        unknown = sorted(set(tasks_table) - set(registry.tasks))
        if unknown:
            raise ConfigError(f"invalid benchmark option pretrain.tasks.{unknown[0]}: unknown task; available: {', '.join(sorted(registry.tasks))}",
                              [(f"pretrain.tasks.{unknown[0]}", "unknown task")])
        self.owner: dict[tuple[str, ...], Method] = {}  # the first method with these tasks names their runs
        for method in methods:
            if method.pretrained:
                self.owner.setdefault(method.tasks, method)
        for tasks in self.owner:  # every method's pre-training is valid before anything runs
            self.config_for(tasks, 0)
        self._made: dict[tuple[tuple[str, ...], int], PretrainRun] = {}

    def seed(self, run: int) -> int:
        return self.base_seed + run

    def config_for(self, tasks: tuple[str, ...], run: int, out: Path | None = None) -> PretrainConfig:
        """Run ``run``'s configuration for ``tasks`` (options of tasks it does not use are dropped)."""
        options = {k: v for k, v in self.options.items() if not (k.startswith("tasks.") and k.split(".")[1] not in tasks)}
        try:
            return resolve_pretrain_config(
                flags={"data.path": self.config.data, "out": out or self.root / "pretrain", "seed": self.seed(run)},
                tasks=list(tasks), sets=as_set_flags(options), registry=self.registry, environ={},
            )
        except ConfigError as exc:
            rows = [(f"pretrain.{loc}", msg) for loc, msg in exc.rows]
            raise ConfigError(f"invalid benchmark option pretrain (pre-training {'+'.join(tasks)}): {exc}", rows) from None

    def run(self, method: Method, run: int) -> PretrainRun:
        """Method ``method``'s run ``run``, made now unless it exists."""
        found = self._made.get((method.tasks, run))
        if found is None:
            found = self._made[(method.tasks, run)] = self._make(self.owner[method.tasks], run)
        return found

    def run_dir(self, method: Method, run: int) -> Path:
        """Where run ``run`` of ``method`` lives: named by its seed and a digest of its configuration and data."""
        expected = relocatable(config_to_dict(self.config_for(method.tasks, run)))
        owner = self.owner[method.tasks]
        return self.root / "pretrain" / owner.name / f"seed{self.seed(run)}-{digest([expected, self.fingerprint])[:12]}"

    def _make(self, owner: Method, run: int) -> PretrainRun:
        from ssmtl.pretraining.engine import run_pretraining

        config = self.config_for(owner.tasks, run)
        expected = relocatable(config_to_dict(config))
        run_dir = self.run_dir(owner, run)
        config = config.model_copy(update={"out": run_dir})
        what = f"pretrain {owner.name} run {run} (seed {self.seed(run)})"
        with claimed(run_dir):
            if self._reusable(run_dir, expected, what):
                return PretrainRun(run_dir, run, self.seed(run), read_key(run_dir / TIMING).get("seconds"))
            resume = False
            saved = run_dir / "config.json"
            if (run_dir / "checkpoints").is_dir() and saved.is_file():
                try:
                    resume = relocatable(json.loads(saved.read_text())) == expected
                except (json.JSONDecodeError, UnicodeDecodeError):
                    resume = False
            if not resume and run_dir.exists():
                shutil.rmtree(run_dir)
            self.log(f"{what}: {'resuming' if resume else 'training'} {'+'.join(owner.tasks)} for {config.train.steps} steps")
            result = run_pretraining(config, resume=resume, registry=self.registry, progress=self.progress)
            save_json(run_dir / TIMING, {"seconds": result.seconds, "resumed": resume})
            return PretrainRun(run_dir, run, self.seed(run), result.seconds)

    def _reusable(self, run_dir: Path, expected: dict[str, Any], what: str) -> bool:
        from ssmtl.training.export import load_pretrained_network

        try:
            _, manifest = load_pretrained_network(run_dir, self.registry)
        except Exception as exc:  # missing, unreadable or corrupt export: make it again
            if run_dir.exists():
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                self.log(f"{what}: no usable export ({reason})")
            return False
        if relocatable(manifest.get("config") or {}) == expected and (manifest.get("data") or {}).get("fingerprint") == self.fingerprint:
            self.log(f"{what}: reusing {run_dir.name}")
            return True
        self.log(f"{what}: the export is from another configuration or data; making it again")
        return False
