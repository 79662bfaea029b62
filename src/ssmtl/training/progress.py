"""The progress display of a training run: step, each loss, throughput and ETA.

Shown on the main process only, on stderr. In a terminal it is a live rich bar; when
stderr is not a terminal (a log file, CI, a SLURM job) it prints one plain line per
log interval instead, so the log stays readable.
"""

from __future__ import annotations

from typing import Mapping


class Progress:
    """``Progress(enabled, label, total, start, names)``; ``update`` after each logged step."""

    def __init__(self, enabled: bool, label: str, total: int, start: int, names: list[str]):
        self.enabled = enabled
        self.names = names
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        # soft_wrap: a plain progress line in a log is one line, however narrow the log's 80 columns
        self.console = Console(stderr=True, soft_wrap=True)
        self.bar = RichProgress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = self.bar.add_task(label, total=total, completed=start, info="")
        self.bar.start()
        self.interactive = self.console.is_terminal

    def update(self, done: int, last: Mapping[str, float], slices_per_s: float) -> None:
        if not self.enabled:
            return
        info = " ".join(f"{n}={last.get(n, float('nan')):.3f}" for n in self.names)
        info += f" | {slices_per_s:.0f} slices/s"
        self.bar.update(self.task, completed=done, info=info)
        if not self.interactive:
            self.console.print(f"step {done}: loss={last.get('loss', float('nan')):.4f} {info}", highlight=False)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
