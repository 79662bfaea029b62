"""The snippets of docs/weights.md run as written, against tiny real runs.

A snippet is the Python block after a ``<!-- snippet: NAME -->`` marker. The page's
``ssmtl`` commands before it are run too (through the CLI, in-process), in a folder
where ``runs/pre`` and ``runs/monai`` are finished tiny runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "weights.md"


def snippets(text: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- snippet: ([\w-]+) -->\s*```python\n(.*?)```", text, flags=re.DOTALL))


def commands_before(text: str, name: str) -> list[list[str]]:
    """The ``ssmtl export`` commands of the bash blocks between the previous snippet and this one."""
    section = text[: text.index(f"<!-- snippet: {name} -->")].rsplit("<!-- snippet:", 1)[-1]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("ssmtl export ")]


@pytest.fixture
def runs_folder(tmp_path, monkeypatch, pretrained_run, monai_run) -> Path:
    shutil.copytree(pretrained_run, tmp_path / "runs" / "pre")
    shutil.copytree(monai_run, tmp_path / "runs" / "monai")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_page_has_both_snippets():
    assert set(snippets(PAGE.read_text())) == {"encoder-in-plain-torch", "monai-basicunet"}
    assert all(len(code.strip().splitlines()) <= 6 for code in snippets(PAGE.read_text()).values())


def test_the_encoder_loads_in_plain_torch(runs_folder, ssmtl_cli):
    text = PAGE.read_text()
    commands = commands_before(text, "encoder-in-plain-torch")
    assert commands == [["export", "runs/pre", "--format", "torchscript", "--part", "encoder"]]
    for args in commands:
        assert ssmtl_cli(*args).exit_code == 0
    scope: dict = {}
    exec(snippets(text)["encoder-in-plain-torch"], scope)
    import ssmtl

    with torch.no_grad():
        expected = ssmtl.load_network("runs/pre").encoder(torch.zeros(1, 1, 64, 64))
    assert [f.shape for f in scope["features"]] == [f.shape for f in expected] == [(1, 4, 64, 64), (1, 8, 32, 32), (1, 16, 16, 16)]
    for got, want in zip(scope["features"], expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_monai_run_loads_into_basicunet(runs_folder):
    from monai.networks.nets import BasicUNet

    scope: dict = {}
    exec(snippets(PAGE.read_text())["monai-basicunet"], scope)
    net = scope["net"]
    assert type(net) is BasicUNet
    saved = load_file("runs/monai/export/model.safetensors")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items()) and len(saved) == len(net.state_dict())
