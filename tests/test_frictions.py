"""Frictions a new user hit (issue 17): a file of several ops, replacing an artifact, what meta.json counts."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import kt_cli, quiet_tune_options

import kt
from kt.autotune.artifact import kept_artifact, save_artifact_report
from kt.errors import KtError

SMALL = {"op": "dense", "dtype": "float16", "shape": {"m": 24, "n": 40, "k": 32}}


def test_kt_tune_takes_a_file_of_several_ops_and_writes_an_artifact_each(tmp_path):
    path = tmp_path / "ops.yaml"
    path.write_text(
        "name: g\nop: dense\ndtype: float16\nshape: {m: [16, 40], n: 48, k: 32}\ntune: {budget: 1}\n---\n"
        "name: r\nop: lowrank\nshape: {batch: 24, dims: [32, 8, 48]}\ntune: {budget: 1}\n"
    )
    done = kt_cli(
        "tune",
        str(path),
        *quiet_tune_options(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{path}: 3 ops, tuned up to 3 at once" in done.stdout
    # said once, before the first config is checked, not only in the end notes
    start = done.stdout.index("note: no GPU here: each config is checked in Triton's interpreter")
    assert done.stdout.count("a larger budget only checks more configs") == 1
    assert start < done.stdout.index("best ")
    ended = re.findall(r"^\[(\d)/3\] (\S+) ended · ", done.stdout, re.M)  # in the order they ended
    assert [number for number, _ in ended] == ["1", "2", "3"]
    assert sorted(name for _, name in ended) == ["g_m16", "g_m40", "r"]
    for name in ["g_m16", "g_m40", "r"]:
        meta = json.loads((tmp_path / "art" / name / "meta.json").read_text())
        assert meta["name"] == name and meta["tuning"]["checked"] >= 1 and meta["tuning"]["timed"] == 0
    assert json.loads((tmp_path / "art" / "g_m40" / "meta.json").read_text())["problem"]["m"] == 40


def test_a_file_of_several_ops_is_refused_by_commands_that_take_one(tmp_path):
    path = tmp_path / "ops.yaml"
    path.write_text("op: dense\nshape: {m: [16, 40], n: 48, k: 32}\n")
    done = kt_cli("space", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"kt: error: {path}: describes 2 ops (a list of shapes or batches, or several YAML documents): "
        "this command takes one; give each op a file of its own (`kt tune` takes them all)"
    ]
    with pytest.raises(
        kt.SpecError, match=r"describes 2 ops .*: kt.load_spec reads one; kt.load_specs reads"
    ):
        kt.load_spec(path)


def _interpreted(spec, tmp_path, **options):
    """A tune of `spec` in the interpreter on tmp_path's database, quietly, without PyTorch's path."""
    return kt.tune(
        spec, backend="interpret", db=tmp_path / "t.db", progress=False, baseline=False, workers=1, **options
    )


def _tuned(tmp_path, config):
    return _interpreted(kt.parse_spec({"name": "same", **SMALL, "tune": {"configs": [config]}}), tmp_path)


def test_a_full_disk_under_an_artifact_names_the_artifact(tmp_path, monkeypatch):
    """ENOSPC as kernel.py is written carries no file name: the CLI said only "kt: error: No space left on
    device". It names the artifact, and leaves no staging folder."""
    import errno

    import kt.autotune.artifact as artifact

    result = _tuned(tmp_path, {"block_m": 16, "block_n": 16, "block_k": 16})

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifact, "_write", full)
    target = tmp_path / "art" / "same"
    with pytest.raises(
        kt.ArtifactError, match=rf"^{re.escape(str(target))} cannot be written \(No space left"
    ):
        save_artifact_report(result, target)
    assert os.listdir(tmp_path / "art") == []


def test_a_full_disk_as_the_old_artifacts_note_is_written_keeps_the_old_artifact(tmp_path, monkeypatch):
    """The disk filling between the new artifact's files and the small note that marks the old one as kept:
    the old artifact, exchanged out, was removed with the staging folder. It is kept as `.prev`, without its
    note, and the save says so (it said the artifact "cannot be written", though the new one was in place)."""
    import errno

    import kt.autotune.artifact as artifact

    target = tmp_path / "art" / "same"
    save_artifact_report(_tuned(tmp_path, {"block_m": 16, "block_n": 16, "block_k": 16}), target)
    write = artifact._write

    def full_at_the_note(path, text):
        if Path(path).name == artifact.KEPT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, text)

    monkeypatch.setattr(artifact, "_write", full_at_the_note)
    path, report = save_artifact_report(
        _tuned(tmp_path, {"block_m": 32, "block_n": 16, "block_k": 16}), target
    )
    kept = tmp_path / "art" / "same.prev"
    assert path == target and report == (
        f"replaced the artifact there (spec and config differ); the previous one is kept as {kept}, without its"
        " note .kt-kept (No space left on device)"
    )
    assert json.loads((kept / "meta.json").read_text())["config"]["block_m"] == 16
    assert json.loads((target / "meta.json").read_text())["config"]["block_m"] == 32
    assert sorted(os.listdir(tmp_path / "art")) == ["same", "same.prev"]
    monkeypatch.setattr(artifact, "_write", write)  # a later save knows it for one kt kept (the same op's)
    _, report = save_artifact_report(_tuned(tmp_path, {"block_m": 16, "block_n": 32, "block_k": 16}), target)
    assert report.endswith(f"the previous one is kept as {kept}")
    assert json.loads((kept / "meta.json").read_text())["config"]["block_m"] == 32


