"""Progress of a tune on the terminal (rich), or nothing when asked to be quiet."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import Counter

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

from kt.autotune.runners import Result
from kt.errors import option_word

# columns a bar's row may take when stderr is a file or a pipe: wide enough never to cut it
PIPED_WIDTH = 1000
# off a terminal rich draws a bar only when it stops, so a tune's bar is written as a line this often instead
LOG_EVERY_S = 30.0


def _console() -> Console:
    """stderr as wide as the terminal, or, written to a log (piped, no COLUMNS set), as wide as each row needs:
    rich would otherwise fit a bar's row to 80 columns, cutting its description and dropping its status."""
    piped = (
        not (sys.stderr is not None and sys.stderr.isatty()) and "COLUMNS" not in os.environ
    )  # None: closed
    # emoji off: a path holding ':b:' printed as an emoji; NO_COLOR (no-color.org): no escape codes at all, as
    # the CLI's consoles (rich drops only the colours, and the bars' descriptions were printed bold)
    plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
    return Console(stderr=True, soft_wrap=True, emoji=False, width=PIPED_WIDTH if piped else None, **plain)


def _tune_bars(console: Console) -> Progress:
    """A tune's (or a board's) bar row: where the row is narrower than it, the description and then the status
    give way, cut with an ellipsis, never the count or the time (rich squeezed those first: at 80 columns
    `150/1000` read `1…`, and a dry run's long label left no count at all)."""
    return Progress(
        TextColumn(
            "[bold]{task.description}",
            table_column=Column(no_wrap=True, overflow="ellipsis", max_width=max(24, console.width // 3)),
        ),
        BarColumn(bar_width=None, table_column=Column(ratio=1)),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[status]}", table_column=Column(ratio=2, no_wrap=True, overflow="ellipsis")),
        # on a terminal the row fills its width, the bar and the status sharing what the rest leave; written
        # to a log (PIPED_WIDTH) it is as wide as it needs, not padded to a thousand columns
        expand=console.width < PIPED_WIDTH,
        console=console,
        transient=False,
    )


class TuneProgress:
    """One tune's bar (candidates done of its budget, their statuses, the best time so far) and its lines. On a
    TuneBoard (several ops tuned at once) the bar is the op's row of the board and each line names the op."""

    def __init__(
        self,
        enabled: bool,
        measures_time: bool,
        console: Console | None = None,
        board: TuneBoard | None = None,
        name: str = "",
    ):
        self.enabled, self.measures_time = enabled, measures_time
        self.board, self.name = board, name
        self.console = board.console if board is not None else console or _console()
        self.counts: Counter = Counter()
        self.best_ms: float | None = None
        self.progress: Progress | None = None
        self.baseline_result: Result | None = None
        self.logged = time.monotonic()

    def start(self, total: int, done: int, label: str, summary: str = "") -> None:
        if not self.enabled:
            return
        if summary:
            self.note(summary)
        if done:
            self.note(
                f"resuming: {done} of {total} configs are already in the database (they count against the "
                f"{option_word('budget')}, whichever strategy checked them)"
            )
        if self.board is not None:
            self.progress = self.board.progress
            self.task = self.board.add(self.name, label, total, done)
            return
        self.progress = _tune_bars(self.console)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, completed=done, status="")

    def advance(self, result: Result) -> None:
        self._advance(result.status, result.values.get("runtime_ms"))

    def advance_row(self, row: dict) -> None:
        """A config another process measured (its database row), counted like one of ours."""
        self._advance(row["status"], row.get("runtime_ms"))

    def note(self, text: str) -> None:
        if self.enabled:
            if self.board is not None:
                text = f"{self.name}: {text}"
            (self.progress.console if self.progress else self.console).print(
                text, highlight=False, markup=False
            )

    def _advance(self, status: str, runtime: float | None) -> None:
        self.counts[status] += 1
        if status == "ok" and runtime is not None:
            self.best_ms = runtime if self.best_ms is None else min(self.best_ms, runtime)
        if self.progress is None:
            return
        parts = [f"{n} {s}" for s, n in sorted(self.counts.items())]
        if self.best_ms is not None:
            parts.append(f"best {self.best_ms:.4f} ms")
        self.progress.update(self.task, advance=1, status=" · ".join(parts))
        if self.board is not None:
            self.board.advance()
        console = self.progress.console
        # rich draws no bar off a terminal, nor on a dumb one (TERM=dumb: Emacs' shell, some CI ptys)
        drawn = console.is_terminal and not console.is_dumb_terminal
        if not drawn and time.monotonic() - self.logged >= LOG_EVERY_S:
            self.logged = time.monotonic()
            (task,) = (task for task in self.progress.tasks if task.id == self.task)
            elapsed = int(task.elapsed or 0)
            self.progress.console.print(
                f"{task.description}: {task.completed:.0f}/{task.total:.0f} · {task.fields['status']} · "
                f"{elapsed // 60}:{elapsed % 60:02d}",
                highlight=False,
                markup=False,
            )

    def baseline(self, result: Result) -> None:
        """One line for candidate zero, PyTorch's own path: its time, or that it was only checked."""
        self.baseline_result = result
        if not self.enabled:
            return
        name = str(result.candidate.config)
        runtime = result.values.get("runtime_ms")
        if result.status != "ok":
            text = f"{name}: {result.status} ({result.message})"
        elif runtime is not None:
            text = f"{name}: {runtime:.4f} ms (candidate zero, the time to beat)"
        else:
            text = f"{name}: checked, not timed (candidate zero; no GPU here)"
        self.note(text)

    def stop(self) -> None:
        if self.progress is not None and self.board is None:
            self.progress.stop()
        self.progress = None


