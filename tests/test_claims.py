"""Two tunes on one database never measure the same config at once (issue 17): candidates are claimed in the
database, a claim of a process that is gone is taken over, and a tune waits for what another one measures."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import kt
from kt.autotune import database as dbmod
from kt.autotune.database import Database, claim_key

KEY = {
    "runner": "interpret",
    "device": "cpu",
    "target": "h100",
    "family": "gemm",
    "family_version": "v",
    "problem_key": "p",
    "triton_version": "t",
}


@pytest.fixture
def sleeper():
    """A live process that is not this one (a claim's holder)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def hold(db: Database, key: dict, pid: int, host: str | None = None, at: str | None = None):
    """A claim of `pid` made now (after its process started, as a real holder's is), or `at`."""
    from datetime import datetime, timezone

    at = at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    with db.conn:
        db.conn.execute(
            "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
            [claim_key(key), pid, host or dbmod._host(), at],
        )


def gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claims_are_mine_theirs_or_measured_and_a_dead_holders_claim_is_taken_over(tmp_path, sleeper):
    a, b, c, d = ({**KEY, "config_key": name} for name in "abcd")
    with Database(tmp_path / "t.db") as db:
        db.insert({**a, "status": "ok", "problem": "{}", "config": "{}"})
        hold(db, b, sleeper.pid)
        hold(db, c, gone_pid())
        assert db.claim([a, b, c, d]) == ["measured", "theirs", "mine", "mine"]
        assert db.claim([c, d]) == ["mine", "mine"]  # this process's own claims stay its own
        with Database(tmp_path / "t.db") as other:  # another connection sees them held by a live process
            assert {r["claim_key"] for r in other.claims()} == {claim_key(k) for k in (b, c, d)}
        db.release([b, c, d])  # only this process's claims go
        assert [r["claim_key"] for r in db.claims()] == [claim_key(b)]


def test_two_tunes_of_one_process_do_not_share_their_claims(tmp_path):
    """A claim names its process only: two ops of one `kt tune` on the same problem (threads, each with its own
    Database) both found every claim "mine" and checked each config twice."""
    f, g = ({**KEY, "config_key": name} for name in "fg")
    with Database(tmp_path / "t.db") as first, Database(tmp_path / "t.db") as second:
        assert first.claim([f, g]) == ["mine", "mine"]
        assert second.claim([f, g]) == ["theirs", "theirs"]
        assert first.claim([f]) == ["mine"]  # still its own
        first.release([f])
        assert second.claim([f, g]) == ["mine", "theirs"]
        first.close()  # a closed tune's claims are free to this process's others
        assert second.claim([g]) == ["mine"]


def test_a_tune_releasing_a_batch_leaves_the_claims_another_tune_of_its_process_holds(tmp_path):
    """A tune releases its whole batch as it ends (a deadline, an error, Ctrl-C), the configs it waited for
    included: the claim rows another op of the process held on them were deleted, and a third tune then
    measured a config beside the op still measuring it."""
    f, g = ({**KEY, "config_key": name} for name in "fg")
    with Database(tmp_path / "t.db") as a, Database(tmp_path / "t.db") as b, Database(tmp_path / "t.db") as c:
        assert a.claim([f]) == ["mine"]
        assert b.claim([f, g]) == ["theirs", "mine"]
        b.release([f, g])
        assert [r["claim_key"] for r in a.claims()] == [claim_key(f)]
        assert c.claim([f, g]) == ["theirs", "mine"]


def test_a_claim_from_another_host_is_held_until_it_is_stale(tmp_path, monkeypatch):
    e = {**KEY, "config_key": "e"}
    with Database(tmp_path / "t.db") as db:
        now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        hold(db, e, 1, host="elsewhere", at=now)
        assert db.claim([e]) == ["theirs"]
        hold(db, e, 1, host="elsewhere", at="2020-01-01T00:00:00+00:00")
        assert db.claim([e]) == ["mine"]


def test_a_dead_holders_claim_on_a_measured_config_is_dropped(tmp_path, sleeper):
    """`claim` answered "measured" before it looked at the claim: every kill -9 left claims on configs another
    tune then measured, which nothing ever removed. A live holder's stays (it releases its own)."""
    a, b = ({**KEY, "config_key": name} for name in "ab")
    with Database(tmp_path / "t.db") as db:
        for key in (a, b):
            db.insert({**key, "status": "ok", "problem": "{}", "config": "{}"})
        hold(db, a, gone_pid())
        hold(db, b, sleeper.pid)
        assert db.claim([a, b]) == ["measured", "measured"]
        assert [r["claim_key"] for r in db.claims()] == [claim_key(b)]


def test_a_tune_waiting_on_claims_is_told_who_holds_them_and_how_to_free_another_hosts(tmp_path, sleeper):
    """The wait said only "another tune ... is checking": after a kill -9 on another host (a container on a
    shared file system) the next tune waited 6 hours without a word of whose claims or how to free them."""
    e, f, g = ({**KEY, "config_key": name} for name in "efg")
    with Database(tmp_path / "t.db") as db:
        hold(db, e, 4321, host="container-a", at="2026-12-05T10:00:00+00:00")
        hold(db, f, sleeper.pid, at="2026-12-05T11:00:00+00:00")
        assert db.holders([e, f, g]) == (
            "pid 4321 on host 'container-a', since 2026-12-05 10:00:00 UTC (kt takes over another host's claims "
            f'6 h after they were made; if that tune is gone, `sqlite3 {db.path} "DELETE FROM claims WHERE '
            f"host = 'container-a'\"` frees them now); pid {sleeper.pid} on this host, since 2026-12-05 11:00:00 "
            "UTC"
        )
        assert db.holders([g]) == ""


SPEC = {
    "name": "claimed",
    "op": "dense",
    "dtype": "float16",
    "shape": {"m": 24, "n": 40, "k": 32},
    "tune": {
        "configs": [
            {"block_m": 16, "block_n": 16, "block_k": 16},
            {"block_m": 32, "block_n": 16, "block_k": 16},
        ]
    },
}
A, B = "m16n16k16g8w4s3x1", "m32n16k16g8w4s3x1"


def _key(tmp_path):
    """The measurement key of SPEC's rows (as the interpret runner writes them)."""
    from kt.autotune.runners import make_runner
    from kt.autotune.tune import row_key
    from kt.device import get_profile
    from kt.ir import op_from_spec

    spec = kt.parse_spec(SPEC)
    (node,) = op_from_spec(spec).kernel_graph().kernels
    runner = make_runner("interpret", get_profile("h100"), workers=1)
    return row_key(runner, get_profile("h100"), node.problem)


def test_a_tune_takes_over_a_config_whose_claimer_is_gone(tmp_path):
    db_path = tmp_path / "t.db"
    with Database(db_path) as db:
        hold(db, {**_key(tmp_path), "config_key": B}, gone_pid())
    result = kt.tune(kt.parse_spec(SPEC), backend="interpret", db=db_path, progress=False, baseline=False)
    assert {r["config_key"] for r in result.rows} == {A, B} and result.newly_measured == 2
    with Database(db_path) as db:
        assert db.claims() == []


def test_a_tune_waits_for_a_config_another_process_is_measuring(tmp_path, sleeper):
    db_path = tmp_path / "t.db"
    key = _key(tmp_path)
    with Database(db_path) as db:
        hold(db, {**key, "config_key": B}, sleeper.pid)
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            result=kt.tune(
                kt.parse_spec(SPEC), backend="interpret", db=db_path, progress=False, baseline=False
            )
        )
    )
    thread.start()
    with Database(db_path) as db:
        deadline = time.monotonic() + 300
        while A not in db.measured_configs(**key):  # the tune measures its own claim first
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.2)
        time.sleep(1.0)
        assert thread.is_alive() and B not in db.measured_configs(**key)  # waiting, not measuring B itself
        row = {k: v for k, v in db.measured_configs(**key)[A].items() if k != "id"}
        config = {**row["config"], "block_m": 32}
        db.insert({**row, "config_key": B, "config": config, "message": "measured by the other process"})
    thread.join(timeout=300)
    result = outcome["result"]
    assert {r["config_key"] for r in result.rows} == {A, B}
    assert result.newly_measured == 1  # B is the other process's
    assert next(r for r in result.rows if r["config_key"] == B)["message"] == "measured by the other process"