def test_replacing_an_artifact_says_so_and_keeps_a_different_one_as_prev(tmp_path):
    first = {"block_m": 16, "block_n": 16, "block_k": 16}
    second = {"block_m": 32, "block_n": 16, "block_k": 16}
    target = tmp_path / "art" / "same"
    target.mkdir(parents=True)  # made beforehand, empty: no artifact there (it was one "whose meta.json was
    # unreadable", kept as an empty same.prev)
    path, report = save_artifact_report(_tuned(tmp_path, first), target)
    assert path == target and report is None and not (tmp_path / "art" / "same.prev").exists()
    _, report = save_artifact_report(_tuned(tmp_path, first), target)
    assert report == "replaced the artifact there (same spec, kernel, config, target and objective)"
    assert not (tmp_path / "art" / "same.prev").exists()
    _, report = save_artifact_report(_tuned(tmp_path, second), target)
    previous = tmp_path / "art" / "same.prev"
    assert (
        report
        == f"replaced the artifact there (spec and config differ); the previous one is kept as {previous}"
    )
    assert json.loads((previous / "meta.json").read_text())["config"]["block_m"] == 16
    assert json.loads((target / "meta.json").read_text())["config"]["block_m"] == 32
    assert kt.load(previous).config.block_m == 16  # a whole, loadable artifact
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["same", "same.prev"]  # no staging left


def test_an_artifact_tuned_for_another_objective_or_power_cap_is_kept_as_prev(tmp_path):
    """A retune with only `--objective energy` or `--power-cap` changed said "same spec, kernel and config" and
    removed the artifact, whose meta.json held the other objective (the spec's own stays as written)."""
    config = {"block_m": 16, "block_n": 16, "block_k": 16}
    spec = kt.parse_spec({"name": "same", **SMALL, "tune": {"configs": [config]}})
    target, previous = tmp_path / "art" / "same", tmp_path / "art" / "same.prev"

    def save(**options):
        return save_artifact_report(_interpreted(spec, tmp_path, **options), target)[1]

    save()
    assert save(objective="energy") == (
        f"replaced the artifact there (objective differs); the previous one is kept as {previous}"
    )
    assert json.loads((previous / "meta.json").read_text())["tuning"]["objective"] == "time"
    assert save(objective="energy", power_cap_w=300) == (
        f"replaced the artifact there (power cap differs); the previous one is kept as {previous}"
    )
    assert save(objective="energy", power_cap_w=300).startswith("replaced the artifact there (same spec")
    result = _interpreted(spec, tmp_path)
    with pytest.raises(KtError, match=r"a folder named '\*\.prev' is where kt keeps the artifact"):
        result.save(tmp_path / "art" / "mine.prev")  # as kt tune refuses a name ending in .prev
    assert not (tmp_path / "art" / "mine.prev").exists()


def test_an_artifact_tuned_for_another_device_profile_is_kept_as_prev_and_names_its_profile(tmp_path):
    """`kt tune OP --device gpu.json` over an artifact tuned for the spec's own device (h100) said "same spec,
    kernel and config" and removed it; and meta.json did not say which calibrated profile the tune was for."""
    from kt.device import H100

    profile = tmp_path / "mine.json"
    profile.write_text(json.dumps({**H100.to_dict(), "name": "mine", "smem_per_block": 200 * 1024}))
    config = {"block_m": 16, "block_n": 16, "block_k": 16}
    spec = kt.parse_spec({"name": "same", **SMALL, "device": "h100", "tune": {"configs": [config]}})
    target = tmp_path / "art" / "same"
    save_artifact_report(_interpreted(spec, tmp_path), target)
    assert json.loads((target / "meta.json").read_text())["device"]["key"] == "h100"
    result = _interpreted(spec, tmp_path, device=str(profile))
    _, report = save_artifact_report(result, target)
    previous = tmp_path / "art" / "same.prev"
    assert report == f"replaced the artifact there (target differs); the previous one is kept as {previous}"
    device = json.loads((target / "meta.json").read_text())["device"]
    assert (
        device["target"] == "mine"
        and device["key"] == result.target.key
        and device["key"].startswith("mine-")
    )
    assert json.loads((previous / "meta.json").read_text())["device"]["key"] == "h100"


