"""Class 1 of #15: a full disk during a cache build, a pre-training and a fine-tuning.

Each command runs as a real CLI subprocess under RLIMIT_FSIZE (SIGXFSZ ignored), so the first
write past the limit fails with EFBIG exactly as on a full disk. After each: exit 2, one
``error:`` line that says why, no traceback, no temporaries, nothing new at the output, and
on resume every file the run had is byte-identical (the last good checkpoint intact).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from robustness.harness import Case, assert_all_held, limit_file_size, run_cases, ssmtl_cli

LIMIT = "file size limit"
TINY_BUILD = ["--dataset", "phantom", "--size", "32", "--subjects", "3", "--num-slices", "8"]
# a tiny pre-training (contrastive + order, width 4); checkpoints of ~190 kB, exports of ~35 kB
TINY_PRETRAIN = ["--steps", "4", "--batch-size", "2", "--set", "model.base_channels=4", "--set", "model.depth=2",
                 "--set", "tasks.contrastive.queue_size=16", "--set", "data.num_workers=0",
                 "--set", "train.checkpoint_every=2"]


def test_a_full_disk_leaves_the_disk_as_it_was(tmp_path, ssmtl_tiny_cache, pretrained_run, finetuned_run):
    builds, runs = tmp_path / "builds", tmp_path / "runs"
    builds.mkdir()
    runs.mkdir()
    old_cache = builds / "old.h5"
    shutil.copy(ssmtl_tiny_cache, old_cache)
    pre, fine = runs / "pre-copy", runs / "ft-copy"
    shutil.copytree(pretrained_run, pre)
    shutil.copytree(finetuned_run, fine)
    # config.json is rewritten by a resumed run (it records the new --out); everything else must hold
    pre_kept = [p for p in pre.iterdir() if p.name != "config.json"]
    fine_kept = [fine / "checkpoints", fine / "model.safetensors", fine / "run.json", fine / "split.json", fine / "eval.json"]
    evaluated = runs / "eval-copy"
    shutil.copytree(finetuned_run, evaluated)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(16, 16, 6)).astype(np.float32), np.eye(4)), str(scan))
    init = ["--init", str(pretrained_run), "--labeled-volumes", "1", "--steps", "3", "--batch-size", "2"]

    cases = [
        Case("cache build, full after the first volume", ssmtl_cli("cache", "build", *TINY_BUILD, "--out", builds / "a.h5"),
             message=LIMIT, absent=[builds / "a.h5"], watch=[builds], preexec=limit_file_size(30_000)),
        Case("cache build, full at once", ssmtl_cli("cache", "build", *TINY_BUILD, "--out", builds / "b.h5"),
             message=LIMIT, absent=[builds / "b.h5"], watch=[builds], preexec=limit_file_size(2_000)),
        Case("cache build --force over a cache", ssmtl_cli("cache", "build", *TINY_BUILD, "--out", old_cache, "--force"),
             message=LIMIT, inputs=[old_cache], watch=[builds], preexec=limit_file_size(30_000)),
        Case("pretrain, first checkpoint does not fit",
             ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--out", runs / "p", *TINY_PRETRAIN),
             message=LIMIT, absent=[runs / "p"], watch=[runs], inputs=[ssmtl_tiny_cache], preexec=limit_file_size(100_000)),
        Case("pretrain --resume, checkpoint does not fit",
             ssmtl_cli("pretrain", "--config", pre / "config.json", "--out", pre, "--resume"),
             message=LIMIT, inputs=pre_kept, watch=[runs], preexec=limit_file_size(100_000)),
        Case("finetune, first checkpoint does not fit",
             ssmtl_cli("finetune", "--data", ssmtl_tiny_cache, *init, "--out", runs / "f"),
             message=LIMIT, absent=[runs / "f"], watch=[runs], inputs=[pretrained_run], preexec=limit_file_size(30_000)),
        Case("finetune --resume, checkpoint does not fit",
             ssmtl_cli("finetune", "--config", fine / "config.json", "--out", fine, "--resume"),
             message=LIMIT, inputs=fine_kept, watch=[runs], preexec=limit_file_size(30_000)),
        # what reads a finished run and writes next to it, or elsewhere
        Case("evaluate, eval.json does not fit", ssmtl_cli("evaluate", evaluated),
             message=LIMIT, inputs=[evaluated], watch=[evaluated], preexec=limit_file_size(2_000)),
        Case("report does not fit", ssmtl_cli("report", evaluated, "--out", outputs / "report.html"),
             message=LIMIT, inputs=[evaluated], absent=[outputs / "report.html"], watch=[outputs],
             preexec=limit_file_size(20_000)),
        Case("export does not fit", ssmtl_cli("export", evaluated, "--out", outputs / "hub"),
             message=LIMIT, inputs=[evaluated], absent=[outputs / "hub"], watch=[outputs], preexec=limit_file_size(20_000)),
        Case("predict does not fit", ssmtl_cli("predict", evaluated, "--input", scan, "--out", outputs / "pred"),
             message=LIMIT, inputs=[evaluated, scan], absent=[outputs / "pred"], watch=[outputs],
             preexec=limit_file_size(300)),
    ]
    assert_all_held(run_cases(cases, workers=2))
    assert sorted(p.name for p in builds.iterdir()) == ["old.h5"]  # no lock files either
    assert sorted(p.name for p in runs.iterdir()) == ["eval-copy", "ft-copy", "pre-copy"]
    assert sorted(p.name for p in outputs.iterdir()) == []  # no report, no export, no half-written predictions
    assert not (pre / ".ssmtl.lock").exists() and not (fine / ".ssmtl.lock").exists()


def test_out_of_space_is_recognised_in_every_library_s_words():
    """h5py, safetensors and torch report a full disk in their own ways; each is one clear reason."""
    import errno

    from ssmtl.api.errors import SsmtlError
    from ssmtl.storage.files import out_of_space, writing

    assert out_of_space(OSError(errno.ENOSPC, "No space left on device")) == "no space left on the device"
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded")) == "the disk quota is exceeded"
    h5 = OSError(27, "Driver write request failed (file write failed: ..., errno = 27, error message = 'File too large')")
    assert out_of_space(h5) == "the file size limit was reached"
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert out_of_space(rust) == "no space left on the device"
    torch_zip = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert "disk is full" in out_of_space(torch_zip)
    try:
        raise RuntimeError("wrapped") from OSError(errno.ENOSPC, "x")
    except RuntimeError as exc:
        assert out_of_space(exc) == "no space left on the device"
    assert out_of_space(ValueError("bad value")) is None
    assert out_of_space(OSError(errno.ENOENT, "No such file")) is None

    try:
        with writing(Path("out.h5"), "the cache"):
            raise OSError(errno.ENOSPC, "No space left on device")
    except SsmtlError as exc:
        assert str(exc).startswith("out.h5: no space left on the device while writing the cache")
    try:
        with writing(Path("out.h5"), "the cache"):
            raise KeyError("a bug keeps its traceback")
    except KeyError:
        pass
    else:
        raise AssertionError("a bug was turned into a user error")
