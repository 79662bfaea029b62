"""The quickstart works as written, in an empty folder.

Every ``ssmtl`` command of docs/quickstart.md's step-by-step part runs in order, in a
fresh directory, with only its sizes made tiny (fewer, smaller subjects, fewer steps,
narrower networks). Each size rewrite must find its flag, so the page and this test cannot
drift apart unnoticed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "quickstart.md"

#: (pattern, replacement): the sizes of the page, made tiny
TINY = [
    (r"--subjects \d+", "--subjects 4"),
    (r"--size \d+", "--size 32"),
    (r"--steps \d+", "--steps 2"),
    # the fine-tuning's early stop waits 200 steps for a better validation Dice; its own tests
    # (test_finetune_validation.py) cover it, here it would only cost time
    (r"--steps auto", "--steps 3"),
    (r"--batch-size \d+", "--batch-size 2"),
    (r"model\.base_channels=\d+", "model.base_channels=4"),
    (r"tasks\.contrastive\.queue_size=\d+", "tasks.contrastive.queue_size=16"),
]


def quickstart_commands(text: str) -> list[str]:
    """The ``ssmtl`` lines of the bash blocks after "The same, step by step", continuations joined."""
    part = text.split("## The same, step by step", 1)[1].split("## Next", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", part, flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.startswith(("ssmtl ", "python examples/"))]


@pytest.mark.slow
def test_the_quickstart_runs_as_written_in_an_empty_folder(tmp_path, monkeypatch, ssmtl_cli):
    commands = quickstart_commands(PAGE.read_text())
    assert [c.split()[1] for c in commands] == ["--help", "cache", "cache", "pretrain", "finetune", "finetune",
                                                "evaluate", "evaluate", "compare", "examples/phantom_scans.py",
                                                "predict", "report", "export"]
    used = set()
    tiny = []
    for command in commands:
        for pattern, replacement in TINY:
            command, found = re.subn(pattern, replacement, command)
            used |= {pattern} if found else set()
        tiny.append(command)
    assert used == {pattern for pattern, _ in TINY}, "a size the test rewrites is no longer on the page"
    monkeypatch.chdir(tmp_path)  # empty: the first command must create demo/ itself
    assert list(tmp_path.iterdir()) == []
    for command in tiny:
        if command.startswith("python "):  # a helper script of the repository
            args = shlex.split(command)
            done = subprocess.run([sys.executable, str(ROOT / args[1]), *args[2:]], capture_output=True, text=True)
            assert done.returncode == 0, f"$ {command}\n{done.stdout}\n{done.stderr}"
            continue
        result = ssmtl_cli(*shlex.split(command)[1:])
        assert result.exit_code == 0, f"$ {command}\n{result.stdout}\n{result.stderr}"
    for produced in ("demo/phantom-ct.h5", "demo/pre/export/model.safetensors", "demo/pre/curves.png",
                     "demo/ft-pretrained/eval.json", "demo/ft-scratch/eval.json", "demo/ft-pretrained/report.html",
                     "demo/ft-pretrained/hub/finetuned-torchscript/model.pt", "demo/pred/phantom_ct_000.nii.gz",
                     "demo/pred/predictions.json"):
        assert (tmp_path / produced).is_file(), produced
