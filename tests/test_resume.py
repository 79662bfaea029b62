"""Long-run safety: exact resume after kill -9, truncated checkpoints, non-finite losses, bad --out."""

from __future__ import annotations

import json
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import kill_after_checkpoint, run, ssmtl_cmd, tiny_sets
from ssmtl.host.registry import get_registry

pytestmark = pytest.mark.slow

TASKS = ["contrastive", "order", "reconstruct"]


def pretrain_args(cache: Path, out: Path, steps: int = 10) -> list[str]:
    sets = tiny_sets(TASKS) + ["train.checkpoint_every=2", "train.keep_checkpoints=3", "weighting.scheme=dwa"]
    args = ["pretrain", "--data", str(cache), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--workers", "1"]
    for t in TASKS:
        args += ["--task", t]
    for s in sets:
        args += ["--set", s]
    return args


def losses(run_dir: Path) -> dict[int, dict[str, float]]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = {name: t["loss"] for name, t in record["tasks"].items()} | {"total": record["loss"]}
    return out


@pytest.fixture(scope="module")
def uninterrupted(tiny_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    run(ssmtl_cmd() + pretrain_args(tiny_cache, out))
    return out


@pytest.mark.parametrize("kill_step", [2, 4, 6])
def test_kill_and_resume_matches_uninterrupted_run(tiny_cache, tmp_path, uninterrupted, kill_step):
    out = tmp_path / "run"
    args = pretrain_args(tiny_cache, out)
    kill_after_checkpoint(args, out, kill_step)
    run(ssmtl_cmd() + args + ["--resume"])

    expected, got = losses(uninterrupted), losses(out)
    assert sorted(got) == list(range(1, 11))  # no step lost, none repeated (counted as steps done)
    for step in range(1, 11):
        for key, value in expected[step].items():
            assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)
    a = load_file(uninterrupted / "export" / "model.safetensors")
    b = load_file(out / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    # the MoCo queue and key encoder came back too
    qa = load_file(uninterrupted / "checkpoints" / "step-00000010" / "model.safetensors")
    qb = load_file(out / "checkpoints" / "step-00000010" / "model.safetensors")
    for key in ("tasks.contrastive.queue.keys", "tasks.contrastive.queue.pointer"):
        torch.testing.assert_close(qb[key], qa[key], rtol=1e-5, atol=1e-6)
    assert any(k.startswith("tasks.contrastive.key_encoder.") for k in qb)


def test_truncated_checkpoint_falls_back_to_previous(tiny_cache, tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(tiny_cache, out, steps=6)
    run(ssmtl_cmd() + args)
    newest = out / "checkpoints" / "step-00000006" / "model.safetensors"
    blob = newest.read_bytes()
    newest.write_bytes(blob[: len(blob) // 2])
    result = run(ssmtl_cmd() + args + ["--resume"])
    assert "skipping checkpoint" in result.stderr and "step-00000006" in result.stderr
    assert "resuming from" in result.stderr and "step-00000004" in result.stderr
    assert sorted(losses(out)) == list(range(1, 7))


def _nan_plugin():
    from typing import Literal

    from ssmtl import hookimpl
    from ssmtl.api.specs import TaskSpec
    from ssmtl.api.tasks import PretextTask, TaskConfig, TaskOutput

    class NanConfig(TaskConfig):
        name: Literal["nan"] = "nan"

    class NanTask(PretextTask):
        def forward(self, ctx):
            return TaskOutput(loss=ctx.pooled("sequence").sum() * float("nan"))

    module = types.ModuleType("nan_plugin")
    module.ssmtl_register_tasks = hookimpl(lambda: [TaskSpec("nan", NanConfig, NanTask, "always NaN")])
    return module


def test_nonfinite_losses_skip_steps_then_stop(tiny_cache, tmp_path):
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.pretraining.engine import run_pretraining
    from ssmtl.api.errors import SsmtlError
    from ssmtl.host.registry import build_registry

    registry = build_registry(external=False, extra=[_nan_plugin()])
    config = resolve_pretrain_config(
        flags={"data.path": str(tiny_cache), "out": str(tmp_path / "run"), "train.steps": 10, "train.batch_size": 2},
        tasks=["order", "nan"], sets=tiny_sets(["order"]) + ["train.max_nonfinite_steps=3", "train.max_skipped_share=1"],
        registry=registry,
    )
    with pytest.raises(SsmtlError, match=r"3 consecutive steps.*nan"):
        run_pretraining(config, registry=registry, progress=False)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["skipped"] and r["nonfinite"] == ["nan"] for r in records)


def _sometimes_nan_plugin(every: int):
    """A task whose loss is NaN on every ``every``-th step (steps every-1, 2*every-1, ...)."""
    from typing import Literal

    from ssmtl import hookimpl
    from ssmtl.api.specs import TaskSpec
    from ssmtl.api.tasks import PretextTask, TaskConfig, TaskOutput

    class SometimesConfig(TaskConfig):
        name: Literal["sometimes-nan"] = "sometimes-nan"

    class SometimesNan(PretextTask):
        def forward(self, ctx):
            scale = float("nan") if ctx.step % every == every - 1 else 0.0
            return TaskOutput(loss=ctx.pooled("sequence").sum() * scale)

    module = types.ModuleType("sometimes_nan_plugin")
    module.ssmtl_register_tasks = hookimpl(lambda: [TaskSpec("sometimes-nan", SometimesConfig, SometimesNan, "NaN now and then")])
    return module


def test_a_run_with_too_many_skipped_steps_fails_and_exports_nothing(tiny_cache, tmp_path):
    """The 4th and 8th of 8 steps are NaN: 2 skips are 25 % of the run. Over the share the run stops at the
    skip that crosses it, with no export; a share that allows them finishes and exports."""
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.pretraining.engine import run_pretraining
    from ssmtl.api.errors import SsmtlError
    from ssmtl.host.registry import build_registry

    registry = build_registry(external=False, extra=[_sometimes_nan_plugin(4)])

    def config(out, share):
        return resolve_pretrain_config(
            flags={"data.path": str(tiny_cache), "out": str(tmp_path / out), "train.steps": 8, "train.batch_size": 2},
            tasks=["order", "sometimes-nan"], sets=tiny_sets(["order"]) + [f"train.max_skipped_share={share}"],
            registry=registry,
        )

    with pytest.raises(SsmtlError, match=r"stopping: 2 of the run's 8 steps were skipped .*sometimes-nan.*max_skipped_share=0.2"):
        run_pretraining(config("strict", 0.2), registry=registry, progress=False)
    records = [json.loads(l) for l in (tmp_path / "strict" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [4, 8]
    assert not (tmp_path / "strict" / "export").exists()
    run_pretraining(config("lenient", 0.25), registry=registry, progress=False)
    assert (tmp_path / "lenient" / "export" / "model.safetensors").is_file()


def test_unwritable_or_full_out_fails_before_training(tiny_cache, tmp_path, monkeypatch):
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.pretraining.engine import run_pretraining
    from ssmtl.api.errors import SsmtlError
    import ssmtl.training.rundir as rundir
    from ssmtl.host.registry import build_registry

    registry = build_registry(external=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = resolve_pretrain_config(registry=get_registry(), 
        flags={"data.path": str(tiny_cache), "out": str(blocker / "run"), "train.steps": 1},
        sets=tiny_sets(["contrastive", "order"]),
    )
    with pytest.raises(SsmtlError, match="cannot create run directory"):
        run_pretraining(config, registry, progress=False)

    full = namedtuple_usage(free=1024)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: full)
    config = config.model_copy(update={"out": tmp_path / "run"})
    with pytest.raises(SsmtlError, match="MiB free"):
        run_pretraining(config, registry, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def namedtuple_usage(free: int):
    from collections import namedtuple

    return namedtuple("usage", "total used free")(free * 10, free * 9, free)


def test_resume_refuses_to_overwrite_without_flag(tiny_cache, tmp_path):
    out = tmp_path / "run"
    run(ssmtl_cmd() + pretrain_args(tiny_cache, out, steps=2))
    before = (out / "export" / "model.safetensors").read_bytes()
    result = subprocess.run(ssmtl_cmd() + pretrain_args(tiny_cache, out, steps=2), capture_output=True, text=True)
    assert result.returncode == 2
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    assert (out / "export" / "model.safetensors").read_bytes() == before


def test_checkpoint_of_a_compiled_run_resumes_without_compile(tiny_cache, tmp_path):
    """torch.compile works in place: checkpoint and export keys are the plain module names."""
    out = tmp_path / "run"
    args = pretrain_args(tiny_cache, out, steps=4)
    compiled = run(ssmtl_cmd() + args + ["--compile"])
    if shutil.which("g++") or shutil.which("c++"):  # inductor's CPU backend needs a C++ compiler
        assert "torch.compile unavailable" not in compiled.stderr  # it really compiled
    names = set(load_file(out / "export" / "model.safetensors"))
    assert names and not any("_orig_mod" in n for n in names)
    shutil.rmtree(out / "checkpoints" / "step-00000004")  # as if it had been stopped after step 2
    result = run(ssmtl_cmd() + args + ["--resume"])  # eager (compile may change on resume), steps 2 and 3 again
    assert "resuming from" in result.stderr and "step-00000002" in result.stderr
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert set(load_file(out / "export" / "model.safetensors")) == names
