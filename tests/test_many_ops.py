"""Several ops in one tune (issue 18): tuned at once on one shared runner, each with its own rounds, rows and
result; an op that fails does not stop the others; the same rows as tuning them one after the other."""

from __future__ import annotations

import sqlite3
import time

import pytest
from conftest import kt_cli

from kt.api import as_spec
from kt.autotune.tune import TuneResult, tune, tune_each
from kt.errors import KtError

OPS = [
    {"name": "d", "op": "dense", "shape": {"m": 40, "n": 48, "k": 32}},
    {"name": "l", "op": "lowrank", "shape": {"batch": 24, "dims": [32, 8, 48]}},
    # no config is left legal: this op fails as it is planned
    {"name": "x", "op": "dense", "shape": {"m": 16, "n": 16, "k": 16},
     "tune": {"space": {"block_m": [256], "block_n": [256]}}},
    {"name": "m", "op": "monarch", "shape": {"batch": 16, "n": 64, "nblocks": 4}},
]  # fmt: skip


def tune_all(tmp_path, name: str, concurrent: int):
    spans: dict[str, tuple[float, float]] = {}
    ended: list[str] = []

    def timed(spec, **options):
        started = time.monotonic()
        try:
            return tune(spec, **options)
        finally:
            spans[spec.name] = (started, time.monotonic())

    results = tune_each(
        [as_spec(op) for op in OPS],
        timed,
        concurrent=concurrent,
        on_done=lambda number, spec, outcome: ended.append(spec.name),
        budget=2,
        backend="interpret",
        db=tmp_path / f"{name}.db",
        workers=1,
        progress=False,
    )
    with sqlite3.connect(tmp_path / f"{name}.db") as conn:
        rows = sorted(conn.execute("SELECT problem_key, config_key, status FROM measurements").fetchall())
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # every claim released
    return results, rows, spans, ended


def test_ops_tuned_at_once_overlap_and_store_what_one_after_the_other_stores(tmp_path):
    together, rows, spans, ended = tune_all(tmp_path, "together", concurrent=4)
    apart, rows_apart, spans_apart, ended_apart = tune_all(tmp_path, "apart", concurrent=1)

    # in the specs' order
    assert [isinstance(r, TuneResult) for r in together] == [True, True, False, True]
    assert isinstance(together[2], KtError)
    assert "tune.space: leaves none of the" in str(together[2])
    assert rows == rows_apart and len(rows) == 9  # three ops, two configs and PyTorch's path each
    for ours, theirs in zip(together, apart, strict=True):
        if isinstance(ours, TuneResult):
            assert ours.best.config.key() == theirs.best.config.key()
    tuned = [name for name in "dlm"]
    # at once: every op started before any ended; one after the other: each started after the last ended
    assert max(spans[n][0] for n in tuned) < min(spans[n][1] for n in tuned)
    order = sorted(spans_apart.values())
    assert all(before[1] <= after[0] for before, after in zip(order, order[1:]))
    assert sorted(ended) == sorted(ended_apart) == sorted("dlxm") and ended_apart == list("dlxm")


def test_the_board_written_to_a_log_keeps_each_row_whole(capfd, monkeypatch):
    """Piped (a log, no COLUMNS), rich fitted the bars to 80 columns: the run's row lost the end of its
    description and its status ("all 2 ops · interpret on cpu (Triton interpreter) + sm_90 compi… 2 done · 0 to …")."""
    from kt.autotune.progress import BenchProgress, TuneBoard

    monkeypatch.delenv("COLUMNS", raising=False)
    board = TuneBoard(True, 2)
    label = "interpret on cpu (Triton interpreter) + sm_90 compile"
    names = [f"a_rather_long_operation_name_for_the_board_number_{i}" for i in range(2)]
    for name in names:
        board.add(name, label, total=3, done=3)
        board.finished(name, "done")
    board.stop()
    bench = BenchProgress(True, dry=True, run_deadline=time.monotonic() + 600)
    bench.part("tunes: kt's winner against PyTorch's path, case by case", 1, time.monotonic() + 300)
    bench.advance("dense fp16 4096^3: " + "x" * 120)
    bench.stop()
    err = capfd.readouterr().err
    assert "…" not in err, err
    assert f"all 2 ops · {label}" in err and "2 done · 0 to go" in err, err
    assert all(f"{name} " in err for name in names) and "x" * 120 in err
    assert "tunes: kt's winner against PyTorch's path, case by case (dry run: nothing timed on a GPU)" in err


def _dumb_terminal(monkeypatch):
    """Consoles that are a terminal rich draws nothing on (TERM=dumb: Emacs' shell, some CI ptys)."""
    from rich.console import Console

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    monkeypatch.setattr(Console, "is_dumb_terminal", property(lambda self: True))


