"""What a file made to be shared may say about where data lives and whom it shows.

Two kinds of files leave ssmtl. **Local** files stay on the machine that holds the data and
may name patients and local paths: the cache, a run directory's records (``config.json``,
``split.json``, ``run.json``, ``eval.json``, checkpoints), ``ssmtl predict``'s outputs.
**Shareable** files are made to be sent, published or pushed: an export folder (model card,
``config.json``, weights and their metadata, a MONAI bundle), a report page, a benchmark's
results. They carry no absolute local path and no subject id (docs/robustness.md).

:func:`shareable` makes a JSON-like value shareable: an absolute path (POSIX, Windows or
``~/...``) becomes its last component, and a list of subjects or volumes becomes their
pseudonyms (given a :class:`~ssmtl.data.pseudonyms.Pseudonyms` table) or their count.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from ssmtl.data.pseudonyms import Pseudonyms

#: record keys whose lists name subjects
SUBJECT_LISTS = frozenset({"labeled_subjects", "train_subjects", "test_subjects", "val_subjects", "subjects",
                           "init_saw_test_subjects"})
#: record keys whose lists name volumes
VOLUME_LISTS = frozenset({"volumes", "train_volumes"})
#: record keys whose lists hold one record per volume, naming its ``subject`` and ``volume``
VOLUME_RECORDS = frozenset({"per_volume"})
#: record keys whose lists are keys of local files (hashes of source paths): shared as their count
COUNTED_LISTS = frozenset({"source_keys"})


def is_local_path(text: str) -> bool:
    """Whether ``text`` is an absolute local path (POSIX, Windows, or under ``~``)."""
    return PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or text.startswith("~")


def path_name(text: str) -> str:
    """An absolute path's last component (what a shareable file shows of it); other text unchanged."""
    if not is_local_path(text):
        return text
    path = PurePosixPath(text) if PurePosixPath(text).is_absolute() or text.startswith("~") else PureWindowsPath(text)
    return path.name or "."


#: an absolute path inside free text (a message): POSIX, ``~/``, or a Windows drive
_PATH_IN_TEXT = re.compile(r"(?<![\w.:/\\~])(?:~?/|[A-Za-z]:\\)[^\s'\"<>,;()]+")


def without_paths(text: str) -> str:
    """Free text (an error message shown on a page) with every absolute path replaced by its last component."""

    def name(match: re.Match) -> str:
        path = match.group(0).rstrip(".:")  # the sentence's punctuation is not the path's
        return path_name(path) + match.group(0)[len(path):]

    return _PATH_IN_TEXT.sub(name, text)


def _names(key: str, values: list[Any], names: Pseudonyms) -> list[Any]:
    if key in VOLUME_RECORDS:
        return [{**shareable({k: v for k, v in r.items() if k not in ("subject", "volume")}, names),
                 **({"subject": names.subject(r["subject"])} if "subject" in r else {}),
                 **({"volume": names.volume(r["volume"])} if "volume" in r else {})} if isinstance(r, dict) else r
                for r in values]
    show = names.volume if key in VOLUME_LISTS else names.subject
    return sorted(show(str(v)) for v in values)


def shareable(value: Any, names: Pseudonyms | None = None) -> Any:
    """``value`` without absolute local paths (each becomes its last component) or subject ids: lists
    under a subject or volume key become their pseudonyms with ``names`` (or the real names, from a
    table built with ``identify``), their count without."""
    if isinstance(value, dict):
        lists = SUBJECT_LISTS | VOLUME_LISTS | VOLUME_RECORDS
        return {k: (len(v) if k in COUNTED_LISTS and isinstance(v, list)
                    else (_names(k, v, names) if names is not None else len(v)) if k in lists and isinstance(v, list)
                    else shareable(v, names)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shareable(v, names) for v in value]
    if isinstance(value, str):
        return path_name(value)
    return value