def test_ctrl_c_between_the_exchange_and_the_rename_still_keeps_the_previous_artifact(tmp_path, monkeypatch):
    """The old artifact sits in the staging folder from the exchange until it is renamed to `.prev`: Ctrl-C
    there removed it with the staging folder (6 times in 45 real interrupts), though a replaced artifact that
    differs is promised as `.prev`."""
    from kt.autotune import artifact

    first, second = ({"block_m": size, "block_n": 16, "block_k": 16} for size in (16, 32))
    results = [_tuned(tmp_path, first), _tuned(tmp_path, second)]
    target = tmp_path / "art" / "same"
    save_artifact_report(results[0], target)
    exchange = artifact._exchange

    def exchange_then_ctrl_c(a, b):
        exchange(a, b)
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "_exchange", exchange_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_artifact_report(results[1], target)
    previous = tmp_path / "art" / "same.prev"
    assert kt.load(target).config.block_m == 32 and kt.load(previous).config.block_m == 16
    assert kept_artifact(previous)
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["same", "same.prev"]  # no staging left


def test_a_prev_that_kt_did_not_keep_is_never_replaced(tmp_path):
    """`<name>.prev` was removed unchecked: a user's folder there, or another op's artifact (an op named
    same.prev), went without a word; a file there failed after the new artifact had replaced the old one, and
    the old one was lost."""
    first, second = ({"block_m": size, "block_n": 16, "block_k": 16} for size in (16, 32))
    results = [_tuned(tmp_path, first), _tuned(tmp_path, second)]
    target = tmp_path / "art" / "same"
    previous = tmp_path / "art" / "same.prev"
    save_artifact_report(results[0], target)
    previous.mkdir()
    (previous / "notes.txt").write_text("precious")
    with pytest.raises(
        kt.ArtifactError, match=r"same.prev is where kt keeps the artifact .* a folder kt did"
    ):
        save_artifact_report(results[1], target)
    assert (previous / "notes.txt").read_text() == "precious"
    assert kt.load(target).config.block_m == 16  # untouched
    (previous / "notes.txt").unlink()
    previous.rmdir()
    with pytest.raises(kt.SpecError, match="ends in '.prev'"):  # no op may take that name now
        kt.parse_spec({"name": "same.prev", **SMALL, "tune": {"configs": [second]}})
    other = kt.parse_spec({"name": "other", **SMALL, "tune": {"configs": [second]}})
    save_artifact_report(_interpreted(other, tmp_path), tmp_path / "other")
    (tmp_path / "other").rename(
        previous
    )  # another op's artifact put there (by a kt that allowed it, or by hand)
    with pytest.raises(kt.ArtifactError, match="a folder kt did not keep there"):
        save_artifact_report(results[1], target)
    assert json.loads((previous / "meta.json").read_text())["name"] == "other"
    assert not kept_artifact(previous)  # kt.nn's lookup takes it (an artifact of its own)
    shutil.rmtree(previous)
    previous.write_text("a file")
    with pytest.raises(kt.ArtifactError, match="but it is a file; move it"):
        save_artifact_report(results[1], target)
    assert previous.read_text() == "a file" and kt.load(target).config.block_m == 16
    previous.unlink()
    # what kt keeps it may replace: the second save keeps the first, the third replaces that with the second
    save_artifact_report(results[1], target)
    save_artifact_report(results[0], target)
    assert kt.load(previous).config.block_m == 32 and kt.load(target).config.block_m == 16
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["same", "same.prev"]
    assert kept_artifact(previous) and not kept_artifact(target)  # kt.nn's lookup skips the kept one


def _save_in_children_at_once(results, target) -> list[str]:
    """Save each of `results` to `target` from its own forked process, all released at one moment (two `kt tune`
    of one op finishing together); what each save said: "ok" or its exception."""
    import os

    go_read, go_write = os.pipe()
    children = []
    for result in results:
        said_read, said_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for the start, save, say how it went
            try:
                os.close(go_write)
                os.read(go_read, 1)  # returns when the parent closes its end: every child at once
                try:
                    save_artifact_report(result, target)
                    said = "ok"
                except BaseException as exc:  # noqa: BLE001 - the parent's assertion shows it
                    said = f"{type(exc).__name__}: {exc}"
                os.write(said_write, said.encode()[:4000])
            finally:
                os._exit(0)
        os.close(said_write)
        children.append((pid, said_read))
    os.close(go_read)
    os.close(go_write)
    said = []
    for pid, said_read in children:
        os.waitpid(pid, 0)
        said.append(os.read(said_read, 4096).decode() or "the child said nothing")
        os.close(said_read)
    return said


