"""`ssmtl benchmark`: the paper's protocol end to end on a tiny phantom cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssmtl.cli.app import app
from ssmtl.experiments.benchmark import Method, parse_methods
from ssmtl.experiments.results import summarise_cells
from ssmtl.api.errors import SsmtlError
from ssmtl.host.registry import build_registry

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory) -> Path:
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.host.registry import build_registry

    out = tmp_path_factory.mktemp("bench") / "ct.h5"
    return build_cache(dataset="phantom", dataset_options={"subjects": 6, "size": 32, "num_slices": 8},
                       preprocess=PreprocessConfig(size=32), out=out, registry=build_registry(external=False))


def bench(cache: Path, out: Path, *extra: str):
    args = ["--no-plugins", "benchmark", "--data", str(cache), "--methods", "scratch,contrastive", "--labeled-volumes", "1",
            "--seeds", "1", "--out", str(out), "--pretrain-steps", "2", "--finetune-steps", "2",
            "--set", "model.base_channels=4", "--set", "model.depth=2", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_tiny_benchmark_outputs_and_reuse(bench_cache, tmp_path):
    out = tmp_path / "bench"
    printed = bench(bench_cache, out).stdout
    # one seed is one draw, too few for an interval, and the console says so
    assert "(+x.xxx [low, high; G draws, MDE m])" in " ".join(printed.split())
    assert re.search(r"contrastive .*\(-?\+?\d\.\d{3} \[none: 1 draw\(s\) < 3\]\)", " ".join(printed.split())), printed
    for name in ("results.json", "results.md", "dice_vs_labels.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "dice_vs_labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert {c["method"] for c in results["cells"]} == {"scratch", "contrastive"}
    cell = results["cells"][0]
    assert set(cell["per_class"]) == {"myocardium", "left_atrium", "left_ventricle", "right_atrium", "right_ventricle", "aorta"}
    assert all("hd95" in v and "dice" in v for v in cell["per_volume"])
    assert "| contrastive |" in (out / "results.md").read_text()

    # splits are disjoint by subject, and identical test subjects in every cell
    test = set(results["test_subjects"])
    assert test and all(set(c["test_subjects"]) == test for c in results["cells"])
    for c in results["cells"]:
        assert not test & set(c["labeled_subjects"])
        split = json.loads((out / "finetune" / c["method"] / "finetune" / "n1" / "seed0" / "split.json").read_text())
        assert not set(split["train"]) & set(split["test"])
    manifest = json.loads((out / "pretrain" / "contrastive" / "export" / "manifest.json").read_text())
    assert not test & set(manifest["data"]["volumes"])  # pre-training never saw the test subjects

    # a re-run reuses the pre-training and the cells
    export = out / "pretrain" / "contrastive" / "export" / "model.safetensors"
    stamp = export.stat().st_mtime_ns
    again = bench(bench_cache, out)
    assert "reusing" in again.output
    assert "benchmark finetune" not in again.output and "training" not in again.output
    assert export.stat().st_mtime_ns == stamp

    # a copied (or moved) benchmark directory is still reusable: paths are not identity
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    relocated = bench(bench_cache, moved)
    assert "reusing" in relocated.output
    assert "benchmark finetune" not in relocated.output and "training" not in relocated.output

    # corrupt intermediates are detected and recomputed
    cell_eval = out / "finetune" / "scratch" / "finetune" / "n1" / "seed0" / "eval.json"
    cell_eval.write_text("{not json")
    export.write_bytes(export.read_bytes()[:64])
    third = bench(bench_cache, out)
    assert "no usable export" in third.output
    assert "finetune scratch/finetune n=1 seed=0" in third.output
    json.loads(cell_eval.read_text())
    from safetensors.torch import load_file

    assert load_file(export)  # rebuilt and readable


def test_parse_methods():
    tasks = {"contrastive", "order", "reconstruct", "neighbor", "position"}
    task_sets = build_registry(external=False).defaults.task_sets  # the methods known by name come from the plugins
    methods = parse_methods("scratch,contrastive,multitask,dec=reconstruct+neighbor", tasks, task_sets)
    assert methods[0] == Method("scratch", ())
    assert methods[2].tasks == ("contrastive", "order", "position", "reconstruct", "neighbor")
    assert methods[3] == Method("dec", ("reconstruct", "neighbor"))
    with pytest.raises(SsmtlError, match="unknown task"):
        parse_methods("x=bogus", tasks, task_sets)
    with pytest.raises(SsmtlError, match="unknown method 'mocov3'; use scratch, contrastive, multitask or NAME=task"):
        parse_methods("mocov3", tasks, task_sets)
    with pytest.raises(SsmtlError, match="twice"):
        parse_methods("scratch,scratch", tasks, task_sets)
    enc = parse_methods("multitask,mt-enc=multitask:encoder,c-enc=contrastive+order:encoder,c=contrastive:all", tasks, task_sets)
    assert enc[1] == Method("mt-enc", methods[2].tasks, "encoder")
    assert enc[2] == Method("c-enc", ("contrastive", "order"), "encoder")
    assert enc[3] == Method("c", ("contrastive",), "all")
    with pytest.raises(SsmtlError, match="unknown suffix ':decoder'"):
        parse_methods("x=multitask:decoder", tasks, task_sets)
    with pytest.raises(SsmtlError, match="needs a pre-trained method"):
        parse_methods("x=scratch:encoder", tasks, task_sets)
    # a plugin's own task set is a method like the built-in ones
    mine = parse_methods("scratch,pair,p-enc=pair:encoder", tasks, {"pair": ("order", "position")})
    assert mine[1:] == [Method("pair", ("order", "position")), Method("p-enc", ("order", "position"), "encoder")]
    with pytest.raises(SsmtlError, match="unknown method 'multitask'; use scratch, pair or"):
        parse_methods("multitask", tasks, {"pair": ("order", "position")})


def test_encoder_only_method_shares_the_pretraining(bench_cache, tmp_path):
    out = tmp_path / "bench"
    result = bench(bench_cache, out, "--methods", "contrastive,c-enc=contrastive:encoder")
    assert result.output.count("training contrastive") == 1
    assert not (out / "pretrain" / "c-enc").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["init_parts"] == {"contrastive": "all", "c-enc": "encoder"}
    runs = {m: json.loads((out / "finetune" / m / "finetune" / "n1" / "seed0" / "run.json").read_text()) for m in ("contrastive", "c-enc")}
    assert runs["contrastive"]["init"] == runs["c-enc"]["init"] == str(out / "pretrain" / "contrastive")
    assert (runs["contrastive"]["init_parts"], runs["c-enc"]["init_parts"]) == ("all", "encoder")


def test_summary_pairs_by_seed():
    def cell(method, seed, dice):
        return {"method": method, "protocol": "finetune", "labeled_volumes": 1, "seed": seed, "mean_dice": dice,
                "mean_hd95": 1.0, "per_class": {"a": {"dice": dice}}}

    cells = [cell("scratch", 0, 0.5), cell("scratch", 1, 0.7), cell("multi", 0, 0.6), cell("multi", 1, 0.6)]
    rows = {r["method"]: r for r in summarise_cells(cells)}
    assert rows["scratch"]["dice_mean"] == pytest.approx(0.6)
    assert rows["scratch"]["dice_std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of 0.5, 0.7
    diff = rows["multi"]["vs_scratch"]
    assert diff["mean"] == pytest.approx(0.0) and diff["wins"] == 1 and diff["pairs"] == 2
    assert diff["std"] == pytest.approx(0.1414213, rel=1e-5)  # paired diffs +0.1, -0.1
    assert "vs_base" not in rows["multi"]  # scratch is the only reference unless a baseline is named
    cells += [cell("base", 0, 0.55), cell("base", 1, 0.5)]
    rows = {r["method"]: r for r in summarise_cells(cells, references=("scratch", "base"))}
    assert rows["multi"]["vs_base"]["mean"] == pytest.approx(0.075) and rows["multi"]["vs_base"]["wins"] == 2
    assert "vs_base" not in rows["base"] and "vs_scratch" not in rows["scratch"]


def test_default_methods_are_scratch_and_the_plugins_task_sets(bench_cache, tmp_path):
    import types

    from ssmtl.api import DefaultsSpec, hookimpl
    from ssmtl.host.registry import builtin_plugins
    from ssmtl.experiments.benchmark import Benchmark, BenchmarkConfig

    bench = Benchmark(BenchmarkConfig(data=bench_cache, out=tmp_path), build_registry(external=False))
    assert [m.name for m in bench.methods] == bench.config.methods == ["scratch", "contrastive", "multitask"]
    assert bench.methods[2].tasks == ("contrastive", "order", "position", "reconstruct", "neighbor")

    # other defaults (here without the built-in provider): other methods, nothing hard-coded
    mine = types.ModuleType("my_defaults")
    mine.ssmtl_defaults = hookimpl(lambda: DefaultsSpec(tasks=("order",), task_sets={"pair": ("order", "position")}, baseline="pair", network="unet"))
    mine.ssmtl_defaults.__name__ = "ssmtl_defaults"
    registry = build_registry(external=False, builtins=[b for b in builtin_plugins() if not b.endswith(".defaults")], extra=[mine])
    other = Benchmark(BenchmarkConfig(data=bench_cache, out=tmp_path), registry)
    assert [(m.name, m.tasks) for m in other.methods] == [("scratch", ()), ("pair", ("order", "position"))]


def test_benchmark_fine_tunes_the_way_finetune_does_by_default():
    """A user comparing methods with `ssmtl benchmark` gets the fine-tuning `ssmtl finetune` gives them
    (it once kept 300 fixed steps at 1e-3, the schedule that scored 0.42 on the demo)."""
    import inspect

    from ssmtl.cli.benchmark_cmd import benchmark
    from ssmtl.downstream.config import FinetuneTrainConfig
    from ssmtl.experiments.benchmark import BenchmarkConfig

    train = FinetuneTrainConfig()
    config = BenchmarkConfig(data=Path("x.h5"), out=Path("o"))
    assert (config.finetune_steps, config.finetune_lr, config.finetune_batch_size) == (train.steps, train.lr, train.batch_size)
    cli = {name: p.default.default for name, p in inspect.signature(benchmark).parameters.items()
           if name.startswith("finetune_") and name != "finetune_data"}
    assert cli == {"finetune_steps": str(train.steps), "finetune_batch_size": train.batch_size, "finetune_lr": train.lr}