@pytest.mark.parametrize("where", ["log", "dumb terminal"])
def test_a_tune_written_to_a_log_shows_its_progress_while_it_runs(capfd, monkeypatch, where):
    """Off a terminal rich draws a bar only when it stops: `kt collect OP --all 2> log` of a 360-config sweep
    wrote nothing to the log for its whole length. The bar is now also a line every LOG_EVERY_S; on a dumb
    terminal too, where rich draws no bar either (it printed nothing until the end)."""
    from kt.autotune import progress

    if where == "dumb terminal":
        _dumb_terminal(monkeypatch)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    reporter = progress.TuneProgress(True, measures_time=False)
    reporter.start(total=3, done=0, label="interpret on cpu")
    reporter.advance_row({"status": "ok"})
    reporter.advance_row({"status": "timeout"})
    err = capfd.readouterr().err  # the bar has not stopped
    assert "interpret on cpu: 1/3 · 1 ok · 0:00\n" in err, err
    assert "interpret on cpu: 2/3 · 1 ok · 1 timeout · 0:00\n" in err, err
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)
    reporter.advance_row({"status": "ok"})
    assert "3/3" not in capfd.readouterr().err  # at most a line per LOG_EVERY_S
    reporter.stop()
    assert "3/3" in capfd.readouterr().err  # the bar itself, as it stops


@pytest.mark.parametrize("where", ["log", "dumb terminal"])
def test_a_replay_or_an_import_written_to_a_log_shows_its_progress_while_it_runs(capfd, monkeypatch, where):
    """`kt replay` and `kt import inductor` show a bar once they have run a second; off a terminal rich drew
    none, so a log held nothing until the result. They now write a line every LOG_EVERY_S there (and on a
    dumb terminal, where rich draws none either)."""
    from kt import cli
    from kt.autotune import progress

    if where == "dumb terminal":
        _dumb_terminal(monkeypatch)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with cli._LateProgress(True, "replaying guided", after_s=0.0, counts=True) as replaying:
        replaying(3, 20)
    with cli._LateProgress(True, "reading Inductor logs", after_s=0.0) as reading:
        reading(512, 2048)
    with cli._LateProgress(True, "replaying random", after_s=3600.0, counts=True) as quick:
        quick(1, 20)  # a quick job prints nothing but its result
    assert capfd.readouterr().err == "replaying guided: 3/20\nreading Inductor logs: 25%\n"


def test_a_worker_pool_failure_in_a_tune_of_several_ops_is_one_line_as_for_one_op(tmp_path, monkeypatch):
    """The pool's own failure (the disk under TMPDIR full as a worker starts) was one line for one op, but for
    several a DispatcherStopped traceback (the dispatcher wraps what stopped its pool)."""
    import errno
    import json

    import kt.autotune.pool as pool

    def send(self, task):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp")

    monkeypatch.setattr(pool._Slot, "send", send)  # in this process, not a new Python (2-3 s of imports each)
    ops = tmp_path / "ops.yaml"
    ops.write_text("\n---\n".join(json.dumps(op) for op in OPS[:2]) + "\n")
    for files in ([ops], [tmp_path / "one.yaml"]):
        (tmp_path / "one.yaml").write_text(json.dumps(OPS[0]) + "\n")
        args = ["tune", *map(str, files), "--backend", "interpret", "--workers", "1"]
        args += ["--db", str(tmp_path / "t.db"), "--out", str(tmp_path / "art"), "--quiet"]
        done = kt_cli(*args)  # no traceback either
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.strip().splitlines() == ["kt: error: No space left on device: /tmp"], done.stderr


def test_ops_share_the_runner_the_caller_made_and_check_on_their_own_seeds(tmp_path, monkeypatch):
    """`kt.tune([...], runner=R)`: each op's thread drove R's pool at once with no dispatcher (a hang, or a
    worker's result read as None) while tune_each made a second runner; and on a shared runner every op's
    checks drew the first op's inputs (its seed), though each recorded its own."""
    import kt
    from kt.autotune.runners import InterpretRunner
    from kt.autotune.tune import shared_runner

    seeds: dict[str, set[int]] = {}
    payload = InterpretRunner.payload

    def recorded(self, stage, candidate):
        made = payload(self, stage, candidate)
        if "seed" in made:  # a check's (a compile's payload has none)
            seeds.setdefault(candidate.problem.key(), set()).add(made["seed"])
        return made

    monkeypatch.setattr(InterpretRunner, "payload", recorded)
    specs = [
        as_spec({"name": f"s{seed}", "op": "dense", "shape": {"m": 16 * (i + 1), "n": 16, "k": 16},
                 "tune": {"seed": seed}})
        for i, seed in enumerate((0, 7, 3))
    ]  # fmt: skip
    for entered in (True, False):
        seeds.clear()
        runner = shared_runner(specs, "interpret", workers=1)
        db = tmp_path / f"{entered}.db"
        options = {"budget": 1, "backend": "interpret", "db": db, "progress": False, "concurrent": 3}
        if entered:
            with runner:
                results = kt.tune(specs, runner=runner, **options)
        else:  # entered by the tunes, for them
            results = kt.tune(specs, runner=runner, **options)
            assert runner.pool is None
        assert all(isinstance(r, TuneResult) for r in results), results
        assert [r.seed for r in results] == [0, 7, 3]
        by_problem = {r.plan.problem.key(): r.seed for r in results}
        assert seeds == {key: {seed} for key, seed in by_problem.items()}, seeds


