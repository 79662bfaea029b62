"""Predictions laid over held-out slices: the pictures of a fine-tuning run's report.

For the best, the median and the worst test volume (by mean 3D Dice in ``eval.json``) the
run's model predicts the whole volume from the cache, and one slice is shown three times:
the image, the reference labels over it, the prediction over it. The slice is the one
with the most labeled foreground, where a mistake is easiest to see.

A volume is named by its pseudonym (:mod:`ssmtl.data.pseudonyms`), in the caption and in the
title drawn into the picture (text in pixels, which no search of the page would find), or by
its real name with ``identify``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssmtl.api.errors import SsmtlError

#: (rank, label) of the volumes shown
PICKS = ("best", "median", "worst")


@dataclass
class Overlay:
    rank: str  # best, median or worst
    volume: str  # as shown: its pseudonym, or its real name with identify
    mean_dice: float | None
    slice_index: int
    png: bytes
    title: str = ""  # the text drawn above the picture


def pick_volumes(per_volume: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The best, median and worst scored volume (fewer when there are fewer than three)."""
    scored = sorted((v for v in per_volume if v.get("mean_dice") is not None and v.get("volume")),
                    key=lambda v: v["mean_dice"], reverse=True)
    if not scored:
        return []
    chosen = {"best": scored[0], "median": scored[len(scored) // 2], "worst": scored[-1]}
    seen: set[str] = set()
    picks = []
    for rank in PICKS:
        volume = chosen[rank]
        if volume["volume"] not in seen:
            seen.add(volume["volume"])
            picks.append((rank, volume))
    return picks


def _figure(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, class_names: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colors = plt.get_cmap("tab10").colors
    cmap = ListedColormap([colors[i % len(colors)] for i in range(max(len(class_names), 1))])
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=100)
    for ax, (name, overlay) in zip(axes, (("image", None), ("reference", label), ("prediction", prediction))):
        ax.imshow(image, cmap="gray", interpolation="nearest")
        if overlay is not None:
            shown = np.ma.masked_where(overlay == 0, overlay.astype(int) - 1)  # background stays clear
            ax.imshow(shown, cmap=cmap, vmin=0, vmax=max(len(class_names) - 1, 1), alpha=0.5, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [Patch(color=cmap(i), label=n) for i, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def render_overlays(run_dir: Path, evaluation: dict[str, Any], registry, identify: bool = False) -> list[Overlay]:
    """Predict and draw the picked test volumes, named by pseudonym (real names with ``identify``);
    raises :class:`SsmtlError` when the cache is unreadable."""
    from ssmtl.data.pseudonyms import Pseudonyms
    from ssmtl.downstream.model import load_finetuned
    from ssmtl.downstream.predictor import Predictor
    from ssmtl.downstream.run_data import open_run_cache

    picks = pick_volumes(evaluation.get("per_volume") or [])
    if not picks:
        return []
    import torch

    model, run = load_finetuned(Path(run_dir), registry)
    predictor = Predictor(model, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    cache = open_run_cache(Path(run_dir), run, evaluation.get("data"))  # never pictures of foreign data
    index = {v.name: v.index for v in cache.volumes}
    names = Pseudonyms.of(cache, identify)
    class_names = list(evaluation.get("class_names") or [])
    overlays = []
    for rank, scored in picks:
        if scored["volume"] not in index:
            raise SsmtlError(f"{cache.path}: has no volume {names.volume(scored['volume'])!r} of the evaluation "
                             "(evaluated on another cache?)")
        image, label = cache.read_volume(index[scored["volume"]])
        prediction = predictor.cache_grid(image)
        reference = label if label is not None else np.zeros_like(prediction)
        z = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(axis=1)))
        dice, shown = scored.get("mean_dice"), names.volume(scored["volume"])
        title = f"{rank}: {shown} (mean Dice {dice:.3f}), slice {z}" if dice is not None else f"{rank}: {shown}"
        overlays.append(Overlay(rank, shown, dice, z, _figure(image[z], reference[z], prediction[z], class_names, title),
                                title))
    return overlays
