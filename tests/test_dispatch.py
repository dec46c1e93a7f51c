"""One worker pool serving several threads' runs at once (kt.autotune.dispatch): each thread gets its own
outcomes and follow-ups, the workers are shared in turn, deadlines are per run, and an abort stops them all."""

import threading
import time

import pytest

from kt.autotune.dispatch import Dispatcher, DispatcherStopped
from kt.autotune.pool import Task, WorkerPool


def describe(tag: str, number: int, group: str = "first") -> Task:
    return Task(number, "describe", {"tag": tag}, group, context=(tag, number))


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
    with (
        WorkerPool({"first": (1, {})}, timeout_s=60) as pool,
        Dispatcher(pool) as dispatcher,
        pytest.raises(ValueError, match="unknown worker groups"),
    ):
        list(dispatcher.run([describe("x", 0, group="nowhere")]))


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