def test_two_saves_of_one_artifact_at_once_both_succeed_and_the_replaced_one_is_kept_as_prev(tmp_path):
    """Two saves of one artifact at once (two `kt tune` of one op into one --out finishing together): one failed
    with "Directory not empty: .same.tmp-..." or called kt's own same.prev "a folder kt did not keep there" (18
    of 20 racing pairs), and the artifact it replaced was removed instead of kept as `.prev`."""
    results = [
        _tuned(tmp_path, {"block_m": m, "block_n": n, "block_k": 16})
        for m, n in ((16, 16), (32, 16), (16, 32))
    ]
    target, previous = tmp_path / "art" / "same", tmp_path / "art" / "same.prev"
    failed = []
    for _ in range(8):
        shutil.rmtree(tmp_path / "art", ignore_errors=True)
        save_artifact_report(results[0], target)
        save_artifact_report(results[1], target)  # same (32) and same.prev (16), as after two tunes
        said = _save_in_children_at_once([results[0], results[2]], target)
        failed += [message for message in said if message != "ok"]
        # the last save wins, and the one before it (the other racer's) is kept whole as .prev
        now, before = (kt.load(path).config for path in (target, previous))
        assert {(now.block_m, now.block_n), (before.block_m, before.block_n)} == {(16, 16), (16, 32)}, said
        assert kept_artifact(previous)
        assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["same", "same.prev"]  # no lock left
    assert not failed, failed[:3]
    # the lock file of a save killed while it held it (SIGKILL) neither stops the next save nor stays
    (tmp_path / "art" / ".same.lock").write_text("")
    save_artifact_report(results[1], target)
    assert kt.load(target).config.block_m == 32
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["same", "same.prev"]


@pytest.mark.parametrize("aside", [".same.tmp-killed", ".same.old-killed/same"])
def test_a_save_killed_after_its_exchange_leaves_the_replaced_artifact_to_the_next_save_as_prev(
    tmp_path, aside
):
    """A save killed (SIGKILL, the OOM killer) after exchanging its folders, before keeping the old artifact as
    `.prev`, left it in its staging folder (or, without renameat2, in the exchange's aside folder), which the
    next save removed as a dead save's: the artifact promised as `same.prev` was lost without a word. The state
    such a kill leaves is made by hand here; a folder written after the artifact (killed before its exchange,
    its new artifact never swapped in) is still removed."""
    first, second = (_tuned(tmp_path, {"block_m": m, "block_n": 16, "block_k": 16}) for m in (16, 32))
    art, elsewhere = tmp_path / "art", tmp_path / "elsewhere"
    target = art / "same"
    save_artifact_report(first, target)
    shutil.copytree(target, art / aside)  # the replaced artifact, its files as old as they were
    save_artifact_report(second, elsewhere / "same")  # written after it: the new one, swapped in
    shutil.rmtree(target)
    os.rename(elsewhere / "same", target)
    path, report = save_artifact_report(second, target)  # the next save, of the same artifact
    assert report == "replaced the artifact there (same spec, kernel, config, target and objective)"
    assert kt.load(art / "same.prev").config.block_m == 16 and kept_artifact(art / "same.prev")
    assert kt.load(target).config.block_m == 32
    assert sorted(p.name for p in art.iterdir()) == ["same", "same.prev"]
    # killed before its exchange: the folder holds the new artifact, written after the one in place
    shutil.rmtree(art)
    save_artifact_report(first, target)
    save_artifact_report(second, elsewhere / "again")
    shutil.copytree(elsewhere / "again", art / ".same.tmp-early")
    save_artifact_report(first, target)
    assert sorted(p.name for p in art.iterdir()) == ["same"]


