"""The Dockerfile that runs ``make demo``, checked without a Docker daemon (CI has none): its
instructions are parsed as Docker reads them (comments, line continuations, exec-form JSON)
and checked against the Makefile it relies on."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the instructions a Dockerfile may hold (docs.docker.com/reference/dockerfile)
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
                "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comment lines dropped, backslash continuations joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def _commands(arguments: str) -> list[list[str]]:
    """A shell-form RUN as its commands (split at &&), each as words."""
    return [shlex.split(part) for part in re.split(r"\s*&&\s*", arguments) if part.strip()]


def test_the_dockerfile_parses_and_pins_the_cpu_torch_the_makefile_pins():
    instructions = parse_dockerfile((ROOT / "Dockerfile").read_text())
    keywords = [k for k, _ in instructions]
    assert set(keywords) <= INSTRUCTIONS, f"unknown instructions: {set(keywords) - INSTRUCTIONS}"
    assert keywords[0] == "FROM" and re.fullmatch(r"python:3\.(1[0-9])(-slim)?", instructions[0][1])
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^TORCH\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert pinned == "torch==2.13.0"
    runs = [command for k, arguments in instructions if k == "RUN" for command in _commands(arguments)]
    torch_installs = [c for c in runs if "install" in c and any(w.startswith("torch") for w in c)]
    assert len(torch_installs) == 1, "torch is installed once, before the project"
    [install] = torch_installs
    assert pinned in install and "https://download.pytorch.org/whl/cpu" in install
    assert not any(w.startswith(("torchvision", "timm")) for c in runs for w in c), "never torchvision or timm"


def test_the_image_installs_the_project_with_the_makefile_and_runs_make_demo():
    instructions = parse_dockerfile((ROOT / "Dockerfile").read_text())
    keywords = [k for k, _ in instructions]
    copies = [i for i, (k, arguments) in enumerate(instructions) if k == "COPY" and arguments.split()[-2:] == [".", "."]]
    assert copies, "the project is copied into the image"
    makes = [i for i, (k, arguments) in enumerate(instructions) if k == "RUN" and ["make", "venv"] in _commands(arguments)]
    assert makes and makes[0] > copies[0], "the Makefile installs the project, after the copy"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^venv:", makefile, re.M) and re.search(r"^demo:", makefile, re.M)
    assert 'pip install --quiet -e ".[test]"' in makefile  # what `make venv` installs: the project itself
    cmd = next(arguments for k, arguments in reversed(instructions) if k == "CMD")
    assert json.loads(cmd) == ["make", "demo"] and "ENTRYPOINT" not in keywords
    user = [arguments for k, arguments in instructions if k == "USER"]
    assert user and user[-1] != "root", "the demo does not run as root"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "demo", "*.h5"} <= set(ignored), "the host's environment and outputs stay out of the image"


def test_the_parser_reads_what_docker_reads():
    text = "# a comment\nFROM python:3.11-slim\nRUN a \\\n    # inside\n    && b\nCMD [\"make\", \"demo\"]\n"
    assert parse_dockerfile(text) == [("FROM", "python:3.11-slim"), ("RUN", "a && b"), ("CMD", '["make", "demo"]')]
    assert _commands("pip install x==1 && make venv") == [["pip", "install", "x==1"], ["make", "venv"]]
