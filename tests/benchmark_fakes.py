"""Fake fine-tuning and evaluation for benchmark tests: runs scored by (init, lr), so a test can
make validation and test disagree and check which one the benchmark listened to."""

from __future__ import annotations

import json
from pathlib import Path

from ssmtl.experiments.benchmark import Benchmark, BenchmarkConfig
from ssmtl.host.registry import build_registry


def fake_runs(validation, test, calls):
    """``train_fn`` / ``evaluate_fn`` that score a run by (init, lr): ``validation[...]`` on the
    draw's validation subjects, ``test[...]`` on the test subjects; ``calls`` records both."""
    from ssmtl.data.cache_set import open_caches
    from ssmtl.data.splits import choose_labeled, split_cache
    from ssmtl.downstream.validation import plan_validation

    def train(ft):
        cache = open_caches(ft.data)
        split = split_cache(cache, seed=ft.split_seed, test_fraction=ft.test_fraction)
        labeled = choose_labeled(split["train"], ft.labeled_volumes, ft.labeled_seed)
        plan = plan_validation(split, labeled, ft.validation, ft.val_volumes, ft.labeled_seed)
        which = ("none" if ft.init == "none" else "pretrained", ft.train.lr)
        calls.append(("train", which, ft.freeze_encoder))
        Path(ft.out).mkdir(parents=True)
        (Path(ft.out) / "run.json").write_text(json.dumps({
            "labeled_subjects": labeled, "validation": {"subjects": plan.val, "dice": validation[which]},
            "selected_step": 7, "steps": 9, "stopped_early": True, "seconds": 0.5, "which": list(which), "test": split["test"],
            "weight_change": {"encoder": 0.1, "decoder": 0.2}}))

    def evaluate(run_dir):
        run = json.loads((Path(run_dir) / "run.json").read_text())
        calls.append(("evaluate", tuple(run["which"])))
        score = test[tuple(run["which"])]
        per_volume = [{"subject": s, "volume": s, "mean_dice": score + 0.01 * i} for i, s in enumerate(run["test"])]
        evaluation = {"per_volume": per_volume, "mean_dice": score, "mean_hd95": 1.0, "space": "cache",
                      "per_class": {"lv": {"dice": score}}, "test_subjects": run["test"]}
        (Path(run_dir) / "eval.json").write_text(json.dumps(evaluation))
        return evaluation

    return train, evaluate


def faked(config: BenchmarkConfig, validation, test):
    bench = Benchmark(config, build_registry(external=False), log=lambda m: None)
    calls: list = []
    bench.cells.train_fn, bench.cells.evaluate_fn = fake_runs(validation, test, calls)
    return bench, calls