def test_a_save_to_a_symlinked_artifact_replaces_the_folder_it_leads_to_and_keeps_prev_beside_it(tmp_path):
    """`out/same -> ../real/same`: the save replaced the link itself with a folder and left a stray link in a
    `.same.tmp-*` name; a differing save made `same.prev` a link and wrote `.kt-kept` into the real artifact
    (kt.nn's lookup then skipped it), and the next save was refused calling that link "a file"."""
    import os

    first, second, third = (
        _tuned(tmp_path, {"block_m": m, "block_n": n, "block_k": 16})
        for m, n in ((16, 16), (32, 16), (16, 32))
    )
    real, out = tmp_path / "real", tmp_path / "out"
    save_artifact_report(first, real / "same")
    out.mkdir()
    link = out / "same"
    link.symlink_to(Path("..") / "real" / "same")
    path, report = save_artifact_report(second, link)
    kept = real / "same.prev"
    assert path == link
    assert (
        report == f"replaced the artifact there (spec and config differ); the previous one is kept as {kept}"
    )
    assert link.is_symlink() and os.readlink(link) == str(Path("..") / "real" / "same")  # the link stays
    assert kt.load(link).config.block_m == 32 and kt.load(kept).config.block_m == 16
    assert not kept_artifact(real / "same") and kept_artifact(kept)  # kt.nn's lookup takes the new one
    assert sorted(p.name for p in out.iterdir()) == ["same"]  # no stray link, no .prev beside the link
    assert sorted(p.name for p in real.iterdir()) == ["same", "same.prev"]
    save_artifact_report(third, link)  # the next save is not refused
    assert kt.load(link).config.block_n == 32 and kt.load(kept).config.block_m == 32
    # a `.prev` that is a link kt did not make is named as one, not as "a file"
    shutil.rmtree(kept)
    kept.symlink_to(out)
    with pytest.raises(
        kt.ArtifactError, match=f"but it is a symbolic link \\(to {re.escape(str(out))}\\); move it"
    ):
        save_artifact_report(first, link)
    assert kt.load(link).config.block_n == 32 and kept.is_symlink()


def test_export_refuses_a_missing_folder_and_an_unknown_status_and_keeps_the_umask(tmp_path):
    import os

    from kt.autotune.database import Database

    db = tmp_path / "t.db"
    with Database(db) as database:
        database.insert(
            {"runner": "interpret", "device": "cpu", "target": "h100", "family": "gemm", "family_version": "v",
             "problem_key": "p", "config_key": "c", "triton_version": "t", "status": "ok", "problem": {},
             "config": {}}
        )  # fmt: skip

    def export(*args, umask=None):
        before = os.umask(umask) if umask is not None else None  # in this process: put back below
        try:
            return kt_cli("export", *args, "--db", db)
        finally:
            if before is not None:
                os.umask(before)

    missing = export(str(tmp_path / "nope" / "rows.csv"))
    assert missing.returncode == 2 and "does not exist; create it first" in missing.stderr
    assert not (tmp_path / "nope").exists()
    weird = export(str(tmp_path / "rows.csv"), "--status", "weird")
    assert weird.returncode == 2 and "'weird' is not one of 'ok', 'compile_error'" in weird.stderr
    done = export(str(tmp_path / "rows.csv"), "--status", "ok", umask=0o077)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rows.csv").stat().st_mode & 0o777 == 0o600
    done = export(str(tmp_path / "rows2.csv"), umask=0o022)
    assert (tmp_path / "rows2.csv").stat().st_mode & 0o777 == 0o644
    # every runner that writes rows can be chosen (`--backend dryrun` rows were refused)
    for runner, count in [("interpret", 1), ("dryrun", 0), ("cuda", 0)]:
        done = export(str(tmp_path / f"{runner}.csv"), "--runner", runner)
        assert done.returncode == 0 and done.stdout.startswith(f"{count} rows from "), done.stderr


def test_a_tune_whose_candidates_all_timed_out_before_suggests_retry_failed(tmp_path):
    import pytest

    from kt.autotune.database import Database
    from kt.errors import KtError

    spec = kt.parse_spec(
        {"name": "t", **SMALL, "tune": {"configs": [{"block_m": 16, "block_n": 16, "block_k": 16}]}}
    )
    result = kt.tune(spec, backend="interpret", db=tmp_path / "t.db", progress=False, baseline=False)
    with Database(tmp_path / "t.db") as database:  # as if that check had timed out
        database.conn.execute("UPDATE measurements SET status = 'timeout', message = 'no result after 1 s'")
    with pytest.raises(
        KtError, match=r"1 of them timed out or crashed.*`kt tune --retry-failed` runs those again"
    ) as failed:
        kt.tune(spec, backend="interpret", db=tmp_path / "t.db", progress=False, baseline=False)
    # in the interpreter a timeout is its speed on this CPU, not transience (a butterfly over 2**20 features
    # timed out at the default 300 s every time): the message says so and what helps
    message = str(failed.value)
    assert "ran in Triton's interpreter" in message and "longer --timeout, or tune on a GPU" in message
    again = kt.tune(
        spec, backend="interpret", db=tmp_path / "t.db", progress=False, baseline=False, retry_failed=True
    )
    assert again.best.config == result.best.config and again.newly_measured == 1


