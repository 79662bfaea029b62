"""Installing plugin packages into the test environment, and running ssmtl as a user would.

Plugins are found through entry points, which a Python process reads from the
installed distributions; a package installed during the session is therefore only
visible to *new* processes. Everything that has to see a real installation runs
``ssmtl`` (or ``accelerate launch``) in a subprocess with :func:`clean_env`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: ssmtl depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ssmtl-rotation"

# Small enough for 2 CPU cores; every run uses the same tiny network.
TINY_RUN = [
    "--steps", "2", "--batch-size", "2",
    "--set", "model.base_channels=4", "--set", "model.depth=2",
    "--set", "tasks.contrastive.queue_size=16", "--set", "train.log_every=1",
]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any ``SSMTL_*`` variable, plus ``extra``.

    In-process CLI tests run ``ssmtl --no-plugins``, which sets ``SSMTL_NO_PLUGINS``
    in this process's environment; a child inheriting it would silently skip every
    external plugin, so no ``SSMTL_*`` value is passed on unless asked for.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSMTL_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COLUMNS="200")
    env.update(extra)
    return env


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}: {' '.join(map(str, cmd))}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
        )
    return result


def ssmtl(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m ssmtl ARGS`` in a fresh process (fresh entry-point discovery)."""
    return run([sys.executable, "-m", "ssmtl", *args], **kwargs)


def plugins_json(**kwargs) -> dict:
    return json.loads(ssmtl("plugins", "--json", **kwargs).stdout)


def free_port() -> int:
    """A free TCP port, so concurrent test sessions do not collide on Accelerate's default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_ssmtl(num_processes: int, *args, **kwargs) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu`` on CPU: a gloo process group of ``num_processes`` ranks."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "ssmtl", *args,
    ]
    return run(cmd, **kwargs)


def pip(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], env=clean_env(), timeout=600)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def ensure_build_backend() -> None:
    """``--no-build-isolation`` builds with this environment's setuptools; install one that can.

    Python 3.12+ venvs come without setuptools. setuptools >= 70.1 builds wheels
    itself, so ``wheel`` is only needed next to an older setuptools.
    """
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        version = None
    if version is None or _version_tuple(version) < (70, 1):
        pip("install", "--quiet", "setuptools>=70.1")


def declared(project: Path) -> tuple[str, str, dict[str, str]]:
    """(distribution name, version, ssmtl entry points) declared in a project's pyproject."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    return meta["name"], meta["version"], dict(meta.get("entry-points", {}).get("ssmtl", {}))


def is_installed_editable(project: Path) -> bool:
    """Installed in editable mode from ``project``, with the version and entry points it declares now."""
    name, version, entry_points = declared(project)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("url") != project.resolve().as_uri() or not direct.get("dir_info", {}).get("editable"):
        return False
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == "ssmtl"}
    return dist.version == version and installed == entry_points


def install_editable(project: Path) -> None:
    """``pip install --no-deps --no-build-isolation -e PROJECT``, skipped when already current."""
    if is_installed_editable(project):
        return
    ensure_build_backend()
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(project))


def uninstall(distribution: str) -> None:
    pip("uninstall", "--quiet", "--yes", distribution)
