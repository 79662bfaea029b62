"""Class 4 of #15: outputs that overlap inputs, run folders of another kind, two processes on
one output, and failed validations that used to leave a folder refusing the corrected re-run."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli
from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import OutputInUse, exclusive_lock
from ssmtl.storage.outputs import refuse_overlap
from ssmtl.training.rundir import LOCK, MARKER, prepare_run_dir, run_directory, run_kind

TINY = ["--steps", "2", "--batch-size", "2", "--set", "model.base_channels=4", "--set", "model.depth=2",
        "--set", "tasks.contrastive.queue_size=16", "--set", "data.num_workers=0"]


@contextlib.contextmanager
def _held_by_another_process(lock: Path) -> Iterator[int]:
    """A helper process holds the lock on ``lock`` for the block; yields its PID."""
    code = ("import sys; from ssmtl.storage.files import exclusive_lock\n"
            f"with exclusive_lock({str(lock)!r}, 'x'):\n    print('locked', flush=True)\n    sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def _nifti_folder(root: Path) -> Path:
    import nibabel as nib

    images = root / "imgs"
    images.mkdir(parents=True)
    for i in range(2):
        data = np.random.default_rng(i).normal(size=(12, 12, 6)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(images / f"vol{i}.nii.gz"))
    return images


def test_outputs_never_overwrite_inputs_or_runs_of_another_kind(tmp_path, ssmtl_tiny_cache, pretrained_run, finetuned_run):
    images = _nifti_folder(tmp_path / "data")
    manifest = tmp_path / "data" / "list.csv"
    manifest.write_text("image\n" + "\n".join(str(p) for p in sorted(images.iterdir())) + "\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    holder = runs / "with-cache"
    holder.mkdir()
    cache_inside = holder / "data.h5"
    shutil.copy(ssmtl_tiny_cache, cache_inside)
    ft_copy, pre_copy, busy = runs / "ft", runs / "pre", runs / "busy"
    shutil.copytree(finetuned_run, ft_copy)
    shutil.copytree(pretrained_run, pre_copy)
    shutil.copytree(pretrained_run, busy)
    empty = runs / "empty"
    empty.mkdir()
    build = ["cache", "build", "--dataset", "nifti", "--images", images, "--size", "16"]
    data = ["--data", ssmtl_tiny_cache]
    finetune = ["finetune", *data, "--init", pretrained_run, "--labeled-volumes", "1", "--steps", "2", "--batch-size", "2"]

    cases = [
        Case("cache over one of its volumes", ssmtl_cli(*build, "--out", images / "vol0.nii.gz", "--force"),
             message="is the input", inputs=[images], watch=[images]),
        Case("cache inside the images folder", ssmtl_cli(*build, "--out", images / "c.h5"),
             message="is inside the input --images", inputs=[images], absent=[images / "c.h5"], watch=[images]),
        Case("cache over its manifest", ssmtl_cli("cache", "build", "--dataset", "manifest", "--path", manifest,
                                                  "--size", "16", "--out", manifest, "--force"),
             message="is the input --path", inputs=[manifest, images]),
        Case("pretrain --out is the cache", ssmtl_cli("pretrain", *data, "--out", ssmtl_tiny_cache, *TINY),
             message=str(ssmtl_tiny_cache), inputs=[ssmtl_tiny_cache]),
        Case("pretrain --out holds the cache", ssmtl_cli("pretrain", "--data", cache_inside, "--out", holder, "--resume", *TINY),
             message="contains the input --data", inputs=[holder]),
        Case("finetune --out is the --init run", ssmtl_cli(*finetune, "--out", pretrained_run, "--resume"),
             message="is the input --init", inputs=[pretrained_run]),
        Case("finetune --out inside the --init run", ssmtl_cli(*finetune, "--out", pretrained_run / "ft"),
             message="is inside the input --init", inputs=[pretrained_run], absent=[pretrained_run / "ft"]),
        Case("pretrain --resume on a fine-tuning run", ssmtl_cli("pretrain", *data, "--out", ft_copy, "--resume", *TINY),
             message="is a fine-tuning run; pretrain needs an empty folder", inputs=[ft_copy]),
        Case("finetune --resume on a pre-training run", ssmtl_cli(*finetune, "--out", pre_copy, "--resume"),
             message="is a pre-training run; finetune needs", inputs=[pre_copy]),
        Case("validation fails after the checks that used to write config.json",
             ssmtl_cli("pretrain", *data, "--out", runs / "new", *TINY, "--set", "data.stride=20"),
             message="data.stride", absent=[runs / "new"], watch=[runs]),
        Case("the same in an empty folder the user made",
             ssmtl_cli("pretrain", *data, "--out", empty, *TINY, "--set", "data.stride=20"),
             message="data.stride", watch=[runs]),
    ]
    with _held_by_another_process(busy / LOCK) as holder:
        cases.append(Case("a second run on a busy folder", ssmtl_cli("pretrain", "--config", busy / "config.json",
                                                                      "--out", busy, "--resume"),
                          message=f"is in use by PID {holder}", inputs=[busy]))
        assert_all_held(run_cases(cases, workers=2))
    assert list(empty.iterdir()) == []  # the folder stays, empty: the corrected run is not refused
    assert sorted(p.name for p in runs.iterdir()) == ["busy", "empty", "ft", "pre", "with-cache"]


def test_a_cache_being_built_is_locked(tmp_path):
    out = tmp_path / "c.h5"
    with _held_by_another_process(tmp_path / ".c.h5.ssmtl-lock") as holder:
        [outcome] = run_cases([Case("second build", ssmtl_cli("cache", "build", "--dataset", "phantom", "--size", "16",
                                                                "--subjects", "2", "--num-slices", "4", "--out", out),
                                     message=f"{out} is in use by PID {holder}", absent=[out], watch=[tmp_path])])
        assert_all_held([outcome])
        assert sorted(p.name for p in tmp_path.iterdir()) == [".c.h5.ssmtl-lock"]  # ours: the refused build left nothing
    assert list(tmp_path.iterdir()) == []


def test_lock_marker_and_overlap_units(tmp_path):
    lock = tmp_path / "x.lock"
    with _held_by_another_process(lock) as holder:
        assert lock.read_text() == str(holder)
        with pytest.raises(OutputInUse, match=f"x is in use by PID {holder};"):
            with exclusive_lock(lock, tmp_path / "x"):
                pass
    assert not lock.exists()  # removed when released
    with exclusive_lock(lock, tmp_path / "x"):  # then free for the next process
        with pytest.raises(OutputInUse, match="this process"):  # and one process cannot take it twice
            with exclusive_lock(lock, tmp_path / "x"):
                pass
    with exclusive_lock(lock, tmp_path / "x"):  # and can be taken again
        pass

    run = tmp_path / "run"
    with run_directory(run, "the test run"):
        prepare_run_dir(run, resume=False, kind="finetune")
        assert (run / LOCK).exists() and run_kind(run) == "finetune"
    assert not (run / LOCK).exists() and (run / MARKER).exists()
    with pytest.raises(SsmtlError, match="is a fine-tuning run; pretrain needs"):
        prepare_run_dir(run, resume=True, kind="pretrain")
    (run / MARKER).write_text('{"kind": "pizza"}')
    with pytest.raises(SsmtlError, match="not an ssmtl run marker"):
        run_kind(run)

    # a failed run removes the folder it created, unless it holds a checkpoint to resume from
    for keep in (False, True):
        out = tmp_path / f"failed-{keep}"
        with pytest.raises(RuntimeError):
            with run_directory(out, "the test run"):
                prepare_run_dir(out, resume=False, kind="pretrain")
                if keep:
                    (out / "checkpoints" / "step-00000002").mkdir(parents=True)
                raise RuntimeError("boom")
        assert out.exists() == keep

    with pytest.raises(SsmtlError, match="is the input --data"):
        refuse_overlap(tmp_path / "a.h5", [("--data", tmp_path / "a.h5")])
    refuse_overlap(tmp_path / "b", [("--data", tmp_path / "bb.h5"), ("--init", None)])  # siblings are fine
