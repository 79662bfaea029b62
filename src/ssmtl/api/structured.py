"""Reading structured text (YAML, JSON, TOML, CSV) that a user wrote, within bounds.

Config files, ``SSMTL_*`` values, ``--set`` values, manifests and ``dataset.json`` files are
written by people and by other tools. Python's parsers trust them: a list nested 5000 deep
exhausts the recursion limit (``RecursionError``), a 5000-digit integer exceeds Python's
int-string limit (``ValueError``), a YAML "billion laughs" document of 300 bytes expands to
hundreds of millions of nodes in whatever walks it next, and YAML and JSON silently keep the
last of two equal keys. Everything here refuses such input before it costs anything, with one
:class:`~ssmtl.api.InputFileError` naming the source (a file, or ``environment variable X``):

* **size**: at most :attr:`TextLimits.max_bytes` bytes;
* **depth**: lists and tables nested at most :attr:`TextLimits.max_depth` deep, checked
  *without recursion* before a recursive parser sees the text (JSON, TOML), or while the
  parser builds the tree (YAML);
* **integers** of at most :attr:`TextLimits.max_digits` digits;
* **duplicate keys** refused in every format (TOML's own rule, applied to YAML and JSON);
* **YAML aliases** are allowed (anchors and ``<<`` merge keys are how people share settings
  between sections) but the document's *expanded* size, counting each alias as the nodes it
  stands for, is at most :attr:`TextLimits.max_nodes`, and an alias may not contain itself.
  Counting rather than refusing aliases keeps honest configs working; counting the expanded
  size (not the aliases) is what bounds the cost of every consumer that walks the result.
* **NUL characters** are refused in every key and string (no path holds one; ``os.stat``
  raises ``ValueError`` on it), and in CSV text;
* **CSV**: a NUL byte or an over-long field is one line naming the row.

Each limit is far above any real config or manifest (see :data:`CONFIG_LIMITS`,
:data:`MANIFEST_LIMITS`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ssmtl.api.datasets.files import read_regular_file
from ssmtl.api.errors import InputFileError


@dataclass(frozen=True)
class TextLimits:
    """Bounds on one document. ``max_nodes`` counts YAML nodes with every alias expanded."""

    max_bytes: int
    max_depth: int = 32
    max_digits: int = 100
    max_nodes: int = 100_000


#: configs, ``SSMTL_*`` and ``--set`` values (a real config is a few KB and 4 levels deep)
CONFIG_LIMITS = TextLimits(max_bytes=1 << 20)
#: manifests and dataset descriptions (64 MiB: about half a million rows)
MANIFEST_LIMITS = TextLimits(max_bytes=64 << 20, max_nodes=10_000_000)

_YAML_MERGE = "tag:yaml.org,2002:merge"
_YAML_INT = "tag:yaml.org,2002:int"


class _Refused(Exception):
    """A limit was hit inside a parser: the reason, without the source (added by the caller)."""


# -- size and depth, without recursion ------------------------------------------------------


def _check_size(text: str | bytes, limits: TextLimits) -> None:
    if len(text) > limits.max_bytes:
        raise _Refused(f"{len(text):,} characters, more than the limit of {limits.max_bytes:,}")


def _bracket_depth(skeleton: str, limits: TextLimits) -> None:
    """Refuse ``[``/``{`` nesting deeper than the limit; ``skeleton`` holds no strings or comments."""
    depth = 0
    for char in re.sub(r"[^\[\]{}]+", "", skeleton):
        depth += 1 if char in "[{" else -1
        if depth > limits.max_depth:
            raise _Refused(f"lists or tables nested more than {limits.max_depth} deep")


def _check_digits(skeleton: str, limits: TextLimits) -> None:
    run = re.search(r"\d[\d_]{%d,}" % limits.max_digits, skeleton)
    if run:
        raise _Refused(f"a number of {len(run.group().replace('_', ''))} digits (at most {limits.max_digits})")


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: one step per run of plain characters
_TOML_SKIP = re.compile(r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"[^"\\\n]*(?:\\.[^"\\\n]*)*"|\'[^\'\n]*\'|#[^\n]*', re.DOTALL)


# -- the parsers ----------------------------------------------------------------------------


def _json(text: str, limits: TextLimits) -> Any:
    skeleton = _JSON_STRING.sub('""', text)
    _bracket_depth(skeleton, limits)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for key, value in items:
            if key in table:
                raise _Refused(f"the key {key!r} is given twice in one object")
            table[key] = value
        return table

    def integer(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_digits:
            raise _Refused(f"a number of {len(digits.lstrip('-'))} digits (at most {limits.max_digits})")
        return int(digits)

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_int=integer)
    except json.JSONDecodeError as exc:
        raise _Refused(f"cannot parse JSON ({exc})") from None


def _toml(text: str, limits: TextLimits) -> Any:
    import tomllib

    skeleton = _TOML_SKIP.sub('""', text)
    _bracket_depth(skeleton, limits)
    _check_digits(skeleton, limits)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _Refused(f"cannot parse TOML ({exc})") from None


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    """A SafeLoader that measures every node as it is composed (depth, expanded size, digits),
    refuses an alias to a node that is still open (it would contain itself) and duplicate keys.
    Built on first use, so importing ssmtl.api does not import PyYAML."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        limits: TextLimits = CONFIG_LIMITS

        def __init__(self, stream):
            super().__init__(stream)
            self._depth = 0
            self._measured: dict[int, tuple[int, int]] = {}  # finished node -> (expanded nodes, height)
            self._aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                node = self.anchors.get(event.anchor)
                if node is not None and id(node) not in self._measured:  # its anchor is still open
                    raise _Refused(f"line {event.start_mark.line + 1}: the alias *{event.anchor} contains itself")
                self._aliases += 1
                return super().compose_node(parent, index)
            start = self.peek_event().start_mark
            opens = not self.check_event(yaml.ScalarEvent)  # a list or table: one level deeper (as JSON's brackets)
            self._depth += opens
            if self._depth > self.limits.max_depth:
                raise _Refused(f"line {start.line + 1}: lists or tables nested more than {self.limits.max_depth} deep")
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= opens
            self._measure(node, start.line + 1)
            return node

        def _measure(self, node, line: int) -> None:
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            else:
                children = []
                if node.tag == _YAML_INT and len(re.sub(r"[^0-9a-fA-F]", "", node.value)) > self.limits.max_digits:
                    raise _Refused(f"line {line}: a number of more than {self.limits.max_digits} digits")
            nodes, height = 1, (0 if isinstance(node, yaml.ScalarNode) else 1)
            for child in children:
                n, h = self._measured[id(child)]
                nodes, height = nodes + n, max(height, h + 1)
            if height > self.limits.max_depth:  # deeper than composing went: through aliases
                raise _Refused(f"line {line}: its aliases expand to lists or tables nested more than "
                               f"{self.limits.max_depth} deep")
            if nodes > self.limits.max_nodes:
                how = "its aliases expand to" if self._aliases else "it holds"
                bomb = " (an alias bomb?)" if self._aliases else ""
                raise _Refused(f"line {line}: {how} more than {self.limits.max_nodes:,} values{bomb}")
            self._measured[id(node)] = (nodes, height)

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _YAML_MERGE or not isinstance(key_node, yaml.ScalarNode):
                    continue  # a merge (<<) may be overridden by the table's own keys, as YAML defines
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(f"line {key_node.start_mark.line + 1}: the key {key!r} is given twice "
                                   f"(first on line {seen[key]})")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return BoundedLoader


def _yaml(text: str, limits: TextLimits) -> Any:
    import yaml

    loader = _yaml_loader()(text)
    loader.limits = limits
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise _Refused(f"cannot parse YAML ({' '.join(str(exc).split())})") from None
    finally:
        loader.dispose()


def _refuse_nul(data: Any) -> Any:
    """Refuse a NUL character in any key or string of a parsed document: no path or name holds one,
    and ``os.stat`` raises ``ValueError`` on it. Iterative: the tree is bounded, not its recursion."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\0" in item:
                raise _Refused(f"a NUL character in the text {item.replace(chr(0), '<NUL>')[:80]!r}")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


_PARSERS: dict[str, Callable[[str, TextLimits], Any]] = {"json": _json, "toml": _toml, "yaml": _yaml}
#: file suffix -> format
FORMATS = {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


def parse_text(text: str, fmt: str, source: str | Path, limits: TextLimits = CONFIG_LIMITS) -> Any:
    """``text`` parsed as ``fmt`` (``json``, ``toml`` or ``yaml``) within ``limits``.

    Raises:
        InputFileError: naming ``source`` (a path, or e.g. ``environment variable SSMTL_SEED``)
            when the text breaks a limit or does not parse.
    """
    try:
        _check_size(text, limits)
        return _refuse_nul(_PARSERS[fmt](text, limits))
    except _Refused as exc:
        raise InputFileError(source, str(exc)) from None
    except (RecursionError, ValueError) as exc:  # a limit this module missed: still one line
        raise InputFileError(source, f"cannot parse {fmt.upper()} ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_text(path: Path | str, limits: TextLimits = CONFIG_LIMITS) -> str:
    """A regular file's text (UTF-8, a byte-order mark dropped), at most ``limits.max_bytes`` bytes.

    Raises:
        InputFileError: not a regular file (see :func:`~ssmtl.api.read_regular_file`), too large,
            or not UTF-8.
    """
    data = read_regular_file(path, limits.max_bytes)
    try:
        return data.decode("utf-8-sig")  # -sig: spreadsheet programs write a byte-order mark
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def read_document(path: Path | str, limits: TextLimits = CONFIG_LIMITS, fmt: str | None = None) -> Any:
    """A JSON, TOML or YAML file (``fmt``, else by its suffix, see :data:`FORMATS`), parsed within ``limits``."""
    fmt = fmt or FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputFileError(path, f"unsupported format (use {', '.join(FORMATS)})")
    return parse_text(read_text(path, limits), fmt, path, limits)


def parse_value(text: str, source: str) -> Any:
    """A command-line or environment value read as YAML (``8``, ``1e-3``, ``true``, ``[1, 2]``,
    ``null``); text that is not YAML stays a string. Limits are enforced (one line naming ``source``)."""
    if text.strip() == "":
        return ""
    try:
        _check_size(text, CONFIG_LIMITS)
        return _refuse_nul(_yaml(text, CONFIG_LIMITS))
    except _Refused as exc:
        if str(exc).startswith("cannot parse YAML"):
            return text
        reason = str(exc) if "\n" in text.strip() else re.sub(r"^line 1: ", "", str(exc))
        raise InputFileError(source, reason) from None


def read_csv(text: str, source: str | Path) -> tuple[list[str] | None, list[tuple[str, dict[str, Any]]]]:
    """A CSV table: its header (None when the text is empty) and its rows as ``("line N", row)``.

    The delimiter (comma, semicolon or tab) is sniffed from the header line. A NUL byte (Python's
    csv module reads it into the field, and a path holding one makes ``os.stat`` raise), or a
    field longer than :func:`csv.field_size_limit` (131072 characters), is one line naming the row.
    """
    nul = text.find("\0")
    if nul >= 0:
        raise InputFileError(source, f"line {text.count(chr(10), 0, nul) + 1}: a NUL byte (not a text file?)")
    first = text[: text.find("\n")] if "\n" in text else text
    try:
        dialect = csv.Sniffer().sniff(first[:65536], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        rows = [(f"line {reader.line_num}", row) for row in reader]
        header = reader.fieldnames
    except csv.Error as exc:
        raise InputFileError(source, f"line {reader.line_num + 1}: cannot read CSV ({exc})") from None
    return (list(header) if header is not None else None), rows
