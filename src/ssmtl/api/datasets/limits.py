"""A header's claimed size, checked before a reader allocates anything.

A volume file's header says how many voxels follow; a damaged or hostile header can claim
30000 x 30000 x 1000 on a 100-byte file, and a reader that believes it asks for terabytes
(``MemoryError``, or the machine swapping). :func:`check_claimed_size` compares the claim with
what the file can hold, before any voxel is read:

* an uncompressed file must be at least ``offset + voxels * bytes per voxel`` long;
* every file, compressed or not, may claim at most :func:`max_voxels` voxels:
  ``SSMTL_MAX_VOXELS`` (default 2**31, about 2.1e9: 8 GiB as float32, more than a
  1024 x 1024 x 2000 whole-body CT), the only bound a compressed file's claim can be held to
  without decompressing it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from ssmtl.api.errors import ConfigError, InputFileError

MAX_VOXELS_ENV = "SSMTL_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2**31


def max_voxels(environ: Mapping[str, str] | None = None) -> int:
    """The cap on voxels per volume: ``SSMTL_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`."""
    raw = (os.environ if environ is None else environ).get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        number = float(raw)  # "2e9" and "2000000000" alike
    except ValueError:
        number = 0.0
    value = int(number) if math.isfinite(number) and number == int(number) else 0
    if value < 1:
        raise ConfigError(f"environment variable {MAX_VOXELS_ENV}={raw!r}: expected a positive whole number of voxels, e.g. 2e9")
    return value


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"  # pragma: no cover


def check_claimed_size(path: Path | str, shape: Sequence[int], bytes_per_voxel: int, *, offset: int = 0,
                       compressed: bool = False, data_file: Path | str | None = None) -> None:
    """Raise :class:`InputFileError` naming ``path`` when its header claims more voxels than the
    file holds (uncompressed) or than :func:`max_voxels` allows (any file).

    ``data_file``: the file holding the voxels when it is not ``path`` (a MetaImage ``.mhd`` or a
    NRRD ``.nhdr`` header names one); a missing data file is refused here too, by the claim.
    """
    dims = [int(n) for n in shape]
    voxels = math.prod(dims)
    claimed = "x".join(map(str, dims))
    cap = max_voxels()
    if voxels > cap:
        raise InputFileError(path, f"the header claims {claimed} = {voxels:,} voxels, more than the limit of {cap:,} "
                             f"(raise it with {MAX_VOXELS_ENV} if the scan is real)")
    holder = Path(data_file) if data_file is not None else Path(path)
    where = f"its data file {holder.name}" if data_file is not None else "the file"
    needed = int(offset) + voxels * int(bytes_per_voxel)
    try:
        held = holder.stat().st_size
    except OSError:
        raise InputFileError(path, f"the header claims {claimed} voxels ({_size(needed)}) in {holder.name}, which "
                             "cannot be found") from None
    if compressed:
        return
    if held < needed:
        raise InputFileError(path, f"the header claims {claimed} voxels ({_size(needed)}) but {where} holds "
                             f"{_size(held)}: truncated, or not what its header says")
