"""The paper's experiment as one resumable protocol: methods x label budgets x draws.

For every pre-trained *method* (a set of pretext tasks) the network is pre-trained ``K``
times on ``data`` (its train subjects), ``K = pretrain_seeds`` (one run per draw by
default). Every (method, protocol, budget, draw) *cell* then fine-tunes on ``budget``
labeled subjects chosen by the draw from the training subjects of ``finetune_data``
(``data`` by default; another modality for cross-domain transfer), keeps the fine-tuning
candidate that scores best on the draw's validation subjects, and is evaluated on the
**same held-out test subjects**, the split stored in the fine-tuning cache. 3D Dice and HD95
are reported per structure and per test volume; the methods are compared by draw
(:mod:`ssmtl.experiments.paired`). See :mod:`ssmtl.experiments.config` for the design.

The benchmark runs draw by draw and rewrites its results after each one, so an interrupted
run has complete draws and a later run with more draws only adds the missing ones. Every
run is reused when its configuration and data match (:mod:`ssmtl.experiments.store`).
Started twice on the same folders (``JOBS=2`` in benchmarks/cpu_protocol.sh), the two
processes share the work: each skips what the other is making and comes back to it.

Layout (``runs`` defaults to ``out``)::

    runs/pretrain/<method>/seed<s>-<digest>/                 pre-training runs (export/, checkpoints/)
    runs/finetune/<method>/<protocol>/n<budget>/draw<d>/lr<lr>-<digest>/   candidate runs; the kept one has eval.json
    out/results.json  out/results.md  out/dice_vs_labels.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ssmtl.api.errors import SsmtlError
from ssmtl.data.cache_set import data_record, open_caches
from ssmtl.storage.files import save_json, save_text
from ssmtl.experiments.cells import Cells, candidate_name
from ssmtl.experiments.cohort import cohort_record, finetune_split, pretraining_volumes
from ssmtl.experiments.config import BenchmarkConfig
from ssmtl.experiments.methods import SCRATCH, Method, parse_methods
from ssmtl.experiments.pretrain_runs import PretrainRun, PretrainRuns
from ssmtl.experiments.pseudonyms import Shareable, data_summary, file_name
from ssmtl.experiments.results import draws_done, plot_dice_vs_labels, render_markdown, summarise_cells
from ssmtl.experiments.store import Busy

POLL_SECONDS = 10.0  # how often a benchmark with nothing left to start looks again

__all__ = ["Benchmark", "BenchmarkConfig", "Method", "parse_methods"]


class Benchmark:
    """Runs the protocol; ``log(msg)`` reports each stage. Everything is checked before anything runs."""

    def __init__(self, config: BenchmarkConfig, registry, log: Callable[[str], None] = print, progress: bool = False):
        if config.methods is None:  # scratch and every task set the plugins name
            config = config.model_copy(update={"methods": [SCRATCH, *registry.defaults.task_sets]})
        self.config = config
        self.registry = registry
        self.log = log
        self.out = Path(config.out)
        self.root = Path(config.runs or config.out)
        self.methods = parse_methods(config.methods, set(registry.tasks), registry.defaults.task_sets)
        self.pre_cache = open_caches(config.data)
        self.ft_path = config.finetune_data or config.data
        self.ft_cache = open_caches(self.ft_path)
        if not any(v.has_label for v in self.ft_cache.volumes):
            raise SsmtlError(f"{self.ft_cache.path}: no labeled volumes to fine-tune and test on")
        self.pretraining = PretrainRuns(config, registry, self.methods, self.root, self.pre_cache.fingerprint, log, progress)
        # scratch gets exactly the network the pre-trained methods export, and fine-tuning
        # runs at the pre-training precision
        reference = self.pretraining.config_for(next((m.tasks for m in self.methods if m.pretrained), tuple(registry.defaults.tasks)), 0)
        self.model_config = reference.model
        self.cells = Cells(config, registry, self.root, self.ft_path, self.ft_cache.fingerprint, reference.model,
                           reference.train.mixed_precision or "no", log, progress)
        self.shareable = Shareable.of(self.ft_cache, identify=config.identify_subjects)
        self.cohort = self._check_cohort(reference)
        self.pretrain_steps = {m.name: self.pretraining.config_for(m.tasks, 0).train.steps for m in self.methods if m.pretrained}

    def _check_cohort(self, reference) -> dict[str, Any] | None:
        """Pre-training never reads a test subject; how many subjects it reads, and from where."""
        from ssmtl.downstream.config import FinetuneConfig

        table = FinetuneConfig.model_validate({**self.cells.candidates[0].table, "data": self.ft_path, "out": self.out})
        split = finetune_split(self.ft_cache, self.config.split_seed, table.test_fraction, table.val_fraction)
        if not any(m.pretrained for m in self.methods):
            return None
        read = pretraining_volumes(self.pre_cache, reference.data.split, reference.data.modality)
        return cohort_record(read, self.ft_cache, list(split["test"]))

    @property
    def protocols(self) -> list[str]:
        return ["finetune"] + (["frozen"] if self.config.frozen_encoder else [])

    def work(self) -> list[tuple[int, tuple]]:
        """Every step of the benchmark in the order it is done: per draw, its pre-training runs
        (``("pretrain", method, k)``), then its cells (``("cell", method, protocol, budget)``)."""
        steps: list[tuple[int, tuple]] = []
        for draw in range(self.config.draws):
            k = self.config.pretrain_run_of(draw)
            steps += [(draw, ("pretrain", m, k)) for m in self.methods if m.pretrained]
            steps += [(draw, ("cell", m, protocol, budget)) for protocol in self.protocols
                      for m in self.methods for budget in self.config.labeled_volumes]
        return steps

    def run(self) -> dict[str, Any]:
        """Every step, earliest draw first; results rewritten whenever a draw is complete.

        A step another process is doing (:class:`~ssmtl.experiments.store.Busy`: the same
        benchmark started twice to use two cores, or another benchmark sharing ``runs``) is
        left for later and the next one is done; a cell waits for its pre-training run.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        todo = list(enumerate(self.work()))  # (position: the order of cells in results.json, (draw, step))
        runs: dict[tuple[str, int], PretrainRun] = {}
        cells: dict[int, tuple[int, dict[str, Any]]] = {}
        written, results, said = -1, {}, False
        on_disk = self.draws_written()  # a resumed run keeps that file until it has as many draws again
        while todo:
            for i, (position, (draw, step)) in enumerate(todo):
                try:
                    if step[0] == "pretrain":
                        runs[(step[1].name, step[2])] = self.pretraining.run(step[1], step[2])
                    else:
                        _, method, protocol, budget = step
                        init = runs.get((method.name, self.config.pretrain_run_of(draw))) if method.pretrained else None
                        if method.pretrained and init is None:
                            continue  # its pre-training run is not made yet
                        cells[position] = (draw, self.cells.cell(method, protocol, budget, draw, init))
                except Busy as busy:
                    if not said:
                        self.log(f"{busy}: doing other work meanwhile (said once)")
                        said = True
                    continue
                del todo[i]
                break
            else:
                time.sleep(POLL_SECONDS)  # all that is left is being made by another process
                continue
            complete = min([d for _, (d, _) in todo], default=self.config.draws)  # the draws before it are done
            if complete - 1 > written and (complete >= on_disk or not todo):
                written = complete - 1
                results = self.write([c for _, (d, c) in sorted(cells.items()) if d < complete], runs)
        return results

    def config_record(self) -> dict[str, Any]:
        """The configuration as results.json records it: file names, no local paths."""
        config = self.config.model_dump(mode="json")
        config.update(data=file_name(config["data"]), finetune_data=file_name(config["finetune_data"]), out=None, runs=None)
        return config

    def draws_written(self) -> int:
        """The complete draws in a results.json this benchmark's configuration wrote before (any
        number of draws); 0 where there is none, it does not parse, or another configuration wrote it.
        A resumed run walks its reused draws from the first, so without this a run stopped early
        would leave a table of fewer draws than the one it replaced."""
        try:
            old = json.loads((self.out / "results.json").read_text())
            same = {k: v for k, v in old["config"].items() if k != "draws"} == {
                k: v for k, v in self.config_record().items() if k != "draws"}
            return int(old["design"]["draws"]) if same else 0
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def write(self, cells: list[dict[str, Any]], runs: dict[tuple[str, int], PretrainRun]) -> dict[str, Any]:
        """results.json, results.md and the plot from the cells so far (shareable: see
        :mod:`ssmtl.experiments.pseudonyms`)."""
        tests = {tuple(c["test_subjects"] or []) for c in cells}
        if len(tests) > 1:
            raise SsmtlError("cells were evaluated on different test subjects; delete the benchmark directory and re-run")
        test_subjects = sorted(next(iter(tests))) if tests else []
        tested = set(test_subjects)
        leaked = sorted({s for c in cells for s in (c["labeled_subjects"] or []) + c["validation_subjects"] if s in tested})
        if leaked:
            raise SsmtlError(f"{len(leaked)} test subject(s) were used for fine-tuning or validation")
        results = {
            "config": self.config_record(),
            "design": {
                **draws_done(cells, self.config.draws, self.config.pretrain_runs),
                "candidates": [candidate_name(c) for c in self.cells.candidates],
                "chosen_on": "the validation subjects of each draw",
                "pretrain_steps": self.pretrain_steps,
            },
            "methods": {m.name: list(m.tasks) for m in self.methods},
            "init_parts": {m.name: m.init_parts for m in self.methods if m.pretrained},
            "pretrain_data": data_summary(data_record(self.pre_cache, self.config.data)),
            "finetune_data": {**data_summary(data_record(self.ft_cache, self.ft_path)),
                              "labeled_subjects": len({v.subject for v in self.ft_cache.volumes if v.has_label})},
            "cohort": self.cohort,
            "identified_subjects": self.config.identify_subjects,
            "test_subjects": self.shareable.subjects(test_subjects),
            "class_names": list(cells[0]["per_class"] or {}) if cells else [],
            "space": sorted({c["space"] for c in cells if c.get("space")}),
            "pretrain_runs": [{"method": m, "run": r.run, "seed": r.seed, "dir": r.path.relative_to(self.root / "pretrain").as_posix(),
                               "seconds": r.seconds} for (m, _), r in sorted(runs.items())],
            "cells": [self.shareable.cell(c) for c in cells],
            "summary": summarise_cells(cells, references=(SCRATCH, *filter(None, [self.registry.defaults.baseline]))),
        }
        save_json(self.out / "results.json", results)
        save_text(self.out / "results.md", render_markdown(results))
        plot_dice_vs_labels(results, self.out / "dice_vs_labels.png")
        return results
