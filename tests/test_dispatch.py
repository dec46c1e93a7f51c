"""One worker pool serving several threads' runs at once (kt.autotune.dispatch): each thread gets its own
outcomes and follow-ups, the workers are shared in turn, deadlines are per run, and an abort stops them all."""

import textwrap
import threading
import time

import pytest

from kt.autotune.dispatch import Dispatcher, DispatcherStopped
from kt.autotune.pool import Task, WorkerPool
from kt.ir import GemmProblem


def describe(tag: str, number: int, group: str = "first") -> Task:
    return Task(number, "describe", {"tag": tag}, group, context=(tag, number))


LOGGED = textwrap.dedent("""
    import time

    def kernel(a, b, out=None):
        time.sleep({sleep})
        with open({log!r}, "a") as handle:
            handle.write({tag!r} + "\\n")
        out.copy_(a @ b)
        return out
""")


def _kernel_task(folder, name: str, number: int, source: str) -> Task:
    """A check task of the kernel `source` (written to folder/<name>.py) on a small GEMM, for group first."""
    path = folder / f"{name}.py"
    path.write_text(source)
    payload = {
        "family": "gemm",
        "problems": [GemmProblem(16, 16, 16).to_dict()],
        "source_path": str(path),
        "device": "cpu",
        "seed": 0,
    }
    return Task(number, "check", payload, "first")


def logged(folder, tag: str, number: int, sleep: float = 0.0) -> Task:
    """A check task whose kernel waits `sleep` seconds, then writes `tag` to folder/order.log: the order in
    which the worker ran the tasks, as the worker itself saw it."""
    task = _kernel_task(
        folder, tag, number, LOGGED.format(sleep=sleep, log=str(folder / "order.log"), tag=tag)
    )
    task.context = tag
    return task


def logged_run(dispatcher, folder, tag: str, count: int, first_sleep: float = 0.0) -> None:
    """One run of `count` logged tasks tagged tag0, tag1, ... (the first waiting `first_sleep` seconds)."""
    tasks = [logged(folder, f"{tag}{i}", i, first_sleep if i == 0 else 0.0) for i in range(count)]
    list(dispatcher.run(tasks))


def until(condition, seconds: float = 30.0) -> None:
    """Wait until `condition()` holds (the dispatcher's state as another thread changes it), at most `seconds`."""
    limit = time.monotonic() + seconds
    while not condition() and time.monotonic() < limit:
        time.sleep(0.01)
    assert condition()


