"""Where an output may go: never onto, into or around one of the command's inputs.

Every command that writes (a cache build, a training run, a prediction, an export, a
report) checks its output path against its inputs before it writes anything, and a folder
it creates for its output goes again when it fails.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ssmtl.api.datasets.files import real_path
from ssmtl.api.errors import SsmtlError


def refuse_overlap(out: Path, inputs: Iterable[tuple[str, Path | str | Sequence[Path] | None]], flag: str = "--out") -> None:
    """Refuse an output that is one of the inputs, holds one, or lies inside an input folder:
    writing there would overwrite an input (or mix the output into the inputs)."""
    target = real_path(out)  # not Path.resolve(): a symbolic link loop must not raise RuntimeError here
    flat = [(name, one) for name, path in inputs  # an input may be several paths (e.g. --data a.h5 --data b.h5)
            for one in (path if isinstance(path, (list, tuple)) else [path])]
    given = [(name, path, real_path(path)) for name, path in flat if path is not None and str(path) not in ("", "none")]
    # the closest relation first: "is the input volume" says more than "is inside the input folder"
    for relation, test in (("is", lambda source: source == target), ("contains", lambda source: target in source.parents),
                           ("is inside", lambda source: source in target.parents)):
        name, path = next(((name, path) for name, path, source in given if test(source)), (None, None))
        if name is None:
            continue
        raise SsmtlError(f"{flag} {out}: {relation} the input {name} {path}; choose another {flag} "
                         "(an output never overwrites or mixes with its inputs)")


@contextlib.contextmanager
def removed_on_failure(out: Path) -> Iterator[None]:
    """An output folder the block creates is removed again if the block fails (a folder that
    existed before is left as it is)."""
    out = Path(out)
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