def test_a_tune_whose_first_interpreter_checks_all_time_out_stops_there(tmp_path):
    """The interpreter checks a structured op at its full width on the CPU: a butterfly over 2**20 features timed
    out at the default 300 s in every check, so a 64-config tune spent hours on timeouts before its end said why.
    Its first checks (one per worker) now run alone, and where all of them time out the tune stops: here a
    40-config budget ends after 2 checks (a 1 s timeout against a butterfly over 16,384 features, 64 rows), and
    PyTorch's path, checked beside them, has its row."""
    import pytest

    from kt.autotune.database import Database
    from kt.errors import KtError

    spec = kt.parse_spec(
        {"name": "bf", "op": "butterfly", "dtype": "float16", "shape": {"batch": 64, "n": 16384}}
    )
    with pytest.raises(KtError, match=r"none of the 2 candidates passed \(2 timeout\)") as failed:
        kt.tune(
            spec, budget=40, backend="interpret", db=tmp_path / "t.db", progress=False, timeout_s=1, workers=2
        )
    assert "a tune stops once its first checks (one per worker) all time out there" in str(failed.value)
    with Database(tmp_path / "t.db") as database:
        rows = database.find()
    assert sorted(r["status"] for r in rows if r["config_key"] != "pytorch") == ["timeout", "timeout"]
    assert [r["config_key"] for r in rows].count(
        "pytorch"
    ) == 1  # its row, whatever a loaded machine made of it


def test_kt_nn_reads_the_artifacts_of_every_bucket_a_file_tuned(tmp_path, monkeypatch):
    import torch

    import kt.nn as knn
    from kt.nn import selection

    path = tmp_path / "layer.yaml"
    path.write_text("name: mon\nop: monarch\ndtype: float32\nshape: {batch: [16, 64], n: 32, nblocks: 4}\n")
    specs = kt.load_specs(path)
    assert [s.name for s in specs] == ["mon_b16", "mon_b64"]
    for spec in specs:
        kt.tune(spec, budget=1, backend="interpret", db=tmp_path / "t.db", progress=False).save(
            tmp_path / "art" / spec.name
        )
    monkeypatch.setenv("KT_INTERPRET", "1")  # on CPU tensors kt.nn runs PyTorch's path unless asked
    monkeypatch.delenv("KT_ARTIFACTS", raising=False)
    saved = list(selection._ARTIFACT_DIRS)
    selection._SELECTED.clear()
    try:
        knn.use_artifacts(tmp_path / "art")
        layer = knn.MonarchLinear(32, 32, 4, dtype=torch.float32)
        with torch.no_grad():
            layer(torch.randn(10, 32))  # bucket 16
            layer(torch.randn(50, 32))  # bucket 64
        chosen = {s.where: s.source for s in knn.selections()}
        assert chosen == {
            str(tmp_path / "art" / "mon_b16"): "artifact",
            str(tmp_path / "art" / "mon_b64"): "artifact",
        }
    finally:
        selection._SELECTED.clear()
        selection._ARTIFACT_DIRS[:] = saved


def test_a_relative_kt_db_stays_where_it_was_when_the_process_changes_folder(tmp_path, monkeypatch, caplog):
    """kt.nn read a relative $KT_DB from the current folder at every lookup: after a chdir (Hydra's) every layer
    warned that the database "is not there" and ran untuned, where $KT_ARTIFACTS stays where it was."""
    import logging

    from kt.autotune.database import Database
    from kt.codegen import family_for
    from kt.ir import GemmProblem
    from kt.nn import selection

    with Database(tmp_path / "t.db") as db:
        assert db.count() == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KT_DB", "t.db")
    problem = GemmProblem(16, 16, 16)
    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        assert selection._best_row(problem, family_for(problem), "gpu") is None
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert selection._best_row(problem, family_for(problem), "gpu") is None
    assert "not there" not in caplog.text, caplog.text


def test_a_relative_kt_artifacts_folder_stays_where_it_was_when_the_process_changes_folder(
    tmp_path, monkeypatch
):
    """A relative $KT_ARTIFACTS was looked up from the current folder at each layer's first call: after a chdir
    the next layer warned that the folder "is not a folder" and ran the cost model's pick."""
    import torch

    import kt.nn as knn
    from kt.nn import selection

    path = tmp_path / "layer.yaml"
    path.write_text("name: mon\nop: monarch\ndtype: float32\nshape: {batch: [16, 64], n: 32, nblocks: 4}\n")
    for spec in kt.load_specs(path):
        kt.tune(spec, budget=1, backend="interpret", db=tmp_path / "t.db", progress=False).save(
            tmp_path / "art" / spec.name
        )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KT_INTERPRET", "1")
    monkeypatch.setenv("KT_ARTIFACTS", "art")
    saved = list(selection._ARTIFACT_DIRS)
    selection._SELECTED.clear()
    selection._ARTIFACT_DIRS.clear()
    try:
        layer = knn.MonarchLinear(32, 32, 4)
        with torch.no_grad():
            layer(torch.randn(10, 32))  # bucket 16
            monkeypatch.chdir(tmp_path / "elsewhere")
            layer(torch.randn(50, 32))  # bucket 64
        assert [(s.source, s.where) for s in knn.selections()] == [
            ("artifact", str(tmp_path / "art" / "mon_b16")),
            ("artifact", str(tmp_path / "art" / "mon_b64")),
        ]
    finally:
        selection._SELECTED.clear()
        selection._ARTIFACT_DIRS[:] = saved


