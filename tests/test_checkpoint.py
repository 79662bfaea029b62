"""Atomic, verifiable checkpoints: finalize, verify, fall back, prune."""

from __future__ import annotations

import json
import os

import pytest

from ssmtl.training.checkpointing import (
    MANIFEST,
    checkpoint_dir,
    finalize,
    latest_valid,
    list_checkpoints,
    prune,
    temporary_dir,
    verify,
)


def save(root, step: int, files: dict[str, bytes] | None = None, **extra_state):
    """What the engine does: write into the temporary dir, then finalize."""
    tmp = temporary_dir(root, step)
    tmp.mkdir(parents=True)
    for name, data in (files or {"model.safetensors": os.urandom(256) + bytes([step % 256]), "optimizer.bin": b"opt" * 50}).items():
        (tmp / name).write_bytes(data)
    final = checkpoint_dir(root, step)
    finalize(tmp, final, {"step": step, **extra_state})
    return final


def test_names():
    assert checkpoint_dir("/r", 12).name == "step-00000012"
    assert temporary_dir("/r", 12).name == ".tmp-step-00000012"


def test_finalize_publishes_and_records_checksums(tmp_path):
    final = save(tmp_path, 5, {"a.bin": b"hello", "b.bin": b""}, epoch=2)
    assert final.is_dir() and not temporary_dir(tmp_path, 5).exists()
    meta = json.loads((final / MANIFEST).read_text())
    assert meta["state"] == {"step": 5, "epoch": 2}
    assert meta["files"]["a.bin"] == {
        "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",  # sha256(b"hello")
        "bytes": 5,
    }
    assert meta["files"]["b.bin"]["bytes"] == 0
    info = verify(final)
    assert info.step == 5 and info.state == {"step": 5, "epoch": 2} and info.path == final


def test_finalize_replaces_an_existing_checkpoint_of_the_same_step(tmp_path):
    save(tmp_path, 3, {"a.bin": b"old", "stale.bin": b"x"})
    final = save(tmp_path, 3, {"a.bin": b"new"})
    assert (final / "a.bin").read_bytes() == b"new"
    assert not (final / "stale.bin").exists()
    verify(final)


def test_truncated_file_fails_verify(tmp_path):
    final = save(tmp_path, 1)
    path = final / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        verify(final)


def test_modified_file_of_same_size_fails_verify(tmp_path):
    final = save(tmp_path, 1, {"a.bin": b"abcdef"})
    (final / "a.bin").write_bytes(b"abcdeX")
    with pytest.raises(ValueError, match="a.bin"):
        verify(final)


def test_missing_file_and_manifest_fail_verify(tmp_path):
    final = save(tmp_path, 1, {"a.bin": b"1", "b.bin": b"2"})
    (final / "b.bin").unlink()
    with pytest.raises(ValueError, match="missing file b.bin"):
        verify(final)
    (final / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        verify(final)
    (final / MANIFEST).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        verify(final)


def test_latest_valid_falls_back_and_warns(tmp_path):
    save(tmp_path, 100)
    save(tmp_path, 200)
    newest = save(tmp_path, 300)
    (newest / "optimizer.bin").write_bytes(b"trunc")
    warnings: list[str] = []
    info = latest_valid(tmp_path, warn=warnings.append)
    assert info is not None and info.step == 200 and info.path == checkpoint_dir(tmp_path, 200)
    assert len(warnings) == 1
    assert "step-00000300" in warnings[0] and "optimizer.bin" in warnings[0]


def test_latest_valid_ignores_temporaries_and_handles_no_valid(tmp_path):
    assert latest_valid(tmp_path / "nothing") is None
    save(tmp_path, 10)
    partial = temporary_dir(tmp_path, 20)  # a crash before finalize
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert latest_valid(tmp_path).step == 10
    (checkpoint_dir(tmp_path, 10) / MANIFEST).unlink()
    warnings: list[str] = []
    assert latest_valid(tmp_path, warn=warnings.append) is None
    assert len(warnings) == 1
    assert latest_valid(tmp_path) is None  # warn is optional


def test_steps_sort_numerically(tmp_path):
    for step in [9, 10, 100, 99]:
        save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000100", "step-00000099", "step-00000010", "step-00000009"
    ]
    assert latest_valid(tmp_path).step == 100


def test_prune_keeps_newest(tmp_path):
    for step in [5, 10, 15, 20, 25]:
        save(tmp_path, step)
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # unrelated files stay
    temporary_dir(tmp_path, 30).mkdir()
    prune(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000025", "step-00000020"]
    assert not temporary_dir(tmp_path, 30).exists()
    assert (tmp_path / "metrics.jsonl").exists()
    prune(tmp_path, keep=5)
    assert len(list_checkpoints(tmp_path)) == 2
    prune(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000025"]
