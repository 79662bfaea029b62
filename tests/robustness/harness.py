"""The robustness suite's harness: run the real CLI in a subprocess and check the promise.

Every bad input or fault must end with:

- the expected exit code (2 for bad input);
- exactly one ``error:`` line on stderr and no traceback;
- nothing left at the output path, and no temporary names anywhere under the watched folders;
- every input byte-identical afterwards.

``Case`` runs one command and checks all four; ``run_cases`` runs many at once (the suite's
cases are independent subprocesses, so two run in parallel on 2 cores).
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

#: the prefixes of ssmtl's temporary names (atomic writes, checkpoint staging, cache building)
TEMP_MARKERS = (".tmp", "tmp-", ".partial", ".building")


def fingerprint(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path."""
    digests = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for f in files:
            digests[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def temporaries(folders: Iterable[Path]) -> list[str]:
    """Names under ``folders`` that look like an unfinished write."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if folder.exists():
            found += [str(p) for p in folder.rglob("*") if any(m in p.name for m in TEMP_MARKERS)]
    return found


def limit_file_size(max_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn``: writes past ``max_bytes`` fail with EFBIG (SIGXFSZ ignored), like a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def ssmtl_cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ssmtl", *map(str, args)]


@dataclass
class Case:
    """One hostile command and what must hold after it."""

    name: str
    argv: Sequence[str]
    exit_code: int = 2
    message: str | None = None  # a substring the error line must contain (e.g. the file or field)
    inputs: Sequence[Path] = ()  # must be byte-identical afterwards
    absent: Sequence[Path] = ()  # must not exist afterwards (the output of a refused command)
    watch: Sequence[Path] = ()  # folders that must hold no temporary names afterwards
    env: dict[str, str] = field(default_factory=dict)
    preexec: Callable[[], None] | None = None
    cwd: Path | None = None
    timeout: int = 300


@dataclass
class Outcome:
    case: Case
    returncode: int
    stdout: str
    stderr: str
    problems: list[str]


def run_case(case: Case) -> Outcome:
    before = fingerprint(case.inputs)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COLUMNS="200", **case.env)
    env.pop("SSMTL_DEBUG", None) if "SSMTL_DEBUG" not in case.env else None
    proc = subprocess.run(list(case.argv), capture_output=True, text=True, timeout=case.timeout, env=env,
                          cwd=case.cwd, preexec_fn=case.preexec)
    problems = []
    if proc.returncode != case.exit_code:
        problems.append(f"exit code {proc.returncode}, expected {case.exit_code}")
    output = proc.stdout + proc.stderr
    if "Traceback" in output:
        problems.append("a traceback was printed")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if case.exit_code == 2 and len(errors) != 1:
        problems.append(f"{len(errors)} error: lines, expected 1")
    if case.message and not any(case.message in line for line in errors):
        problems.append(f"no error line mentions {case.message!r}")
    for path in case.absent:
        if Path(path).exists():
            problems.append(f"{path} was left behind")
    left = temporaries(case.watch)
    if left:
        problems.append(f"temporary files left: {left[:5]}")
    after = fingerprint(case.inputs)
    changed = sorted(set(before) ^ set(after) | {p for p in before if before[p] != after.get(p)})
    if changed:
        problems.append(f"inputs changed: {changed[:5]}")
    return Outcome(case, proc.returncode, proc.stdout, proc.stderr, problems)


def run_cases(cases: Sequence[Case], workers: int = 2) -> list[Outcome]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_case, cases))


def assert_all_held(outcomes: Sequence[Outcome]) -> None:
    failed = [o for o in outcomes if o.problems]
    report = "\n\n".join(f"[{o.case.name}] {' '.join(map(str, o.case.argv[3:]))}\n  " + "; ".join(o.problems)
                         + f"\n  stderr: {o.stderr.strip()[-800:]}" for o in failed)
    assert not failed, f"{len(failed)} of {len(outcomes)} cases broke the promise:\n{report}"
