"""Progress of a tune on the terminal (rich), or nothing when asked to be quiet."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kt.autotune.runners import Result


class TuneProgress:
    def __init__(self, enabled: bool, measures_time: bool, console: Console | None = None):
        self.enabled, self.measures_time = enabled, measures_time
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.counts: Counter = Counter()
        self.best_ms: float | None = None
        self.progress: Progress | None = None

    def start(self, total: int, done: int, label: str, summary: str = "") -> None:
        if not self.enabled:
            return
        if summary:
            self.console.print(summary, highlight=False, markup=False)
        if done:
            self.console.print(f"resuming: {done} of {total} configs are already in the database")
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, completed=done, status="")

    def advance(self, result: Result) -> None:
        self.counts[result.status] += 1
        runtime = result.values.get("runtime_ms")
        if result.status == "ok" and runtime is not None:
            self.best_ms = runtime if self.best_ms is None else min(self.best_ms, runtime)
        if self.progress is None:
            return
        parts = [f"{n} {s}" for s, n in sorted(self.counts.items())]
        if self.best_ms is not None:
            parts.append(f"best {self.best_ms:.4f} ms")
        self.progress.update(self.task, advance=1, status=" · ".join(parts))

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