def test_threads_share_the_workers_and_each_gets_only_its_own_outcomes_and_follow_ups():
    seen: dict[str, list] = {}
    pids: dict[str, set] = {}

    def follow_up(outcome):
        tag, number = outcome.task.context
        if outcome.task.group == "first":  # each task's second stage runs in the other group
            return [Task(number, "describe", {}, "second", context=(tag, number))]
        return []

    def one_run(dispatcher, tag):
        outcomes = list(dispatcher.run([describe(tag, i) for i in range(5)], follow_up))
        seen[tag] = [(o.task.context, o.task.group, o.status) for o in outcomes]
        pids[tag] = {o.values["pid"] for o in outcomes if o.task.group == "first"}

    with (
        WorkerPool({"first": (2, {}), "second": (1, {})}, timeout_s=60) as pool,
        Dispatcher(pool) as dispatcher,
    ):
        threads = [threading.Thread(target=one_run, args=(dispatcher, tag)) for tag in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
    for tag in "abc":
        assert sorted(seen[tag]) == sorted(
            [((tag, i), group, "ok") for i in range(5) for group in ("first", "second")]
        ), seen[tag]
    workers = set.union(*pids.values())
    assert len(workers) == 2  # the pool's two workers of the group, no more
    assert any(sum(pid in pids[tag] for tag in "abc") > 1 for pid in workers)  # a worker served several runs


def test_a_run_past_its_deadline_drops_what_waits_and_the_others_go_on():
    with WorkerPool({"first": (1, {})}, timeout_s=60) as pool, Dispatcher(pool) as dispatcher:
        late = list(dispatcher.run([describe("late", i) for i in range(50)], deadline=time.monotonic() - 1))
        on_time = list(dispatcher.run([describe("on time", i) for i in range(3)]))
    assert late == []
    assert [o.task.context for o in on_time] == [("on time", i) for i in range(3)]


def test_unknown_groups_are_refused_before_anything_runs():
    """A task for a group the pool lacks is refused as it is submitted: no worker would ever take it, so a bug
    that let it through waited for it forever (here, until the deadline bounding the wait)."""
    with (
        WorkerPool({"first": (1, {})}, timeout_s=60) as pool,
        Dispatcher(pool) as dispatcher,
        pytest.raises(ValueError, match="unknown worker groups"),
    ):
        list(dispatcher.run([describe("x", 0, group="nowhere")], deadline=time.monotonic() + 5))


def test_a_free_worker_takes_the_runs_in_turn(tmp_path):
    """Round-robin: with one worker, a run of one task submitted after a run of three goes second, not last; a
    bug that always started from the first run served every task of a run before any of the next run's."""
    held = threading.Event()

    def occupy(dispatcher):
        # keeps the worker busy while both runs submit, and stays a run (its outcome read, its end not yet)
        outcomes = dispatcher.run([logged(tmp_path, "busy", 0, sleep=2.0)])
        next(outcomes)
        held.wait(timeout=60)
        list(outcomes)

    with WorkerPool({"first": (1, {})}, timeout_s=60) as pool, Dispatcher(pool) as dispatcher:
        occupier = threading.Thread(target=occupy, args=(dispatcher,))
        occupier.start()
        # each run is registered (its tasks queued) before the next one starts
        until(lambda: len(dispatcher._jobs) == 1)
        runs = [
            threading.Thread(target=logged_run, args=(dispatcher, tmp_path, tag, count))
            for tag, count in (("a", 3), ("b", 1))
        ]
        for count, thread in enumerate(runs, start=2):
            thread.start()
            until(lambda count=count: len(dispatcher._jobs) == count)
        for thread in runs:
            thread.join(timeout=60)
        held.set()
        occupier.join(timeout=60)
        assert not any(thread.is_alive() for thread in [occupier, *runs])
    assert (tmp_path / "order.log").read_text().split() == ["busy", "a0", "b0", "a1", "a2"]


def test_a_run_that_joins_goes_next_not_after_another_turn_of_the_run_before_it(tmp_path):
    """A run that registers while the only other run's task is running is served next: the turn after the last
    run pointed back at the first (modulo one run), so a newcomer waited for another of its tasks."""

    with WorkerPool({"first": (1, {})}, timeout_s=60) as pool, Dispatcher(pool) as dispatcher:
        first = threading.Thread(target=logged_run, args=(dispatcher, tmp_path, "a", 3, 2.0))
        first.start()
        # a0 is taken while run a is alone, and runs for two seconds
        until(lambda: len(dispatcher._jobs) == 1 and dispatcher._running)
        second = threading.Thread(target=logged_run, args=(dispatcher, tmp_path, "b", 1))
        second.start()
        until(lambda: len(dispatcher._jobs) == 2)
        for thread in (first, second):
            thread.join(timeout=60)
        assert not first.is_alive() and not second.is_alive()
    assert (tmp_path / "order.log").read_text().split() == ["a0", "b0", "a1", "a2"]


def test_a_candidates_next_stage_goes_before_the_runs_new_candidates(tmp_path):
    """A follow-up (a candidate's next stage) goes to the front of its run's queue: a bug appending it behind
    the run's new candidates finishes no candidate until every one has started."""

    def follow_up(outcome):
        if outcome.task.context == "s0":
            return [logged(tmp_path, "s0-second", 0)]
        return []

    with WorkerPool({"first": (1, {})}, timeout_s=60) as pool, Dispatcher(pool) as dispatcher:
        # each first stage takes long enough for s0's follow-up to be submitted while s1 runs
        tasks = [logged(tmp_path, f"s{i}", i, sleep=1.0) for i in range(3)]
        outcomes = list(dispatcher.run(tasks, follow_up))
    assert sorted(o.task.context for o in outcomes) == ["s0", "s0-second", "s1", "s2"]
    assert all(o.status == "ok" for o in outcomes), [(o.task.context, o.status, o.message) for o in outcomes]
    assert (tmp_path / "order.log").read_text().split() == ["s0", "s1", "s0-second", "s2"]


def test_an_abort_stops_every_waiting_run_at_once():
    failures = []

    def waiting_run(dispatcher):
        try:
            list(dispatcher.run([describe("w", i) for i in range(10_000)]))
        except DispatcherStopped as exc:
            failures.append(str(exc))

    with WorkerPool({"first": (1, {})}, timeout_s=60) as pool:
        dispatcher = Dispatcher(pool).__enter__()
        threads = [threading.Thread(target=waiting_run, args=(dispatcher,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        dispatcher.abort()
        for thread in threads:
            thread.join(timeout=30)
        assert time.monotonic() - started < 10
    assert len(failures) == 2 and all("stopped" in f for f in failures), failures


RAISES_LATE = (
    "import time\n\ndef kernel(a, b, out=None):\n    time.sleep({sleep})\n    raise RuntimeError({tag!r})\n"
)


def test_an_aborted_run_leaves_no_task_running_for_the_pools_next_run(tmp_path):
    """An abort (Ctrl-C, one op's error, in ops tuned at once) ended the pool's run with its workers still busy:
    a caller's runner used again took the aborted task's result as its own task of the same number."""
    with WorkerPool({"first": (1, {})}, timeout_s=60) as pool:
        dispatcher = Dispatcher(pool).__enter__()
        stopped = []

        def aborted_op():
            with pytest.raises(DispatcherStopped):
                list(
                    dispatcher.run(
                        [_kernel_task(tmp_path, "a", 0, RAISES_LATE.format(sleep=2, tag="the aborted one"))]
                    )
                )
            stopped.append(True)

        thread = threading.Thread(target=aborted_op)
        thread.start()
        time.sleep(1)
        dispatcher.abort()
        thread.join(timeout=60)
        dispatcher.close()
        assert stopped
        with Dispatcher(pool) as again:
            (outcome,) = list(
                again.run([_kernel_task(tmp_path, "b", 0, RAISES_LATE.format(sleep=3, tag="the next one"))])
            )
    assert (outcome.status, outcome.message) == ("crash", "RuntimeError: the next one"), outcome


def test_a_fresh_worker_started_by_the_dispatcher_outlives_it(tmp_path, monkeypatch):
    """A fresh worker asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG), and Linux takes the thread that
    started it for its parent: one the dispatcher's thread restarted after a crash was killed as that thread
    ended, and the pool's next task was recorded a crash by SIGKILL."""
    monkeypatch.setenv("KT_WORKER_FORK", "0")  # (as GPU workers are)
    with WorkerPool({"first": (1, {})}, timeout_s=120) as pool:
        with Dispatcher(pool) as dispatcher:
            (crashed,) = list(
                dispatcher.run([_kernel_task(tmp_path, "exits", 0, "import os\nos._exit(3)\n")])
            )
            assert crashed.status == "crash"
            list(dispatcher.run([describe("warm", 1)]))  # restarted by the dispatcher's thread, and up
            restarted = pool.slots[0].process
        time.sleep(1)  # the dispatcher's thread has ended
        assert restarted.poll() is None, restarted.returncode
        outcomes = list(pool.run([describe("after", 2)]))
    assert [(o.status, o.message) for o in outcomes] == [("ok", "")], outcomes