def test_an_artifact_that_cannot_be_saved_fails_its_op_and_the_others_finish(tmp_path, monkeypatch):
    """The CLI saves each op's artifact as it ends; a save refused (a `.prev` made a file mid-run, a full disk)
    escaped the op's thread and stopped every op mid-tune, with no summary. It now fails that op alone."""
    import json

    import kt.autotune.artifact as artifact
    from kt.errors import ArtifactError

    save = artifact.save_artifact_report

    def refusing(result, folder, *args, **kwargs):
        if result.spec.name == "b":
            raise ArtifactError(f"{folder}.prev is where kt keeps the artifact it replaces, but it is a file")
        return save(result, folder, *args, **kwargs)

    monkeypatch.setattr(artifact, "save_artifact_report", refusing)
    files = []
    for i, name in enumerate("abc"):
        files.append(tmp_path / f"{name}.yaml")
        op = {"name": name, "op": "dense", "dtype": "float32", "shape": {"m": 16 * (i + 1), "n": 16, "k": 16}}
        files[-1].write_text(json.dumps(op) + "\n")
    args = ["tune", *map(str, files), "--backend", "interpret", "--workers", "1", "--budget", "1"]
    done = kt_cli(*args, "--db", str(tmp_path / "t.db"), "--out", str(tmp_path / "art"), "--concurrent", "3")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "kt: error: b: " in done.stderr and "is a file" in done.stderr
    assert (tmp_path / "art" / "a" / "kernel.py").is_file() and (
        tmp_path / "art" / "c" / "kernel.py"
    ).is_file()
    assert "3 ops" in done.stdout and "failed" in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize("width", [60, 80, 100])
def test_a_bars_row_on_a_narrow_terminal_keeps_its_count_and_time_whole(width):
    """rich squeezed every column alike: at 80 columns `150/1000` read `1…` and the time `0:…`, and a dry run's
    long label left no count at all. Now the description (at most a third of the row) and the status give way."""
    import io

    from rich.console import Console

    from kt.autotune.progress import TuneProgress

    written = io.StringIO()
    console = Console(file=written, width=width, force_terminal=False, soft_wrap=True, emoji=False)
    reporter = TuneProgress(True, True, console=console)
    reporter.start(
        1000, 0, "dryrun on cpu (Triton interpreter, dry run of the GPU measure path) + sm_90 compile"
    )
    for status in ["ok"] * 137 + ["timeout"] * 12 + ["compile_error"]:
        reporter.advance_row({"status": status, "runtime_ms": 0.5})
    reporter.stop()
    (row,) = [line for line in written.getvalue().splitlines() if line.strip()]
    assert "150/1000 0:00:0" in row and len(row) <= width, row


def test_the_board_is_off_the_screen_while_an_ops_report_prints(monkeypatch, tmp_path):
    """An op's heading, table and artifact line printed through the CLI's own console while the board was drawn:
    its next redraw cleared them from the terminal, and stale frames of the board stayed."""
    import io

    from rich.console import Console

    from kt.autotune import progress

    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    board = progress.TuneBoard(True, 2, console=console)
    for name in "ab":  # the board three rows high
        board.add(name, "interpret on cpu", total=3, done=0)
    board.progress.refresh()
    assert board.progress.live.is_started
    with board.above():
        assert not board.progress.live.is_started
        console.file.write("artifact: art/a\n")  # as the CLI's own console prints it
    assert board.progress.live.is_started and not board.progress.live.transient
    board.stop()
    # drawn again below it, without moving up over it first (its restart cleared the erased board's height of
    # lines: the artifact line)
    after = console.file.getvalue().split("artifact: art/a\n")[1]
    assert "\x1b[1A" not in after.split("all 2 ops")[0], repr(after[:80])
    seen = []
    real = progress.TuneBoard.above

    def recorded(self):
        seen.append(self.progress is not None and self.progress.live.is_started)
        return real(self)

    monkeypatch.setattr(progress.TuneBoard, "above", recorded)
    specs = [as_spec({"op": "dense", "name": n, "shape": {"m": 16, "n": 16, "k": 16}}) for n in "ab"]
    tune_each(
        specs,
        tune,
        concurrent=2,
        on_done=lambda number, spec, outcome: None,
        budget=1,
        backend="dryrun",
        db=tmp_path / "t.db",
        workers=1,
        progress=True,
    )
    assert seen == [True, True]  # each op's report printed with the board off the screen