def test_kt_nn_prefers_a_measured_artifact_of_an_op_to_one_only_checked(tmp_path, monkeypatch):
    """One op tuned twice into one folder under two names (a --from-model tune and a write_yaml one): the first
    by name ran, a tune without a GPU (measured: false) over the measured one beside it."""
    import torch

    import kt.nn as knn
    from kt.nn import selection

    spec = kt.parse_spec({"op": "monarch", "dtype": "float32", "shape": {"batch": 16, "n": 32, "nblocks": 4}})
    result = kt.tune(spec, budget=1, backend="interpret", db=tmp_path / "t.db", progress=False)
    for name in ("a_laptop", "b_gpu"):
        result.save(tmp_path / "art" / name)
    meta_path = tmp_path / "art" / "b_gpu" / "meta.json"  # the flag alone: no figure is made up
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "measured": True}))
    monkeypatch.setenv("KT_INTERPRET", "1")
    monkeypatch.delenv("KT_ARTIFACTS", raising=False)
    saved = list(selection._ARTIFACT_DIRS)
    selection._SELECTED.clear()
    try:
        knn.use_artifacts(tmp_path / "art")
        with torch.no_grad():
            knn.MonarchLinear(32, 32, 4)(torch.randn(10, 32))
        (chosen,) = knn.selections()
        assert (chosen.source, chosen.where) == ("artifact", str(tmp_path / "art" / "b_gpu"))
    finally:
        selection._SELECTED.clear()
        selection._ARTIFACT_DIRS[:] = saved


def test_kt_tune_takes_several_files_or_a_folder_and_an_op_that_fails_does_not_stop_the_others(tmp_path):
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "a.yaml").write_text("name: a\nop: dense\nshape: {m: 16, n: 16, k: 16}\ntune: {budget: 1}\n")
    (ops / "b.yml").write_text(  # no config is left legal: this op fails when it is tuned
        "name: b\nop: dense\nshape: {m: 16, n: 16, k: 16}\ntune: {space: {block_m: [256], block_n: [256]}}\n"
    )
    (ops / "notes.txt").write_text("not an op")
    done = kt_cli(
        "tune",
        str(ops),
        *quiet_tune_options(tmp_path),
        "--concurrent",
        "1",
    )
    assert done.returncode == 2
    assert "2 files: 2 ops, tuned one after the other" in done.stdout
    assert "[1/2] a: dense 16x16x16" in done.stdout  # named as it starts
    assert "[1/2] a ended · before it: none · 1 still running or to go" in done.stdout  # where the run stands
    assert "[2/2] b ended · before it: 1 checked · 0 still running or to go" in done.stdout
    assert "kt: error: b: " in done.stderr and "tune.space: leaves none of the" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "kt: error: 1 of 2 ops failed: b"
    assert (tmp_path / "art" / "a" / "meta.json").is_file() and not (tmp_path / "art" / "b").exists()
    assert "failed" in done.stdout and "checked" in done.stdout  # the summary table
    again = kt_cli("tune", str(ops / "a.yaml"), str(ops / "a.yaml"), "--quiet")
    assert again.returncode == 2 and "a.yaml' is given twice" in again.stderr
    (ops / "b.yml").unlink()
    (ops / ".#a.yaml").symlink_to("user@host.1234:1700000000")  # an editor's lock file: a dangling link
    (ops / "old.yaml").mkdir()
    (ops / "c.yaml").write_text("name: a\nop: dense\nshape: {m: 32, n: 16, k: 16}\n")
    names = kt_cli(
        "tune", str(ops), "--quiet"
    )  # hidden files and folders named *.yaml are not ops; c.yaml's name is taken by a.yaml's op
    assert names.returncode == 2 and "name: 'a' is also the name of an op in" in names.stderr


