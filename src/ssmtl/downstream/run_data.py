"""A fine-tuning run's data, opened again and checked to be the data the run was trained and split on.

``run.json`` records the cache's fingerprint (``data.fingerprint``: a SHA-256 over every
volume's checksums, the same for a copy of the cache anywhere) and so does ``split.json``
(``data_fingerprint``). Evaluation, and the report's pictures, score or draw the run's test
subjects from a cache; a cache rebuilt from other files or replaced (say, a phantom of
another seed under the same name) holds other images under the same subject names, and
its scores would be written to ``eval.json`` as the run's. So the cache is refused unless
its fingerprint is the recorded one, naming both and the path. A run that recorded no
fingerprint (runs older than the record) is not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import CacheSet, open_caches
from ssmtl.downstream.records import read_split_json

#: Characters of a fingerprint shown in a message (as ``ssmtl cache info`` shows them).
SHOWN = 16


def open_run_cache(run_dir: Path, run: dict[str, Any], data: Path | str | list | None = None) -> SliceCache | CacheSet:
    """The run's cache (``data`` overrides the recorded path: a copy elsewhere), checked to be the run's data.

    Raises:
        SsmtlError: the cache is missing or unreadable, or its fingerprint differs from the one
            ``run.json`` or ``split.json`` records.
    """
    run_dir = Path(run_dir)
    path = data if data is not None else run["data"]["path"]
    try:
        cache = open_caches(path)
    except InputFileError as exc:
        hint = "" if data is not None else "; pass --data with its new path if it was moved"
        raise SsmtlError(f"{exc.path}: {exc.reason}; it holds the data the run was trained on{hint}") from None
    recorded = [(run_dir / "run.json", (run.get("data") or {}).get("fingerprint"))]
    if (run_dir / "split.json").is_file():
        recorded.append((run_dir / "split.json", read_split_json(run_dir).get("data_fingerprint")))
    for record, fingerprint in recorded:
        if isinstance(fingerprint, str) and fingerprint and fingerprint != cache.fingerprint:
            raise SsmtlError(f"{cache.path}: the cache's data fingerprint {cache.fingerprint[:SHOWN]} differs from "
                             f"{fingerprint[:SHOWN]}, the one {record} records: it is not the data the run was trained "
                             "and split on (rebuilt from other files, or replaced); use the run's own cache")
    return cache
