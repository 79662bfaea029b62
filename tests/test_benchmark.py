"""`ssmtl benchmark`: the paper's protocol end to end on a tiny phantom cache, by draws."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from benchmark_fakes import faked
from typer.testing import CliRunner

from ssmtl.api.errors import ConfigError, SsmtlError
from ssmtl.cli.app import app
from ssmtl.experiments.benchmark import (
    Benchmark,
    BenchmarkConfig,
    Method,
    parse_methods,
)
from ssmtl.experiments.cells import choose
from ssmtl.experiments.intervals import t_interval
from ssmtl.experiments.pseudonyms import Shareable
from ssmtl.experiments.results import render_markdown, summarise_cells
from ssmtl.host.registry import build_registry

pytestmark = pytest.mark.slow
runner = CliRunner()
TINY = ("--pretrain-steps", "2", "--steps", "2", "--set", "pretrain.model.base_channels=4", "--set", "pretrain.model.depth=2")


def _build(out: Path, subjects: int, seed: int = 0, test_fraction: float = 0.3) -> Path:
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig

    return build_cache(dataset="phantom", dataset_options={"subjects": subjects, "size": 32, "num_slices": 8, "seed": seed},
                       preprocess=PreprocessConfig(size=32), out=out, registry=build_registry(external=False),
                       test_fraction=test_fraction)


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("bench") / "ct.h5", 6)


def bench(cache: Path, out: Path, *extra: str):
    args = ["--no-plugins", "benchmark", "--data", str(cache), "--methods", "scratch,contrastive,c-enc=contrastive:encoder",
            "--labeled-volumes", "1", "--draws", "3", "--out", str(out), *TINY, *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def three_draws(bench_cache, tmp_path_factory):
    """One real benchmark: 3 draws of scratch, contrastive and contrastive with a random decoder."""
    out = tmp_path_factory.mktemp("three") / "bench"
    return out, bench(bench_cache, out)


def test_three_draws_give_intervals_with_draws_and_mde(three_draws):
    out, result = three_draws
    printed = " ".join(re.sub("[│┃]", " ", result.stdout).split())  # the table may wrap a cell
    assert re.search(r"contrastive .*\(-?\+?\d\.\d{3} \[[-+]\d\.\d{3}, [-+]\d\.\d{3}; 3 draws, MDE \d\.\d{3}\]\)", printed), printed
    for name in ("results.json", "results.md", "dice_vs_labels.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "dice_vs_labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    vs = next(r for r in results["summary"] if r["method"] == "contrastive")["vs_scratch"]
    assert (vs["unit"], vs["units"], vs["draws"]) == ("draw", 3, 3) and not math.isnan(vs["mde80"])
    assert vs["ci95"] == pytest.approx(list(t_interval(vs["draw_differences"])))
    text = (out / "results.md").read_text()
    assert "3 draw(s) per label budget" in text and "every draw is an independent replicate" in text
    assert f"; 3 draws, MDE {vs['mde80']:.3f}]" in text and "## Verdict" in text


def test_cells_record_the_draw_and_pair_methods_within_it(three_draws):
    out, _ = three_draws
    results = json.loads((out / "results.json").read_text())
    cells = {(c["method"], c["draw"]): c for c in results["cells"]}
    assert set(cells) == {(m, d) for m in ("scratch", "contrastive", "c-enc") for d in range(3)}
    for d in range(3):
        scratch, contrastive, enc = cells[("scratch", d)], cells[("contrastive", d)], cells[("c-enc", d)]
        assert scratch["pretrain_run"] is scratch["pretrain_seed"] is None
        # each draw its own pre-training run; the encoder-only variant fine-tunes from the same one
        assert contrastive["pretrain_run"] == enc["pretrain_run"] == d and contrastive["pretrain_seed"] == d
        for key in ("labeled_subjects", "validation_subjects", "test_subjects", "finetune_seed", "lr"):
            assert scratch[key] == contrastive[key] == enc[key], key
        assert scratch["labeled_subjects"] and len(scratch["validation_subjects"]) == 2
        assert not set(scratch["labeled_subjects"]) & set(scratch["validation_subjects"] + scratch["test_subjects"])
        for c in (scratch, contrastive, enc):
            assert c["selected_step"] == 2 and c["stop_reason"] and c["recipe"] == "default" and c["lr"] == 3e-3
            assert [k["lr"] for k in c["candidates"]] == [3e-3] and c["chosen_on"] is None
    assert sorted({r["seed"] for r in results["pretrain_runs"]}) == [0, 1, 2]
    runs = sorted((out / "pretrain" / "contrastive").iterdir())
    assert [p.name.split("-")[0] for p in runs] == ["seed0", "seed1", "seed2"]
    assert not (out / "pretrain" / "c-enc").exists()  # shares contrastive's runs
    for method, parts in (("contrastive", "all"), ("c-enc", "encoder")):
        run = json.loads(next((out / "finetune" / method / "finetune" / "n1" / "draw1").rglob("run.json")).read_text())
        assert (run["init"], run["init_parts"]) == (str(runs[1]), parts)
    manifest = json.loads((runs[0] / "export" / "manifest.json").read_text())
    split = json.loads(next((out / "finetune" / "scratch").rglob("split.json")).read_text())
    assert split["test"] and not set(split["test"]) & set(manifest["data"]["volumes"])  # pre-training never saw a test subject


def test_shareable_outputs_carry_pseudonyms_and_no_local_paths(three_draws):
    out, _ = three_draws
    results = json.loads((out / "results.json").read_text())
    written = (out / "results.json").read_text() + (out / "results.md").read_text()
    assert "phantom_" not in written and str(out.parent) not in written and "/tmp" not in written
    subjects = {s for c in results["cells"] for k in ("labeled_subjects", "validation_subjects", "test_subjects") for s in c[k]}
    subjects |= {v["subject"] for c in results["cells"] for v in c["per_volume"]}
    assert subjects and all(re.fullmatch(r"subject-\d{3}", s) for s in subjects)
    assert "2 test subjects, the same for every cell" in (out / "results.md").read_text()
    assert results["config"]["data"] == "ct.h5" and results["config"]["out"] is None


def test_rerun_reuses_everything_and_survives_a_move_and_corruption(three_draws, bench_cache, tmp_path):
    out, _ = three_draws
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # a copied (or moved) benchmark directory is reusable: paths are not identity
    again = bench(bench_cache, moved)
    assert again.output.count("reusing") == 3 and "benchmark finetune" not in again.output and "training contrastive" not in again.output
    assert json.loads((moved / "results.json").read_text())["summary"] == json.loads((out / "results.json").read_text())["summary"]
    cell_eval = next((moved / "finetune" / "scratch").rglob("eval.json"))
    cell_eval.write_text("{not json")
    export = next((moved / "pretrain" / "contrastive").glob("seed0-*")) / "export" / "model.safetensors"
    export.write_bytes(export.read_bytes()[:64])
    third = bench(bench_cache, moved)
    assert "no usable export" in third.output and "resuming contrastive" in " ".join(third.output.split())  # its last checkpoint
    json.loads(cell_eval.read_text())  # evaluated again (the run itself was reused)
    from safetensors.torch import load_file

    assert load_file(export)  # rebuilt and readable


# -- the lr is chosen on validation, never on test: fake fine-tuning and evaluation ---------------


def test_the_lr_is_chosen_per_method_on_validation_never_on_test(bench_cache, tmp_path):
    # validation prefers 3e-3 for scratch and 1e-3 for the pre-trained method; the test scores say the opposite
    validation = {("none", 1e-3): 0.40, ("none", 3e-3): 0.60, ("pretrained", 1e-3): 0.70, ("pretrained", 3e-3): 0.50}
    test = {("none", 1e-3): 0.90, ("none", 3e-3): 0.10, ("pretrained", 1e-3): 0.20, ("pretrained", 3e-3): 0.95}
    config = BenchmarkConfig(data=bench_cache, out=tmp_path, methods=["scratch", "contrastive"], labeled_volumes=[1], draws=2,
                             finetune_lrs=[3e-3, 1e-3], pretrain={"train.steps": 2, "model": {"base_channels": 4, "depth": 2}})
    bench, calls = faked(config, validation, test)
    results = bench.run()
    for c in results["cells"]:
        assert c["lr"] == (3e-3 if c["method"] == "scratch" else 1e-3) and c["chosen_on"] == "validation"
        assert [(k["lr"], k["validation_dice"]) for k in c["candidates"]] == [
            (lr, validation[("none" if c["method"] == "scratch" else "pretrained", lr)]) for lr in (1e-3, 3e-3)]
        assert c["weight_change"] == {"encoder": 0.1, "decoder": 0.2} and c["stop_reason"] == "validation plateau"
    evaluated = [call[1] for call in calls if call[0] == "evaluate"]
    assert sorted(evaluated) == [("none", 3e-3)] * 2 + [("pretrained", 1e-3)] * 2  # only the kept run is ever tested
    assert len([c for c in calls if c[0] == "train"]) == 8
    text = render_markdown(results)
    assert "| scratch | 1 | lr 0.003: 2 | 7 | validation plateau: 2 | 0.100 / 0.200 |" in text
    assert "| contrastive | 1 | lr 0.001: 2 | 7 | validation plateau: 2 | 0.100 / 0.200 |" in text
    scratch = [c for c in results["cells"] if c["method"] == "scratch"]
    moved = [{**scratch[0], "weight_change": {"encoder": 0.1, "decoder": 0.5}}, {**scratch[1], "weight_change": {"encoder": 0.4}},
             {**scratch[1], "draw": 2, "weight_change": None}]  # a run from before weight_change: left out of the median
    assert summarise_cells(moved)[0]["chosen"]["weight_change_median"] == pytest.approx({"encoder": 0.25, "decoder": 0.5})
    # a second benchmark over the same runs, whose test scores now favour the other lr, keeps the same choice
    rerun, calls = faked(config, validation, {k: 1 - v for k, v in test.items()})
    assert [c["lr"] for c in rerun.run()["cells"]] == [c["lr"] for c in results["cells"]] and calls == []


def test_one_draw_gives_no_verdict_however_large_the_difference(bench_cache, tmp_path):
    validation = {("none", 3e-3): 0.5}
    config = BenchmarkConfig(data=bench_cache, out=tmp_path, methods=["scratch"], labeled_volumes=[1], draws=1,
                             frozen_encoder=True)
    bench, calls = faked(config, validation, {("none", 3e-3): 0.5})
    results = bench.run()
    # the frozen random encoder: init none with the encoder frozen, a row of its own
    assert [(c[1], c[2]) for c in calls if c[0] == "train"] == [(("none", 3e-3), False), (("none", 3e-3), True)]
    assert {(c["protocol"], c["method"]) for c in results["cells"]} == {("finetune", "scratch"), ("frozen", "scratch")}
    text = render_markdown(results)
    assert "frozen random encoder" in text
    cells = [{**c, "method": m, "per_volume": [{**v, "mean_dice": v["mean_dice"] + shift} for v in c["per_volume"]]}
             for c in results["cells"] if c["protocol"] == "finetune" for m, shift in (("scratch", 0.0), ("other", 0.5))]
    row = next(r for r in summarise_cells(cells) if r["method"] == "other")
    assert row["vs_scratch"]["verdict"] == "too few draws to tell (an interval needs 3)"
    text = render_markdown({**results, "summary": [row]})
    assert "+0.500 mean Dice (95 % CI none: 1 draw < 3" in text and "too few draws to tell" in text
    assert "): better" not in text and "): worse" not in text


def test_work_another_process_holds_is_left_for_later(bench_cache, tmp_path, monkeypatch):
    """Two processes on one benchmark (JOBS=2) share its work: a run the other holds is skipped, then reused."""
    import subprocess
    import sys

    import ssmtl.experiments.benchmark as benchmark_module

    monkeypatch.setattr(benchmark_module, "POLL_SECONDS", 0.2)
    config = BenchmarkConfig(data=bench_cache, out=tmp_path, methods=["contrastive", "scratch"], labeled_volumes=[1], draws=1,
                             pretrain={"train.steps": 2, "model": {"base_channels": 4, "depth": 2}})
    bench, calls = faked(config, {("none", 3e-3): 0.5, ("pretrained", 3e-3): 0.5}, {("none", 3e-3): 0.5, ("pretrained", 3e-3): 0.5})
    logged: list[str] = []
    bench.log = bench.pretraining.log = logged.append
    run_dir = bench.pretraining.run_dir(bench.methods[0], 0)
    run_dir.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from ssmtl.storage.files import exclusive_lock\n"
        "with exclusive_lock(Path(sys.argv[1]), Path(sys.argv[2])):\n    print('held', flush=True); time.sleep(3)\n"),
        str(run_dir.parent / f".{run_dir.name}.claim"), str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    bench.run()
    holder.wait()
    assert any("doing other work meanwhile" in line for line in logged)
    trained = [c[1][0] for c in calls if c[0] == "train"]
    assert trained == ["none", "pretrained"]  # scratch (listed second) went first, while the pre-training was held
    assert any("training contrastive" in line for line in logged)  # then made here, once the claim was free


def test_draws_sharing_a_pretraining_run_are_averaged_and_the_run_is_the_unit():
    def cell(method, draw, run, score):
        return {"method": method, "protocol": "finetune", "labeled_volumes": 1, "draw": draw, "pretrain_run": run,
                "mean_dice": score, "mean_hd95": 1.0, "per_class": {}, "per_volume": [{"subject": "a", "mean_dice": score}]}

    shifts = [0.10, 0.02, 0.30, 0.14, 0.00, 0.22]  # 6 draws on K = 3 pre-training runs: draw d uses run d mod 3
    cells = [cell("scratch", d, None, 0.5) for d in range(6)] + [cell("multi", d, d % 3, 0.5 + s) for d, s in enumerate(shifts)]
    vs = next(r for r in summarise_cells(cells) if r["method"] == "multi")["vs_scratch"]
    run_means = [(shifts[k] + shifts[k + 3]) / 2 for k in range(3)]
    assert (vs["unit"], vs["units"], vs["draws"]) == ("pre-training run", 3, 6)
    assert vs["draw_differences"] == pytest.approx(run_means) and vs["ci95"] == pytest.approx(list(t_interval(run_means)))
    assert "3 pre-training runs of 6 draws" in render_markdown({"summary": [next(r for r in summarise_cells(cells) if r["method"] == "multi")]})
    two = [c for c in cells if c["draw"] < 4 and c["method"] == "scratch"] + [{**c, "pretrain_run": c["draw"] % 2} for c in cells
                                                                               if c["draw"] < 4 and c["method"] == "multi"]
    assert next(r for r in summarise_cells(two) if r["method"] == "multi")["vs_scratch"]["verdict"] == \
        "too few pre-training runs to tell (an interval needs 3)"


# -- configuration, data and pseudonyms -------------------------------------------------------


def test_config_tables_are_validated_and_reach_every_field(bench_cache, tmp_path):
    config = BenchmarkConfig(data=bench_cache, out=tmp_path, pretrain={"train.steps": 5, "train": {"batch_size": 4}},
                             finetune={"train.warmup_steps": 3})
    assert config.pretrain == {"train": {"steps": 5, "batch_size": 4}} and config.finetune == {"train": {"warmup_steps": 3}}
    assert (config.pretrain_runs, config.pretrain_run_of(4)) == (3, 1)
    for bad, match in ((dict(finetune={"seed": 1}), "finetune.seed: set by the benchmark .* use draws"),
                       (dict(finetune={"train": {"lp_stepz": 1}}), "finetune.train.lp_stepz"),
                       (dict(pretrain={"data.path": "x.h5"}), "pretrain.data.path"),
                       (dict(finetune_lrs=[1e-3], finetune={"train.lr": 1e-3}), "in one place"),
                       (dict(draws=2, pretrain_seeds=3), "pretrain_seeds"),
                       (dict(finetune_recipes={"lp": {"train": {"lr": -1}}}), "finetune_recipes.lp")):
        with pytest.raises(ValueError, match=match):
            BenchmarkConfig(data=bench_cache, out=tmp_path, **bad)
    with pytest.raises(ConfigError, match="pretrain.*stepz"):  # the pre-training table is checked against each method's config
        Benchmark(BenchmarkConfig(data=bench_cache, out=tmp_path, methods=["contrastive"], pretrain={"train.stepz": 1}),
                  build_registry(external=False))
    result = runner.invoke(app, ["--no-plugins", "benchmark", "--data", str(bench_cache), "--out", str(tmp_path / "b"),
                                 "--set", "finetune.train.bogus=1"])
    assert result.exit_code == 2 and "finetune.train.bogus" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["--no-plugins", "benchmark", "--data", str(bench_cache), "--out", str(tmp_path / "b"),
                                 "--set", "draws=0"])
    assert result.exit_code == 2 and "draws" in result.output


def test_benchmark_fine_tunes_the_way_finetune_does_by_default(bench_cache, tmp_path):
    """With no override, a cell's fine-tuning is `ssmtl finetune`'s (it once kept 300 fixed steps at 1e-3,
    the schedule that scored 0.42 on the demo); scratch and a pre-trained method get the same recipe."""
    from ssmtl.downstream.config import FinetuneTrainConfig

    bench = Benchmark(BenchmarkConfig(data=bench_cache, out=tmp_path, methods=["scratch"]), build_registry(external=False))
    ft = bench.cells.finetune_config(bench.methods[0], "finetune", 1, 2, None, bench.cells.candidates[0], tmp_path / "c")
    defaults = FinetuneTrainConfig().model_dump()
    assert {k: v for k, v in ft.train.model_dump().items() if k != "mixed_precision"} == \
        {k: v for k, v in defaults.items() if k != "mixed_precision"}
    assert (ft.seed, ft.labeled_seed, ft.init, ft.freeze_encoder) == (2, 2, "none", False)


def test_a_pool_is_counted_and_a_transductive_pretraining_refused(bench_cache, tmp_path):
    pool = _build(tmp_path / "pool.h5", 5, seed=1, test_fraction=0.0)  # other virtual patients, never labeled or tested here
    registry = build_registry(external=False)
    bench = Benchmark(BenchmarkConfig(data=[bench_cache, pool], finetune_data=bench_cache, out=tmp_path / "b",
                                      methods=["scratch", "contrastive"]), registry)
    assert bench.cohort == {"subjects": 9, "of_the_finetuning_cohort": 4, "pool": 5, "volumes": 9}
    with pytest.raises(SsmtlError, match="pre-training would read 2 test subject"):
        Benchmark(BenchmarkConfig(data=bench_cache, out=tmp_path / "c", methods=["contrastive"], pretrain={"data.split": "all"}),
                  registry)


def test_pseudonyms_are_stable_and_the_real_names_only_on_request():
    from ssmtl.data.pseudonyms import Pseudonyms, assign_pseudonyms, volume_pseudonyms

    volumes = [("p9_ES", "p9"), ("p9_ED", "p9"), ("PIDSECRET0003", "PIDSECRET0003"), ("a", "a")]

    def shareable(listing, identify=False):
        if identify:  # the real names: a table of names to themselves
            return Shareable(Pseudonyms({s: s for _, s in listing}, {v: v for v, _ in listing}, identify=True))
        table = assign_pseudonyms(subject for _, subject in listing)
        return Shareable(Pseudonyms(table, volume_pseudonyms(listing, table)))

    shared = shareable(volumes)
    # the cache's own pseudonyms: the same whatever order the cache lists its volumes in
    assert {shared.subject(s) for s in ("PIDSECRET0003", "a", "p9")} == {"subject-001", "subject-002", "subject-003"}
    assert shareable(volumes[::-1]).subject("a") == shared.subject("a")
    assert {shared.volume("p9_ED"), shared.volume("p9_ES")} == {shared.subject("p9") + "-v1", shared.subject("p9") + "-v2"}
    cell = shared.cell({"labeled_subjects": ["p9"], "validation_subjects": [], "test_subjects": ["PIDSECRET0003"],
                        "per_volume": [{"subject": "PIDSECRET0003", "volume": "PIDSECRET0003", "mean_dice": 0.5}]})
    assert "PIDSECRET" not in json.dumps(cell)
    assert shareable(volumes, identify=True).subject("PIDSECRET0003") == "PIDSECRET0003"
    with pytest.raises(SsmtlError, match="not in the fine-tuning cache"):
        shared.subject("stranger")


def test_choose_reads_validation_only():
    assert choose([0.2, 0.9, 0.9]) == 1 and choose([None]) == 0
    with pytest.raises(SsmtlError, match="no validation Dice"):
        choose([0.5, None])


def test_parse_methods():
    tasks = {"contrastive", "order", "reconstruct", "neighbor", "position"}
    task_sets = build_registry(external=False).defaults.task_sets  # the methods known by name come from the plugins
    methods = parse_methods("scratch,contrastive,multitask,dec=reconstruct+neighbor", tasks, task_sets)
    assert methods[0] == Method("scratch", ())
    assert methods[2].tasks == ("contrastive", "order", "position", "reconstruct", "neighbor")
    assert methods[3] == Method("dec", ("reconstruct", "neighbor"))
    plus = parse_methods("mt-local=multitask+local-contrastive+order", tasks | {"local-contrastive"}, task_sets)[0]
    assert plus.tasks == (*methods[2].tasks, "local-contrastive")  # a set's tasks, then the others, each once
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


def test_default_methods_are_scratch_and_the_plugins_task_sets(bench_cache, tmp_path):
    import types

    from ssmtl.api import DefaultsSpec, hookimpl
    from ssmtl.host.registry import builtin_plugins

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


def test_a_benchmark_stopped_mid_way_reports_the_draws_it_has(bench_cache, tmp_path):
    """results.json is written after every complete draw; its design names those draws, and the planned ones."""
    config = BenchmarkConfig(data=bench_cache, out=tmp_path, methods=["scratch"], labeled_volumes=[1], draws=4)
    bench, calls = faked(config, {("none", 3e-3): 0.5}, {("none", 3e-3): 0.5})
    train = bench.cells.train_fn

    def stops_in_the_third_draw(ft):
        if len([c for c in calls if c[0] == "train"]) == 2:
            raise KeyboardInterrupt
        train(ft)

    bench.cells.train_fn = stops_in_the_third_draw
    with pytest.raises(KeyboardInterrupt):
        bench.run()
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted({c["draw"] for c in results["cells"]}) == [0, 1]
    assert {k: results["design"][k] for k in ("draws", "draws_planned", "pretrain_runs", "draw_to_pretrain_run")} == {
        "draws": 2, "draws_planned": 4, "pretrain_runs": 2, "draw_to_pretrain_run": "d mod 4"}
    assert "2 draw(s) per label budget (of 4 planned: the benchmark has not finished)" in (tmp_path / "results.md").read_text()


def test_a_resumed_benchmark_stopped_early_keeps_the_table_it_had(bench_cache, tmp_path):
    """A resumed run walks its reused draws from the first; stopped there, results.json still
    holds every draw it held before (it once fell from 9 draws to 1), and a finished run writes."""
    config = BenchmarkConfig(data=bench_cache, out=tmp_path, methods=["scratch"], labeled_volumes=[1], draws=3)
    bench, _ = faked(config, {("none", 3e-3): 0.5}, {("none", 3e-3): 0.5})
    bench.run()
    assert json.loads((tmp_path / "results.json").read_text())["design"]["draws"] == 3

    more = config.model_copy(update={"draws": 4})
    bench, _ = faked(more, {("none", 3e-3): 0.5}, {("none", 3e-3): 0.5})
    cell, seen = bench.cells.cell, []

    def stops_in_the_second_reused_draw(*args):
        seen.append(args)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return cell(*args)

    bench.cells.cell = stops_in_the_second_reused_draw
    with pytest.raises(KeyboardInterrupt):
        bench.run()
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted({c["draw"] for c in results["cells"]}) == [0, 1, 2] and results["design"]["draws"] == 3

    bench, _ = faked(more, {("none", 3e-3): 0.5}, {("none", 3e-3): 0.5})
    bench.run()
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted({c["draw"] for c in results["cells"]}) == [0, 1, 2, 3] and results["design"]["draws"] == 4
    # another configuration's file is replaced as soon as a draw is complete
    other = config.model_copy(update={"draws": 2, "split_seed": 1})
    bench, _ = faked(other, {("none", 3e-3): 0.5}, {("none", 3e-3): 0.5})
    assert bench.draws_written() == 0
