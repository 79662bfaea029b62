"""``curves.png``: what a run's ``metrics.jsonl`` says, as a picture a person can look at.

Panels: the loss of every task (pre-training) or of the head (fine-tuning) with the
weighted total, the learning rate, and the validation Dice when the run recorded any
(records with a ``val_dice`` value, written by fine-tuning that validates). Every run
writes it at its end (atomically, like every file ssmtl writes); ``ssmtl report``
draws it again from ``metrics.jsonl``, so it can always be regenerated.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ssmtl.storage.files import atomic_write
from ssmtl.training.rundir import METRICS

CURVES_FILE = "curves.png"


@dataclass
class Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.steps.append(step)
            self.values.append(float(value))


@dataclass
class Curves:
    """The series of one run: per-component loss, total loss, learning rate, validation Dice."""

    losses: dict[str, Series] = field(default_factory=dict)
    total: Series = field(default_factory=Series)
    lr: Series = field(default_factory=Series)
    val_dice: Series = field(default_factory=Series)

    @property
    def empty(self) -> bool:
        return not self.total.steps and not self.val_dice.steps


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a line cut by a kill is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def collect(records: Iterable[dict[str, Any]]) -> Curves:
    curves = Curves()
    for record in records:
        step = record["step"]
        if "val_dice" in record:
            curves.val_dice.add(step, record["val_dice"])
        if record.get("skipped") or "loss" not in record:
            continue
        curves.total.add(step, record["loss"])
        curves.lr.add(step, record.get("lr"))
        for name, parts in (record.get("tasks") or {}).items():
            curves.losses.setdefault(name, Series()).add(step, (parts or {}).get("loss"))
    return curves


def render(curves: Curves, title: str = "") -> bytes:
    """The curves as PNG bytes (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if curves.val_dice.steps else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.4), dpi=110)
    loss_ax, lr_ax = axes[0], axes[1]
    for name, series in curves.losses.items():
        loss_ax.plot(series.steps, series.values, label=name, linewidth=1.2)
    if len(curves.losses) > 1 or not curves.losses:
        loss_ax.plot(curves.total.steps, curves.total.values, label="total (weighted)", color="black", linewidth=1.6)
    values = [v for s in curves.losses.values() for v in s.values] + curves.total.values
    if values and min(values) > 0 and max(values) / min(values) > 20:
        loss_ax.set_yscale("log")  # task losses differ by orders of magnitude
    loss_ax.set_title("loss")
    loss_ax.legend(fontsize=7)
    lr_ax.plot(curves.lr.steps, curves.lr.values, color="tab:gray")
    lr_ax.set_title("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if panels == 3:
        dice_ax = axes[2]
        dice_ax.plot(curves.val_dice.steps, curves.val_dice.values, marker="o", color="tab:green")
        dice_ax.set_ylim(0, 1)
        dice_ax.set_title("validation Dice")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_curves(run_dir: Path, title: str | None = None) -> Path | None:
    """Draw ``run_dir/curves.png`` from ``run_dir/metrics.jsonl``; None when there is nothing to draw."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS
    if not metrics.is_file():
        return None
    curves = collect(read_records(metrics))
    if curves.empty:
        return None
    png = render(curves, run_dir.name if title is None else title)
    return atomic_write(run_dir / CURVES_FILE, lambda tmp: tmp.write_bytes(png))