def test_ctrl_c_stops_an_op_that_waits_for_another_processs_claims(tmp_path, sleeper):
    """Several ops at once: Ctrl-C aborted the dispatcher, but an op waiting for configs another kt process
    claimed only polled the database, so kt waited for that process (a claim from another host counts for 6
    hours) before it said "interrupted". The waiting op now stops with the others."""
    import json
    import os
    import signal

    db_path = tmp_path / "t.db"
    with Database(db_path) as db:
        hold(db, {**_key(tmp_path), "config_key": B}, sleeper.pid)
    ops = tmp_path / "ops.yaml"
    other = {"name": "other", "op": "dense", "dtype": "float16", "shape": {"m": 16, "n": 16, "k": 16}}
    ops.write_text(f"{json.dumps(SPEC)}\n---\n{json.dumps(other)}\n")
    log = tmp_path / "err.txt"
    with open(log, "w") as err:
        tune = subprocess.Popen(
            [sys.executable, "-m", "kt.cli", "tune", str(ops), "--backend", "interpret", "--concurrent", "2",
             "--workers", "1", "--db", str(db_path), "--out", str(tmp_path / "art")],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "waiting for 1 config" not in log.read_text():
            assert time.monotonic() < deadline and tune.poll() is None, log.read_text()
            time.sleep(0.2)
        tune.send_signal(signal.SIGINT)
        assert tune.wait(timeout=30) == 130, log.read_text()
    finally:
        tune.kill()
        tune.wait()
    assert "kt: interrupted" in log.read_text()
    with Database(db_path) as db:  # the waiting op's claims were let go; the other process's stays
        assert [(r["claim_key"], r["pid"]) for r in db.claims()] == [
            (claim_key({**_key(tmp_path), "config_key": B}), sleeper.pid)
        ]


def test_a_stop_just_after_candidate_zero_is_claimed_leaves_no_claim_behind(tmp_path, monkeypatch):
    """SIGTERM (or Ctrl-C) landing between candidate zero's claim and the code that releases it left its claim
    row in the database (seen in CI: a tune stopped by SIGTERM kept one claim). The claim is now made inside
    the block that releases it."""
    real = Database.claim

    def claim(self, keys):
        states = real(self, keys)
        if keys and keys[0]["config_key"] == dbmod.BASELINE_KEY:
            raise KeyboardInterrupt  # the signal's handler runs as soon as the claim returns
        return states

    monkeypatch.setattr(Database, "claim", claim)
    db_path = tmp_path / "t.db"
    with pytest.raises(KeyboardInterrupt):
        kt.tune(kt.parse_spec(SPEC), backend="interpret", db=db_path, progress=False, baseline=True)
    with Database(db_path) as db:
        assert db.claims() == []


def test_a_stop_that_cuts_candidate_zeros_release_short_still_leaves_no_claim(tmp_path, monkeypatch):
    """The second SIGTERM is ignored, but the first can land inside the release in candidate zero's `finally`
    (rolled back): the tune releases candidate zero's claim once more on its way out."""
    real, stopped = Database.release, []

    def release(self, keys, quiet=False):
        if not stopped and keys and keys[0]["config_key"] == dbmod.BASELINE_KEY:
            stopped.append(True)
            raise KeyboardInterrupt
        return real(self, keys, quiet)

    monkeypatch.setattr(Database, "release", release)
    db_path = tmp_path / "t.db"
    with pytest.raises(KeyboardInterrupt):
        kt.tune(kt.parse_spec(SPEC), backend="interpret", db=db_path, progress=False, baseline=True)
    assert stopped
    with Database(db_path) as db:
        assert db.claims() == []
