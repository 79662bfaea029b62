"""Which mirror flips the data allows: a cache's ``flip_axes`` attribute, read once per run.

Laterality is a property of the anatomy, so the data declares it, once, when its cache is
built (the dataset config's ``flip_axes``, else the plugin's ``VolumeSource.flip_axes``),
and every random view respects it: each pre-training task's, MoCo's two views, and
fine-tuning's. ``flip_axes`` lists the in-plane axes of the cache's canonical slice
layout along which a mirrored slice is still plausible anatomy: 0 = rows (anterior ->
posterior), 1 = columns (the patient's right -> left). ``[]``: no flips (the heart is
lateralised: a mirrored heart has its left ventricle on the right, another anatomy).

A cache built before the attribute existed declares nothing: it is treated as ``[]``
and the run says so once. Several caches read as one allow the flips all of them allow.
"""

from __future__ import annotations

from typing import Any

from ssmtl.api.errors import InputFileError
from ssmtl.api.volumes import check_flip_axes

FLIP_AXES_ATTR = "flip_axes"


def cache_flip_axes(cache: Any) -> tuple[int, ...] | None:
    """The axes one :class:`~ssmtl.data.cache.SliceCache` declares; None when it declares none
    (built before the attribute existed). A malformed value is an :class:`InputFileError`."""
    raw = cache.attrs.get(FLIP_AXES_ATTR)
    if raw is None:
        return None
    try:
        return check_flip_axes(raw)
    except (TypeError, ValueError) as exc:
        raise InputFileError(cache.path, f"the cache's {FLIP_AXES_ATTR} attribute is not a list of axes ({exc})") from None


def run_flip_axes(cache: Any) -> tuple[tuple[int, ...], list[str]]:
    """``(axes, notes)`` for a run on ``cache`` (a SliceCache or a CacheSet): the axes every
    view may flip along, and the lines to print once (older caches, caches that disagree)."""
    caches = list(getattr(cache, "caches", None) or [cache])
    declared = [cache_flip_axes(c) for c in caches]
    notes: list[str] = []
    older = [str(c.path) for c, axes in zip(caches, declared) if axes is None]
    if older:
        notes.append(f"data: {', '.join(older)} was built before caches declared {FLIP_AXES_ATTR}; treated as [] "
                     "(no mirror flips); rebuild with --flip-axes to allow some")
    sets = [set(axes or ()) for axes in declared]
    allowed = tuple(sorted(set.intersection(*sets)))
    if len({tuple(sorted(s)) for s in sets}) > 1:
        each = ", ".join(f"{c.path}: {sorted(s)}" for c, s in zip(caches, sets))
        notes.append(f"data: the caches declare different {FLIP_AXES_ATTR} ({each}); views flip only along the "
                     f"axes all of them allow: {list(allowed)}")
    return allowed, notes