def test_kt_tune_of_a_list_tunes_each_op_on_one_runner_and_returns_the_failures_too(tmp_path, monkeypatch):
    from kt.autotune import runners
    from kt.errors import SpecError

    made = []
    real = runners.make_runner

    def counting(*args, **kwargs):
        made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("kt.autotune.tune.make_runner", counting)
    good = kt.parse_spec({"name": "g", **SMALL})
    other = kt.parse_spec({"name": "h", **SMALL, "shape": {"m": 40, "n": 40, "k": 32}})
    bad = kt.parse_spec({"name": "b", **SMALL, "tune": {"space": {"block_m": [256], "block_n": [256]}}})
    results = kt.tune([good, bad, other], budget=1, backend="interpret", db=tmp_path / "t.db", progress=False)
    assert len(made) == 1, "one runner for the three ops"
    assert [type(r).__name__ for r in results] == ["TuneResult", "SpecError", "TuneResult"]
    assert isinstance(results[1], SpecError) and "leaves none of the" in str(results[1])
    assert results[0].spec.name == "g" and results[2].problem.m == 40


def test_a_power_cap_without_a_gpu_says_it_was_not_applied(tmp_path):
    """`--power-cap` with nothing measured and no model of power was dropped without a word (an energy
    objective there gets a note)."""
    spec = kt.parse_spec(
        {"name": "capped", **SMALL, "tune": {"configs": [{"block_m": 16, "block_n": 16, "block_k": 16}]}}
    )
    result = _interpreted(spec, tmp_path, power_cap_w=100)
    assert any("the 100 W power cap was not applied" in note for note in result.notes), result.notes
    plain = _interpreted(spec, tmp_path)
    assert not any("power cap" in note for note in plain.notes), plain.notes


def test_rows_of_an_earlier_tune_under_another_model_show_this_tunes_predictions(tmp_path):
    """Reused rows kept the prediction stored when they were checked, named as this tune's model's: the analytic
    model's 0.0096 ms as the forest's (which predicts 0.0004), rank 1 shown slower than rank 2, and meta.json's
    prediction 25x off under the wrong name."""
    configs = [
        {"block_m": 16, "block_n": 16, "block_k": 32, "num_warps": 8, "num_stages": 2, "split_k": 2},
        {"block_m": 16, "block_n": 16, "block_k": 64, "num_warps": 8, "num_stages": 3},
    ]
    shape = {"m": 37, "n": 29, "k": 45}
    spec = kt.parse_spec({**SMALL, "name": "models", "shape": shape, "tune": {"configs": configs}})
    options = {
        "backend": "interpret",
        "db": tmp_path / "t.db",
        "progress": False,
        "baseline": False,
        "workers": 1,
    }
    first = kt.tune(spec, model="analytic", **options)
    forest = (
        Path(kt.__file__).parent / "costmodel" / "models" / "h100.skops"
    )  # kt's own, as outside the tests
    second = kt.tune(spec, model=forest, **options)
    assert second.newly_measured == 0
    predicted = [row["predicted_ms"] for row in second.rows]  # in this tune's rank order
    assert predicted == sorted(predicted), second.rows
    assert second.best.predicted_ms == predicted[0] != first.best.predicted_ms


def test_an_artifact_whose_meta_json_names_another_config_is_refused(tmp_path):
    """The checksum covers kernel.py only: a meta.json edited to another config loaded silently, and the
    Kernel reported m32... while its module ran BLOCK_M = 16."""
    target = tmp_path / "art" / "same"
    save_artifact_report(_tuned(tmp_path, {"block_m": 16, "block_n": 16, "block_k": 16}), target)
    meta = json.loads((target / "meta.json").read_text())
    meta["config"]["block_m"] = 32
    (target / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(kt.ArtifactError, match=r"its config m32.* is not the one kernel.py was built with"):
        kt.load(target)
    assert kt.load(target, verify=False).module.BLOCK_M == 16  # as it is, when asked


def test_an_edited_artifact_that_does_not_import_names_its_own_file_and_line(tmp_path):
    """kt.load(..., verify=False), which the checksum's error advises, gave a raw SyntaxError in kt's kernel
    cache (~/.cache/kt/kernels/k_<hash>.py), not the artifact's kernel.py; an error raised by the module's
    code passed through as it was."""
    target = tmp_path / "art" / "edited"
    save_artifact_report(_tuned(tmp_path, {"block_m": 16, "block_n": 16, "block_k": 16}), target)
    source = (target / "kernel.py").read_text()
    lines = source.splitlines()
    line = next(n for n, text in enumerate(lines, start=1) if text.startswith("BLOCK_M = "))
    (target / "kernel.py").write_text(source.replace("BLOCK_M = 16", "BLOCK_M = 16 +", 1))
    with pytest.raises(
        kt.ArtifactError, match=rf"^{re.escape(str(target / 'kernel.py'))}, line {line}: invalid"
    ):
        kt.load(target, verify=False)
    (target / "kernel.py").write_text(source.replace("BLOCK_M = 16", "BLOCK_M = undefined_name", 1))
    with pytest.raises(
        kt.ArtifactError, match=r"kernel.py failed to import: NameError: name 'undefined_name'"
    ):
        kt.load(target, verify=False)