class TuneBoard:
    """The display of several ops tuned at once: a line for the whole run (ops done, running, failed, to go;
    candidates done of all budgets) above a bar per op, each op's bar added as its tune starts. Its ops'
    TuneProgress lines print above the bars, each naming its op. Thread-safe (rich's Progress locks itself)."""

    def __init__(self, enabled: bool, ops: int, console: Console | None = None):
        self.enabled, self.ops = enabled, ops
        self.console = console or _console()
        self.lock = threading.Lock()
        self.states: Counter = Counter()
        self.running: set[str] = set()
        self.progress: Progress | None = None
        if enabled:
            self.progress = _tune_bars(self.console)
            self.progress.start()
            self.total = self.progress.add_task(f"all {ops} ops", total=0, status=self._status())

    def reporter(self, name: str, measures_time: bool) -> TuneProgress:
        return TuneProgress(self.enabled, measures_time, board=self, name=name)

    def add(self, name: str, label: str, total: int, done: int):
        with self.lock:
            self.running.add(name)
            task = self.progress.add_task(name, total=total, completed=done, status="")
            self.progress.update(
                self.total,
                description=f"all {self.ops} ops · {label}",
                total=(self.progress.tasks[self.total].total or 0) + total,
                advance=done,
                status=self._status(),
            )
        return task

    def advance(self) -> None:
        self.progress.update(self.total, advance=1)

    def finished(self, name: str, status: str) -> None:
        """Op `name` ended: done (its result is in) or failed."""
        with self.lock:
            self.running.discard(name)
            self.states[status] += 1
            if self.progress is not None:
                self.progress.update(self.total, status=self._status())

    def _status(self) -> str:
        counts = {"done": self.states["done"], "running": len(self.running), "failed": self.states["failed"]}
        parts = [f"{n} {state}" for state, n in counts.items() if n]
        return " · ".join([*parts, f"{self.ops - sum(counts.values())} to go"])

    @contextlib.contextmanager
    def above(self):
        """While the caller prints through a console of its own (an op's report on stdout): the board taken off the
        screen, and drawn again below what was printed. Printed while it was drawn, an op's heading, table and
        artifact line went to the terminal under it, and its next redraw cleared them."""
        if self.progress is None:
            yield
            return
        live = self.progress.live
        live.transient = True  # stopped, the board erases itself
        self.progress.stop()
        # and is gone: rich keeps the erased board's height, and its restart moved up over that many lines of
        # what was printed meanwhile and cleared them (the op's artifact line)
        render = getattr(live, "_live_render", None)
        if render is not None:
            render._shape = None
        try:
            yield
        finally:
            live.transient = False
            self.progress.start()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _TimeLeft(ProgressColumn):
    """The time left to a deadline held in a task's fields (it ticks with rich's refresh, not only on updates)."""

    def __init__(self, field: str, label: str):
        super().__init__()
        self.field, self.label = field, label

    def render(self, task) -> Text:
        deadline = task.fields.get(self.field)
        if deadline is None or task.finished:
            return Text("")
        left = max(0, int(deadline - time.monotonic()))
        # one line: at 80 columns the times wrapped onto a row of their own, apart from their labels
        return Text(f"{self.label} {left // 60}:{left % 60:02d}", no_wrap=True, overflow="ellipsis")


class BenchProgress:
    """`kt bench`'s progress: a bar per part (items done of its total), each with the time left in the part's
    share and in the whole run; each finished item's line is printed above the bars."""

    def __init__(
        self, enabled: bool, dry: bool, run_deadline: float | None = None, console: Console | None = None
    ):
        self.enabled, self.dry, self.run_deadline = enabled, dry, run_deadline
        self.console = console or _console()
        self.progress: Progress | None = None
        self.task = None
        if enabled:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _TimeLeft("part_deadline", "part left"),
                _TimeLeft("run_deadline", "· run left"),
                console=self.console,
                transient=False,
            )
            self.progress.start()

    def part(self, name: str, total: int, deadline: float) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.update(self.task, part_deadline=None)
        label = f"{name} (dry run: nothing timed on a GPU)" if self.dry else name
        self.task = self.progress.add_task(
            label, total=total, part_deadline=deadline, run_deadline=self.run_deadline
        )

    def grow(self, items: int) -> None:
        """The part's total raised by `items` found on the way (the smoke's next config after a refused build)."""
        if self.progress is None or self.task is None or not items:
            return
        (task,) = (t for t in self.progress.tasks if t.id == self.task)
        self.progress.update(self.task, total=(task.total or 0) + items)

    def advance(self, line: str) -> None:
        if self.progress is None or self.task is None:
            return
        prefix = "dry run, nothing timed on a GPU: " if self.dry else ""
        self.progress.console.print(prefix + line, highlight=False, markup=False)
        self.progress.update(self.task, advance=1)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
