"""The tuning database: one committed row per measurement, unique per identity, clear errors on bad files."""

import json
import os
import sqlite3
from pathlib import Path

import pytest

from kt.autotune.database import KEY_COLUMNS, SCHEMA_VERSION, Database, check_file
from kt.errors import DatabaseError


def row(config_key="m32n32k32g8w4s3x1", status="ok", **extra):
    base = {k: f"{k}-value" for k in KEY_COLUMNS}
    return {
        **base,
        "config_key": config_key,
        "status": status,
        "problem": {"m": 1},
        "config": {"block_m": 32},
        **extra,
    }


def test_a_row_is_visible_to_another_connection_as_soon_as_it_is_inserted(tmp_path):
    path = tmp_path / "t.db"
    with Database(path) as db:
        assert db.insert(row(rel_err=0.5))
        other = sqlite3.connect(path)
        assert other.execute("SELECT rel_err FROM measurements").fetchall() == [(0.5,)]
        other.close()
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_same_measurement_is_never_stored_twice(tmp_path):
    with Database(tmp_path / "t.db") as db:
        assert db.insert(row())
        assert not db.insert(row(status="crash"))
        assert db.insert(row(config_key="other"))
        assert db.count() == 2
        found = db.measured_configs(**{k: f"{k}-value" for k in KEY_COLUMNS if k != "config_key"})
        assert set(found) == {"m32n32k32g8w4s3x1", "other"} and found["other"]["problem"] == {"m": 1}


def test_a_layers_lookup_by_problem_reads_that_problems_rows_through_an_index(tmp_path):
    """kt.nn finds a layer's best row by problem, status, runner, GPU and Triton (kt.nn.selection._best_row),
    without the target or template version, so the key's index (runner, device, target, ...) narrowed the search
    to the GPU's rows only: 20-37 ms a lookup in 78,000 rows of one GPU (Inductor's A100 logs through `kt import`)
    on a 2-core machine, for each layer; 1.0 ms with an index on problem_key, which every writer now adds."""
    path = tmp_path / "t.db"
    with Database(path) as db:
        for i in range(40):
            assert db.insert(row(config_key=f"c{i}", problem_key=f"p{i % 4}", runtime_ms=1.0 + i))
    with Database(path, readonly=True) as db:
        where = {"problem_key": "p1", "status": "ok", "runner": "runner-value", "device": "device-value"}
        plan = db.conn.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM measurements WHERE {' AND '.join(f'{k} = ?' for k in where)}",
            list(where.values()),
        ).fetchall()
        assert any("INDEX measurement_problem (problem_key=?)" in step[-1] for step in plan), plan
        assert sorted(r["config_key"] for r in db.find(**where)) == sorted(f"c{i}" for i in range(1, 40, 4))


def test_a_database_with_an_older_key_is_rekeyed_so_rows_of_a_new_triton_are_stored(tmp_path):
    """Schema 1 keyed rows without triton_version. Migrating kept that index (CREATE INDEX IF NOT EXISTS), so
    after a Triton upgrade every check collided with an old row and was dropped as already present: the tune
    checked its configs, stored none and failed."""
    path = tmp_path / "t.db"
    with Database(path) as db:
        assert db.insert(row(triton_version="3.0.0"))
        old_key = [k for k in KEY_COLUMNS if k != "triton_version"]
        db.conn.execute("DROP INDEX measurement_key")
        db.conn.execute(f"CREATE UNIQUE INDEX measurement_key ON measurements ({', '.join(old_key)})")
        db.conn.execute("PRAGMA user_version = 1")
    with Database(path) as db:
        assert [r[2] for r in db.conn.execute("PRAGMA index_info(measurement_key)")] == list(KEY_COLUMNS)
        assert db.insert(row(triton_version="3.9.0")), "a row of another Triton is a new measurement"
        assert not db.insert(row(triton_version="3.9.0", status="crash"))
        assert db.count() == 2


def first_schema_db(path):
    """A database as kt's first schema made it: checked_problem (one problem, later renamed to a list,
    checked_problems), and none of the columns added since."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE measurements (id INTEGER PRIMARY KEY, runner TEXT, device TEXT, target TEXT, family TEXT, "
        "family_version TEXT, problem_key TEXT, config_key TEXT, created_at TEXT, problem TEXT, config TEXT, "
        "status TEXT, checked_problem TEXT, triton_version TEXT)"
    )
    conn.execute(
        "INSERT INTO measurements VALUES (1, 'interpret', 'cpu', 'h100', 'gemm', 'v1', '{}', "
        "'m16n16k16g8w8s2x4', '2026-11-23T14:00:00+00:00', '{\"m\": 64}', '{\"block_m\": 16}', 'ok', "
        "'{\"m\": 25}', '3.9.0')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("migrated", ["as-read", "migrated", "older-kt", "older-kt-then-this"])
def test_a_first_schema_database_exports_and_keeps_its_checked_problem(tmp_path, migrated):
    """Its renamed column stayed in its table after migration, and export's CSV writer refused the unknown field
    (a traceback, before and after a tune had migrated the file); the checked problem is read as the list the
    column became, read-only (export) and migrated alike, also where an older kt's migration had added the new
    column empty beside it."""
    import csv
    import json

    path = first_schema_db(tmp_path / "old.db")
    if migrated.startswith("older-kt"):  # what kt before 2026-12-05 did: the column added, nothing copied
        conn = sqlite3.connect(path)
        conn.execute("ALTER TABLE measurements ADD COLUMN checked_problems TEXT")
        conn.commit()
        conn.close()
    if migrated in ("migrated", "older-kt-then-this"):
        Database(path).close()
    with Database(path, create=False, readonly=True) as db:
        assert db.export_csv(tmp_path / "old.csv") == 1
        assert db.find()[0]["checked_problems"] == [{"m": 25}]
    (exported,) = csv.DictReader((tmp_path / "old.csv").open())
    assert json.loads(exported["checked_problems"]) == [{"m": 25}] and "checked_problem" not in exported


def _whole_layout_key(problem):
    """The key a kt before schema 6 wrote for `problem`: every field, its whole layout included."""
    import json

    return json.dumps({"family": problem.family, **problem.to_dict()}, sort_keys=True, separators=(",", ":"))


def _layout_problems(grid=(256, 256)):
    """A block-sparse problem, a sum holding it beside a low-rank chain, and its weight gradient, with a layout
    of `grid` blocks (16x16 each)."""
    from kt.ir.problems import BlockSparseProblem, BsrGradProblem, ChainProblem, SumProblem
    from kt.sparsity import mask_to_hex, random_mask

    out, in_ = grid[0] * 16, grid[1] * 16
    layout = mask_to_hex(random_mask(grid, 0.1, 0))
    sparse = BlockSparseProblem(rows=8, in_features=in_, out_features=out, block=(16, 16), layout=layout)
    summed = SumProblem(terms=(sparse, ChainProblem(rows=8, dims=(in_, 32, out))))
    grad = BsrGradProblem(rows=8, in_features=in_, out_features=out, block=(16, 16), layout=layout)
    return sparse, summed, grad


def test_a_problem_key_names_a_long_layout_by_its_sha256_and_keeps_a_short_one_whole():
    """The key is a database's identity column (in the row, both indexes and each claim) and held the whole
    layout: 1.6 MB a row for a 16384-square W in 16x16 blocks (262,144 hex characters, four copies). A layout
    longer than its digest is now named by `sha256:<hex>`; a short one (16x16 blocks: 64 characters) stays, so
    its rows keep their keys. `compact_key` turns a key an older kt wrote into today's."""
    import hashlib

    from kt.keys import compact_key

    for problem in _layout_problems():
        layout = problem.terms[0].layout if hasattr(problem, "terms") else problem.layout
        assert len(layout) == 16384  # 65,536 blocks, a bit each
        key = problem.key()
        assert f'"layout":"sha256:{hashlib.sha256(layout.encode()).hexdigest()}"' in key
        assert layout not in key and len(key) < 400, key
        assert compact_key(_whole_layout_key(problem)) == key
        assert compact_key(key) == key
    sparse = _layout_problems()[0]
    flipped = sparse.layout[:-1] + ("0" if sparse.layout[-1] != "0" else "1")
    assert type(sparse)(**{**sparse.__dict__, "layout": flipped}).key() != sparse.key()
    for problem in _layout_problems(grid=(16, 16)):  # 256 blocks: 64 hex characters, no shorter as a digest
        assert problem.key() == _whole_layout_key(problem)
        assert "sha256" not in problem.key()


def test_a_long_layout_is_stored_once_and_every_row_reads_its_problem_whole(tmp_path):
    """A row's problem (and the reduced problems checked) held its whole layout: 4 MiB of hex a row for a
    2**24-block grid, 268 MB for a 64-config tune. The layouts table keeps each long one once; a row's problem
    names it by digest, and every read (find, export) gives the problem back whole. A layout missing from the
    table (an edited file) is refused by the row's id."""
    import csv

    sparse, summed, grad = _layout_problems()
    path = tmp_path / "t.db"
    with Database(path) as db:
        for i, problem in enumerate((sparse, summed, grad, sparse)):
            checked = [sparse.with_rows(3).to_dict()]
            assert db.insert(
                row(f"c{i}", problem_key=problem.key(), problem=problem.to_dict(), checked_problems=checked)
            )
        stored = db.conn.execute(
            "SELECT max(length(problem)), max(length(checked_problems)) FROM measurements"
        )
        assert max(stored.fetchone()) < 1000
        assert tuple(db.conn.execute("SELECT count(*), sum(length(layout)) FROM layouts").fetchone()) == (
            1,
            16384,
        )
        found = db.find()
        assert [type(p).from_dict(r["problem"]) for p, r in zip((sparse, summed, grad, sparse), found)] == [
            sparse,
            summed,
            grad,
            sparse,
        ]
        assert all(r["checked_problems"] == [json_round(sparse.with_rows(3).to_dict())] for r in found)
        assert db.export_csv(tmp_path / "t.csv") == 4
    with (tmp_path / "t.csv").open(newline="") as handle:  # kt export writes whole problems, as before
        exported = list(csv.DictReader(handle))
    assert sparse.layout in exported[0]["problem"] and sparse.layout in exported[1]["problem"]
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM layouts")
    conn.commit()
    conn.close()
    lacking = r"row id 1: its problem names layout sha256:.*layouts table lacks"
    with Database(path, readonly=True) as db, pytest.raises(DatabaseError, match=lacking):
        db.find()


def json_round(value):
    """`value` as JSON reads it back (tuples as lists)."""
    return json.loads(json.dumps(value))


def test_a_row_refused_leaves_no_layout_of_its_own_behind(tmp_path):
    """A row and the layouts it names are one transaction: the connection autocommits, so `with conn` began
    none, and a row refused after its layout was stored left the layout in the table, named by no row."""
    sparse = _layout_problems()[0]
    flipped = sparse.layout[:-1] + ("0" if sparse.layout[-1] != "0" else "1")
    other = type(sparse)(**{**sparse.__dict__, "layout": flipped})
    with Database(tmp_path / "t.db") as db:
        assert db.insert(row("c0", problem_key=sparse.key(), problem=sparse.to_dict()))
        # the same key (a row already there), its problem naming a layout the table does not hold yet
        assert not db.insert(row("c0", problem_key=sparse.key(), problem=other.to_dict()))
        assert db.conn.execute("SELECT count(*) FROM layouts").fetchone()[0] == 1
        assert not db.conn.in_transaction


def test_a_schema_5_database_of_whole_layouts_is_found_read_only_and_moved_once_opened_to_write(tmp_path):
    """A database of schema 5 or before holds whole layouts in its keys and problems. Read-only (kt.nn's lookup,
    `kt inspect`) it is not migrated, and a lookup by today's key compares each row's key as kt writes it now;
    opened to write, its keys and claims are renamed and its layouts moved to the layouts table once, so rows
    already measured are not measured again and every row reads as it did."""
    import csv

    from kt.autotune.database import claim_key, decode_row

    sparse, summed, _ = _layout_problems()
    path = tmp_path / "old.db"
    ident = {k: f"{k}-value" for k in KEY_COLUMNS}
    with Database(path) as db:  # rows as schema 5 wrote them: whole layouts in keys and problems, no layouts
        for problem in (sparse, summed):
            for config in ("c1", "c2"):
                assert db.insert(row(config, problem_key=problem.key(), runtime_ms=1.0))
                db.conn.execute(
                    "UPDATE measurements SET problem_key = ?, problem = ? WHERE config_key = ? AND problem_key = ?",
                    (
                        _whole_layout_key(problem),
                        json.dumps(problem.to_dict(), sort_keys=True),
                        config,
                        problem.key(),
                    ),
                )
        assert db.insert(row("c1", problem_key="gemm-key"))
        old_claim = claim_key({**ident, "config_key": "c3", "problem_key": _whole_layout_key(sparse)})
        db.conn.execute("INSERT INTO claims VALUES (?, 1, 'host', '2026-12-06T00:00:00+00:00')", (old_claim,))
        db.conn.execute("DROP TABLE layouts")
        db.conn.execute("PRAGMA user_version = 5")
    with Database(path, readonly=True) as db:
        assert db.legacy_keys
        found = db.find(problem_key=sparse.key(), status="ok")
        assert [r["config_key"] for r in found] == ["c1", "c2"]
        assert {r["problem_key"] for r in found} == {sparse.key()}
        assert all(r["problem"] == json_round(sparse.to_dict()) for r in found)
        assert db.count(problem_key=summed.key()) == 2 and db.count(problem_key="gemm-key") == 1
        db.export_csv(tmp_path / "old.csv")
    with (tmp_path / "old.csv").open(newline="") as handle:  # kt export writes the keys as kt reads them now
        assert {r["problem_key"] for r in csv.DictReader(handle)} == {sparse.key(), summed.key(), "gemm-key"}
    old_csv_row = decode_row({"problem_key": _whole_layout_key(summed)})  # a CSV an older kt exported
    assert old_csv_row["problem_key"] == summed.key()
    conn = sqlite3.connect(path)  # the read left the file as it was
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert conn.execute("SELECT max(length(problem_key)) FROM measurements").fetchone()[0] > 16384
    conn.close()
    old_size = path.stat().st_size

    with Database(path) as db:
        assert not db.legacy_keys
        assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        sizes = db.conn.execute("SELECT max(length(problem_key)), max(length(problem)) FROM measurements")
        assert max(sizes.fetchone()) < 1000
        assert db.conn.execute("SELECT count(*) FROM layouts").fetchone()[0] == 1
        where = {k: v for k, v in ident.items() if k != "config_key"}
        measured = db.measured_configs(**{**where, "problem_key": sparse.key()})
        assert sorted(measured) == ["c1", "c2"] and measured["c1"]["problem"] == json_round(sparse.to_dict())
        assert not db.insert(row("c1", problem_key=sparse.key())), "already measured, under its old key"
        assert db.insert(row("c3", problem_key=sparse.key()))
        new_claim = claim_key({**ident, "config_key": "c3", "problem_key": sparse.key()})
        assert [r[0] for r in db.conn.execute("SELECT claim_key FROM claims")] == [new_claim]
        assert db.find(problem_key="gemm-key")[0]["config_key"] == "c1"
    # the pages the whole layouts held went back to the file system (SQLite keeps a file's size: VACUUM)
    assert path.stat().st_size < old_size / 3, (path.stat().st_size, old_size)
    with Database(path, readonly=True) as db:
        assert not db.legacy_keys and db.count(problem_key=sparse.key()) == 3
        assert db.find(problem_key=summed.key())[0]["problem"] == json_round(summed.to_dict())


def test_bad_rows_are_refused_whole(tmp_path):
    with Database(tmp_path / "t.db") as db:
        with pytest.raises(ValueError, match="unknown measurement columns"):
            db.insert(row(speed=3))
        with pytest.raises(sqlite3.IntegrityError):
            db.insert(row(status="exploded"))
        assert db.count() == 0


def foreign_db(path):
    """An SQLite file of something else."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    return path


def newer_db(path):
    """A kt database written by a kt with a newer schema."""
    Database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    return path


def test_files_that_are_not_kt_databases_get_one_clear_error(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(DatabaseError, match="is not a kt tuning database"):
        Database(junk)
    other = foreign_db(tmp_path / "other.db")
    assert other.read_bytes()[18:20] == b"\x01\x01"  # a rollback journal's file, as SQLite makes one
    with pytest.raises(DatabaseError, match="is an SQLite file but not a kt tuning database"):
        Database(other)
    # refused before anything was changed: the switch to WAL came first, and another application's file was
    # left a WAL file (its header's bytes 18 and 19 2, 2) that older readers cannot open
    assert other.read_bytes()[18:20] == b"\x01\x01"
    newer = newer_db(tmp_path / "newer.db")
    with pytest.raises(DatabaseError, match=f"has schema 99, newer than this kt's {SCHEMA_VERSION}"):
        Database(newer)
    with pytest.raises(DatabaseError, match="is a directory"):
        Database(tmp_path)


def test_a_database_that_cannot_be_made_where_it_is_asked_for_says_so(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(
        DatabaseError,
        match=r"file/t\.db' cannot be created there \('.*/file' is a file, not a folder\)",
    ):
        Database(tmp_path / "file" / "t.db")
    if Path("/proc/self").exists():  # a folder no file can be made in, even as root
        with pytest.raises(
            DatabaseError, match=r"cannot be created there \(nothing can be made in '/proc' \("
        ):
            Database("/proc/kt-test.db")


def test_export_writes_every_column_of_the_matching_rows(tmp_path):
    import csv
    import json

    with Database(tmp_path / "t.db") as db:
        db.insert(row(rel_err=0.25, runner="cuda"))
        db.insert(row(config_key="second", status="crash", runner="cuda"))
        db.insert(row(config_key="third", runner="interpret", checked_problems=[{"m": 2}, {"m": 3}]))
        assert db.export_csv(tmp_path / "out" / "data.csv", runner="cuda") == 2
    with open(tmp_path / "out" / "data.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["config_key"] for r in rows] == ["m32n32k32g8w4s3x1", "second"]
    assert rows[0]["rel_err"] == "0.25" and json.loads(rows[0]["problem"]) == {"m": 1}
    assert "triton_version" in rows[0] and "device" in rows[0]
    with Database(tmp_path / "t.db") as db:
        db.export_csv(tmp_path / "all.csv")
    with open(tmp_path / "all.csv") as handle:
        third = list(csv.DictReader(handle))[2]
    assert json.loads(third["checked_problems"]) == [{"m": 2}, {"m": 3}], "list columns are JSON too"


def test_export_since_keeps_a_row_created_at_that_very_second(tmp_path):
    """`since` keeps the rows created then or later: a bug comparing with `>` drops the rows stamped exactly at
    `since`, the first second of the window a user asked for."""
    import csv

    with Database(tmp_path / "t.db") as db:
        db.insert(row(config_key="before", created_at="2024-05-01T11:59:59+00:00"))
        db.insert(row(config_key="at", created_at="2024-05-01T12:00:00+00:00"))
        db.insert(row(config_key="after", created_at="2024-05-01T12:00:01+00:00"))
        assert db.export_csv(tmp_path / "since.csv", since="2024-05-01T12:00:00+00:00") == 2
    with open(tmp_path / "since.csv") as handle:
        assert [r["config_key"] for r in csv.DictReader(handle)] == ["at", "after"]


def test_export_holds_one_row_at_a_time_and_a_bad_row_leaves_no_file(tmp_path):
    """`kt export` read every matching row into memory before writing the first: a database of block-sparse
    rows (each holding its layout, megabytes) needed all of them at once. Rows now go to the file as they are
    read; a row found bad part way leaves no file (the rows before it are not a whole export)."""
    import tracemalloc

    layout = "f" * 400_000  # a block-sparse problem's layout, as hex: 400 kB a row
    with Database(tmp_path / "t.db") as db:
        for i in range(40):
            db.insert(row(config_key=f"c{i}", problem={"m": 1, "layout": layout}))
        tracemalloc.start()
        try:
            assert db.export_csv(tmp_path / "all.csv") == 40
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # 40 rows: 16 MB read at once before (19 MB at peak); a row's copies as it is read, decoded and written
        # take 4 MB under Python 3.11 and 3.13, 4.1 MB under 3.10
        assert peak < 20 * len(layout), peak
        db.conn.execute("UPDATE measurements SET config = '{oops' WHERE id = 30")
        with pytest.raises(DatabaseError, match=r"row id 30: column config is not JSON"):
            db.export_csv(tmp_path / "cut.csv")
    assert not (tmp_path / "cut.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nor its temporary file


def test_a_database_path_too_long_for_sqlite_is_refused_naming_its_length(tmp_path):
    """SQLite opens no file at a full path over 512 bytes, its journal's "-journal" included: a --db of 505 bytes
    (names of 200 bytes each, every one within the file system's limit) failed after the op's heading with
    "cannot be created there (unable to open database file)". It is now refused first, with its length."""
    from kt.autotune.database import SQLITE_PATH_BYTES

    folder = tmp_path / ("a" * 200) / ("b" * 200)
    folder.mkdir(parents=True)
    room = SQLITE_PATH_BYTES - len(os.fsencode(os.path.realpath(folder))) - 1  # the name that fills the limit
    assert room > 3, "tmp_path is too long for this test"
    with Database(folder / ("c" * room)) as db:  # at the limit: made, written and read
        db.insert(row())
        assert len(db.find()) == 1
    too_long = folder / ("d" * (room + 1))
    for create in (True, False):
        with pytest.raises(DatabaseError, match=rf"is {SQLITE_PATH_BYTES + 1} bytes as a full path; SQLite opens a "
                           rf"database only at a path of at most {SQLITE_PATH_BYTES} bytes"):  # fmt: skip
            Database(too_long, create=create)
    assert not too_long.exists()


def test_a_query_naming_an_unknown_column_is_refused_by_name(tmp_path):
    """find and count check the columns they are given: a bug that passed them to SQL unchecked gives SQLite's
    own "no such column" error (or runs whatever the name holds) instead of kt's ValueError."""
    with Database(tmp_path / "t.db") as db:
        db.insert(row())
        with pytest.raises(ValueError, match=r"unknown measurement columns: \['bogus'\]"):
            db.find(bogus=1)
        with pytest.raises(ValueError, match="unknown measurement columns"):
            db.count(status="ok", bogus=1)
        assert db.count(status="ok") == 1 and len(db.find(id=1)) == 1


def test_a_read_only_open_reads_and_never_writes(tmp_path):
    path = tmp_path / "t.db"
    with Database(path) as db:
        db.insert(row(rel_err=0.5))
    before = path.read_bytes()
    with Database(path, create=False, readonly=True) as db:
        assert [r["rel_err"] for r in db.find()] == [0.5]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.insert(row(config_key="other"))
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("t.db-*")), "no -wal or -shm file is left beside it"
    with pytest.raises(DatabaseError, match="not found"):
        Database(tmp_path / "absent.db", readonly=True)
    assert not (tmp_path / "absent.db").exists()


def test_a_read_only_open_through_a_symbolic_link_sees_the_writers_log(tmp_path):
    """The write-ahead log was looked for beside the link, not beside its target where SQLite keeps it: the
    reader then opened the file as immutable, without locks, and missed the rows a live writer had logged
    (and, while it wrote, read duplicates or a "malformed" file)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    real, link = tmp_path / "real" / "t.db", tmp_path / "links" / "t.db"
    link.symlink_to(Path("..") / "real" / "t.db")
    writer = Database(real)
    try:
        writer.insert(row(rel_err=0.5))
        writer.insert(row(config_key="other", rel_err=0.25))
        assert (tmp_path / "real" / "t.db-wal").exists(), "the rows are in the log while the writer is open"
        for path in (real, link):
            with Database(path, create=False, readonly=True) as reader:
                assert sorted(r["rel_err"] for r in reader.find()) == [0.25, 0.5], path
    finally:
        writer.close()


def test_a_reader_opened_before_a_writer_starts_sees_every_row_the_writer_commits_once(tmp_path):
    """With no log beside the file as it opened, the reader read it as immutable, without locks: a tune that
    started during the read checkpointed pages under it (an export of 20,000 rows read 448 twice and missed
    1,282, or the file read as "malformed")."""
    path = tmp_path / "t.db"
    with Database(path) as db:
        for i in range(50):
            db.insert(row(config_key=f"c{i}"))
    assert not (tmp_path / "t.db-wal").exists()
    with Database(path, create=False, readonly=True) as reader:
        assert reader.count() == 50
        writer = Database(path)
        try:
            writer.conn.execute("PRAGMA wal_autocheckpoint=1")  # pages moved into the file as they commit
            for i in range(50, 400):
                writer.insert(row(config_key=f"c{i}", message="x" * 3000))
            ids = [r["id"] for r in reader.find()]
        finally:
            writer.close()
        assert sorted(ids) == list(range(1, 401)), (len(ids), len(set(ids)))


def test_a_read_only_open_refuses_what_is_not_a_kt_database_and_leaves_it_as_it_was(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(DatabaseError, match=r"empty\.db' is empty, so it is not a kt tuning database"):
        Database(empty, create=False, readonly=True)
    assert empty.stat().st_size == 0
    other = foreign_db(tmp_path / "other.db")
    before = other.read_bytes()
    with pytest.raises(DatabaseError, match="is an SQLite file but not a kt tuning database"):
        Database(other, create=False, readonly=True)
    assert other.read_bytes() == before
    newer = newer_db(tmp_path / "newer.db")
    with pytest.raises(DatabaseError, match=f"has schema 99, newer than this kt's {SCHEMA_VERSION}"):
        Database(newer, create=False, readonly=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(DatabaseError, match="is not a kt tuning database"):
        Database(junk, create=False, readonly=True)


def test_check_file_refuses_a_wrong_file_at_once_and_leaves_a_new_database_to_be_made(tmp_path):
    """What the CLI asks as the command line is read: every file is left as it was."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    for create in (True, False):
        with pytest.raises(DatabaseError, match="junk.db' is not a kt tuning database"):
            check_file(junk, create)
        with pytest.raises(DatabaseError, match="is an SQLite file but not a kt tuning database"):
            check_file(foreign_db(tmp_path / f"other{create}.db"), create)
    empty = tmp_path / "empty.db"
    empty.touch()
    blank = tmp_path / "blank.db"  # a tune stopped after SQLite wrote its header, before kt's tables
    conn = sqlite3.connect(blank)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    before = blank.read_bytes()
    for path, why in ((empty, "is empty"), (blank, "holds no tables")):
        check_file(path, create=True)  # a tune makes its tables there
        with pytest.raises(DatabaseError, match=why):
            check_file(path, create=False)
    assert empty.stat().st_size == 0 and blank.read_bytes() == before
    with Database(blank) as db:  # and it does
        db.insert(row())
    check_file(blank, create=False)
    check_file(tmp_path / "new.db", create=True)
    assert not (tmp_path / "new.db").exists()
    with pytest.raises(DatabaseError, match="not found"):
        check_file(tmp_path / "new.db", create=False)


@pytest.mark.parametrize("damaged", ["{oops", "[" * 3000 + "]" * 3000])
def test_a_row_whose_json_column_is_not_json_is_named_by_its_id(tmp_path, damaged):
    """Nested past Python's recursion limit, a cell raised a RecursionError: a traceback, exit 1."""
    path = tmp_path / "t.db"
    with Database(path) as db:
        db.insert(row())
        db.insert(row(config_key="other"))
        db.conn.execute("UPDATE measurements SET config = ? WHERE id = 2", (damaged,))
    with (
        Database(path, create=False, readonly=True) as db,
        pytest.raises(DatabaseError, match=r"t\.db' row id 2: column config is not JSON"),
    ):
        db.find()


@pytest.mark.parametrize("column, value", [("rel_err", "x"), ("smem_bytes", "big"), ("runtime_ms", b"\x00")])
def test_a_row_with_text_in_a_numeric_column_is_named_by_its_id(tmp_path, column, value):
    """SQLite keeps text that is no number in a REAL or INTEGER column: kt tune's results table then raised a
    ValueError or TypeError (exit 1)."""
    path = tmp_path / "t.db"
    with Database(path) as db:
        db.insert(row())
        db.insert(row(config_key="other"))
        db.conn.execute(f"UPDATE measurements SET {column} = ? WHERE id = 2", [value])
    with (
        Database(path, create=False, readonly=True) as db,
        pytest.raises(
            DatabaseError,
            match=rf"t\.db' row id 2: column {column} is .*, not a number \(the row .*WHERE id = 2` in sqlite3",
        ),
    ):
        db.find()


def test_tunes_opening_a_new_database_at_once_all_get_it(tmp_path):
    """Several ops tuned at once (threads of one process, or processes) create the file together: each waits
    its turn for the schema instead of failing with "database is locked"."""
    import threading

    for attempt in range(5):
        path, errors = tmp_path / f"race{attempt}.sqlite", []

        def open_it(path=path, errors=errors):
            try:
                with Database(path):
                    pass
            except DatabaseError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


def test_a_database_damaged_or_failing_once_open_is_one_line_not_a_traceback(tmp_path):
    """SQLite errors after the file opened (a damaged page read by a query, the disk filling up mid-tune)
    escaped the CLI as tracebacks (exit 1); a read-only or full file was called "not a kt tuning database"."""
    import os
    import subprocess
    import sys

    from kt.autotune.database import failure

    path = tmp_path / "big.db"
    with Database(path) as db:
        for i in range(600):
            db.insert(row(config_key=f"c{i}", message="x" * 200))
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = path.stat().st_size // 4096
    with path.open("r+b") as handle:  # a page of rows in the middle, overwritten: the header still opens
        handle.seek(4096 * (pages // 2) + 8)
        handle.write(b"\xa5" * 4000)
    for command in (["export", str(tmp_path / "x.csv"), "--db", str(path)], ["inspect", str(path)]):
        done = subprocess.run(
            [sys.executable, "-m", "kt.cli", *command], capture_output=True, text=True, timeout=300,
            env={**os.environ, "KT_CACHE_DIR": str(tmp_path / "cache")},
        )  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert (
            f"big.db' is damaged (database disk image is malformed); `sqlite3 {path} .recover`" in done.stderr
        )
    assert not (tmp_path / "x.csv").exists()
    for name, says in [
        ("SQLITE_FULL", "t.db': the disk is full (database or disk is full); free space there"),
        ("SQLITE_READONLY", "t.db' cannot be written (database or disk is full); give a --db"),
        ("SQLITE_IOERR_WRITE", "t.db': the disk failed"),
        ("SQLITE_IOERR_SHMSIZE", "t.db': the disk is full"),  # no room for the -shm file as it opens
    ]:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorname = name
        assert says in failure(exc, tmp_path / "t.db")


def test_a_database_locked_past_the_wait_mid_tune_says_so_and_that_a_rerun_goes_on(tmp_path, monkeypatch):
    """Another process holding the write lock past the busy timeout while a tune wrote its rows: "SQLite failed
    (database is locked)", with no word of the wait or of the rows kept."""
    import kt.autotune.database as database

    monkeypatch.setattr(database, "LOCKED_WAIT_S", 0.2)  # the wait, not the lock, made short
    path = tmp_path / "t.db"
    with Database(path) as db:
        db.insert(row(config_key="kept"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(sqlite3.OperationalError) as error:
                db.insert(row(config_key="later"))
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert database.failure(error.value, path) == (
        f"db: {str(path)!r} stayed locked by another process for the 0.2 s kt waits (database is locked); what "
        "was already committed is kept (a tune run again goes on from its rows)"
    )
    with Database(path) as db:
        assert [r["config_key"] for r in db.all_rows()] == ["kept"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_a_claim_whose_pid_now_names_a_later_process_is_stale(tmp_path):
    """A killed tune's claims name its pid; once the system gives that pid to another process (a container
    soon does), the claim looked held and a later tune waited for it forever."""
    import subprocess
    from datetime import datetime, timedelta, timezone

    from kt.autotune.database import _alive, _host

    now = datetime.now(timezone.utc)
    earlier = (now - timedelta(minutes=5)).isoformat(timespec="seconds")
    later = subprocess.Popen(["sleep", "60"])  # started after a claim made five minutes ago
    try:
        assert not _alive(later.pid, _host(), earlier, now)
        assert _alive(later.pid, _host(), (now + timedelta(seconds=5)).isoformat(timespec="seconds"), now)
    finally:
        later.kill()
        later.wait()
    assert _alive(os.getpid(), _host(), now.isoformat(timespec="seconds"), now)  # this process: the holder


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_a_claim_whose_holder_was_killed_and_not_yet_reaped_is_stale():
    """Signal 0 reaches a zombie: a tune killed under a driver that never waited on it (or under a container's
    PID 1 that reaps nothing) held its claims, and the next tune waited for them as long as it stayed so."""
    import subprocess
    import time
    from datetime import datetime, timedelta, timezone

    from kt.autotune.database import _alive, _host

    now = datetime.now(timezone.utc)
    holder = subprocess.Popen(["sleep", "60"])
    claimed = (now + timedelta(seconds=5)).isoformat(timespec="seconds")  # the claim is the holder's own
    try:
        assert _alive(holder.pid, _host(), claimed, now)
        holder.kill()
        for _ in range(200):  # until it is a zombie (not reaped: no wait() yet)
            with open(f"/proc/{holder.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        assert not _alive(holder.pid, _host(), claimed, now)
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_tunes_claim_is_dropped_though_its_key_is_never_asked_for_again(tmp_path):
    """A tune killed after candidate zero's row went in left its claim: later tunes never claim a measured
    candidate zero, and a dead holder's claim was only dropped when its own key was claimed."""
    import subprocess

    from kt.autotune.database import _host, claim_key

    gone = subprocess.Popen(["true"])
    gone.wait()
    with Database(tmp_path / "t.db") as db:
        db.insert(row(config_key="zero"))
        zero = {**{k: f"{k}-value" for k in KEY_COLUMNS}, "config_key": "zero"}
        db.conn.execute(
            "INSERT INTO claims VALUES (?, ?, ?, '2026-12-05T10:00:00+00:00')",
            [claim_key(zero), gone.pid, _host()],
        )
        assert db.claim([{**zero, "config_key": "next"}]) == ["mine"]
        assert [c["claim_key"] for c in db.claims()] == [claim_key({**zero, "config_key": "next"})]


def test_a_database_in_a_folder_where_no_file_can_be_made_is_refused_before_a_tune(tmp_path):
    """SQLite opens -wal and -shm files beside the database as it writes: a writable file in a read-only folder
    was "a readonly database (attempt to write a readonly database)", after the op's heading."""
    import sys

    from conftest import run_as_user

    folder, writable = tmp_path / "ro", tmp_path / "rw"
    folder.mkdir()
    writable.mkdir()
    for where in (folder / "t.db", writable / "t.db"):
        with Database(where) as db:
            db.insert(row())
    # SQLite writes beside the file a link names: a link into the read-only folder is refused, one from it is not
    (writable / "into.db").symlink_to(folder / "t.db")
    (folder / "out.db").symlink_to(writable / "t.db")
    folder.chmod(0o555)
    try:
        code = (
            "import sys\nfrom pathlib import Path\nfrom kt.autotune.database import DatabaseError, check_file\n"
            "for path, create in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    try:\n"
            "        check_file(Path(path), create=create == 'create')\n"
            "        print('ok')\n"
            "    except DatabaseError as e:\n"
            "        print(e)\n"
        )
        cases = [folder / "t.db", "create", folder / "t.db", "read", writable / "into.db", "create"]
        done = run_as_user([sys.executable, "-c", code, *map(str, cases), folder / "out.db", "create"])
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr
    refused = (
        "is in a folder where no file can be made ({}), and SQLite makes its -wal and -shm files beside the "
        "database as it writes; move it to a writable folder or give another --db"
    )
    assert done.stdout.splitlines() == [  # a tune is refused; reading it (kt inspect, export) is not
        f"db: {str(folder / 't.db')!r} " + refused.format(folder),
        "ok",
        f"db: {str(writable / 'into.db')!r} " + refused.format(folder),
        "ok",
    ]


def test_a_database_with_its_log_in_a_read_only_folder_is_not_told_to_be_written(tmp_path):
    """A copy taken while a tune wrote keeps its newest rows in the -wal beside it. SQLite reads such a file only
    where it can make a -shm file (its own shell fails too): a read-only command said the file "cannot be
    written ... give a --db where kt may write"."""
    import shutil
    import sys

    from conftest import run_as_user

    source, folder = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    folder.mkdir()
    with Database(source / "t.db") as db:
        db.conn.execute("PRAGMA wal_autocheckpoint=0")
        db.insert(row())
        for name in ("t.db", "t.db-wal"):  # copied as the writer holds them open: the row is in the log only
            shutil.copy(source / name, folder / name)
    folder.chmod(0o555)
    try:
        code = (
            "import sys\nfrom kt.autotune.database import Database, DatabaseError\n"
            "try:\n    Database(sys.argv[1], create=False, readonly=True)\n"
            "except DatabaseError as e:\n    print(e)\n"
        )
        done = run_as_user([sys.executable, "-c", code, str(folder / "t.db")])
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"db: {str(folder / 't.db')!r} has a write-ahead log beside it (t.db-wal), which SQLite reads only where "
        "it may create its -shm file, and this folder is read-only; copy the file and its -wal to a folder kt "
        "may write, or open it once where it lies from an account that may write"
    )
    with Database(folder / "t.db", create=False, readonly=True) as db:  # where it may: the row is there
        assert db.count() == 1


def test_a_read_only_file_a_link_loop_and_a_link_to_nothing_are_answered_before_a_tune(tmp_path):
    """A read-only database file and a link loop were refused only after the op's heading, by SQLite ("attempt to
    write a readonly database", "unable to open database file"); a link into a folder not yet made failed
    there too, where a plain path into one is made. From Python 3.13 Path.resolve returns a link of a loop where
    it raised before: the loop passed the check (found on 3.13.0) and SQLite failed after the heading."""
    import sys

    from conftest import run_as_user

    readonly = tmp_path / "ro.db"
    with Database(readonly) as db:
        db.insert(row())
    readonly.chmod(0o444)
    (tmp_path / "loop.db").symlink_to("loop.db")
    (tmp_path / "a.db").symlink_to("b.db")  # a loop of two links
    (tmp_path / "b.db").symlink_to("a.db")
    (tmp_path / "to-nothing.db").symlink_to(tmp_path / "later" / "t.db")
    code = (
        "import sys\nfrom pathlib import Path\nfrom kt.autotune.database import DatabaseError, check_file\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        check_file(Path(path))\n"
        "        print('ok')\n"
        "    except DatabaseError as e:\n"
        "        print(e)\n"
    )
    loops = [str(tmp_path / name) for name in ("loop.db", "a.db")]
    done = run_as_user([sys.executable, "-c", code, str(readonly), *loops])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"db: {str(readonly)!r} is a read-only file; make it writable or give another --db",
        *(f"db: {loop!r} is a symbolic link that leads round in a loop" for loop in loops),
    ]
    with Database(tmp_path / "to-nothing.db") as db:  # the folder the link names is made, as for a path
        db.insert(row())
    assert (tmp_path / "later" / "t.db").is_file()


def test_a_cut_off_database_is_damaged_and_a_damaged_space_is_named_as_the_argument(tmp_path):
    """A kt database cut to half its size was "not a kt tuning database"; `kt replay DAMAGED.db` said "db: ...
    or give another --db" of its SPACE argument (replay has no --db)."""
    from kt.autotune.dataset import read_rows

    path = tmp_path / "big.db"
    with Database(path) as db:
        for i in range(600):
            db.insert(row(config_key=f"c{i}", message="x" * 200))
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DatabaseError, match=r"cut.db' is damaged \(database disk image is malformed\); `sqlite3"
    ):
        Database(cut).close()
    # given as kt inspect's DB (no --db there): "or give another --db" sent it to inspect's --db refusal
    from conftest import kt_cli

    done = kt_cli("inspect", cut)
    assert (
        done.returncode == 2
        and "is damaged" in done.stderr
        and done.stderr.rstrip().endswith("may save its rows, or give another file")
    ), done.stderr
    # a --plots that is no folder is refused before the work (it failed after it, naming no option)
    Database(tmp_path / "ok.db").close()
    done = kt_cli("inspect", tmp_path / "ok.db", "--plots", os.devnull)
    assert done.returncode == 2 and "plots: '/dev/null' exists and is not a folder" in done.stderr, (
        done.stderr
    )
    pages = len(data) // 4096
    with path.open("r+b") as handle:  # a page of rows overwritten: it opens, and fails as its rows are read
        handle.seek(4096 * (pages // 2) + 8)
        handle.write(b"\xa5" * 4000)
    with pytest.raises(
        DatabaseError,
        match=r"^space: '.*big.db' is damaged .* \.recover` may save its rows, or give another file$",
    ):
        read_rows(path, "space")


def test_a_database_named_csv_is_refused_where_made_and_read_as_a_database_where_one_exists(tmp_path):
    """`kt collect --db sweep.csv` made an SQLite file that kt costmodel, inspect and replay then read as a CSV
    of `kt export` ("line 2: not UTF-8 text"). Such a path is refused where a database would be made; one made
    before is read as the database it is."""
    from click.testing import CliRunner

    from kt.autotune.database import check_data
    from kt.autotune.dataset import read_rows
    from kt.cli import main

    made = tmp_path / "sweep.csv"
    with pytest.raises(
        DatabaseError,
        match=r"^db: '.*sweep.csv' ends in .csv, the suffix of `kt export`'s CSV files, not of a tuning database",
    ):
        check_file(made)
    result = CliRunner().invoke(
        main, ["tune", "examples/dense.yaml", "--db", str(made), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "ends in .csv" in result.stderr and result.stderr.count("\n") == 1
    assert not made.exists()
    with Database(tmp_path / "sweep.db") as db:
        db.insert(row())
    (tmp_path / "sweep.db").rename(made)  # as kt made it before
    check_data(made)
    check_file(made)  # one made before is still written: a tune may add to it
    with Database(made) as db:
        db.insert(row(config_key="m64n32k32g8w4s3x1"))
    with pytest.raises(
        DatabaseError, match="sweep.csv' row id 1: column family"
    ):  # read as a database's rows
        read_rows(made)  # (this file's row() has placeholder values, which the reader then checks)


def test_a_write_that_waits_for_another_process_says_so(tmp_path, caplog):
    """A tune whose database another process held for writing waited up to a minute after its heading without
    a word. Past LOCK_NOTE_S it says that it waits, then goes on once the lock is free."""
    import threading

    from kt.autotune.database import LOCK_NOTE_S

    path = tmp_path / "t.db"
    Database(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(LOCK_NOTE_S + 1.0, holder.rollback).start()
    with caplog.at_level("WARNING", logger="kt.db"), Database(path) as db:
        assert db.insert(row())
    assert [r.getMessage() for r in caplog.records] == [
        f"db: {str(path)!r} is locked by another writer (a kt, or any SQLite connection); waiting up to 60 s for it"
    ]
    holder.close()


def test_a_new_database_on_a_full_disk_says_the_disk_is_full(tmp_path):
    """A new --db on a full disk read "cannot be created there (disk I/O error)" (SQLite fails to grow the -shm
    file as it opens), where an existing one said the disk is full. A real full disk: a 48 KiB tmpfs in a mount
    namespace of its own (root or user namespaces needed; skipped where neither is allowed)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    full = tmp_path / "full"
    full.mkdir()
    script = (
        f"mount -t tmpfs -o size=48k tmpfs {full} || exit 77\n"
        f"dd if=/dev/zero of={full}/pad bs=1k count=40 2>/dev/null\n"
        f'"$0" -c "import sys; from kt.autotune.database import Database\n'
        f"try: Database('{full}/t.db')\nexcept Exception as e: print(e)\"\n"
    )
    done = subprocess.run(
        ["unshare", "-m", "--map-root-user", "bash", "-c", script, sys.executable],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    if done.returncode == 77 or "unshare:" in done.stderr:
        pytest.skip(f"no tmpfs can be mounted here: {done.stderr.strip()}")
    assert done.stdout.strip() == (
        f"db: '{full}/t.db' cannot be created there: the disk is full (disk I/O error); free space there or give "
        "another --db"
    ), done.stdout + done.stderr


@pytest.mark.parametrize(
    "words, said",
    [
        ("database disk image is malformed", "is damaged (database disk image is malformed); `sqlite3 "),
        ("file is not a database", "is damaged (file is not a database)"),
        ("database or disk is full", ": the disk is full (database or disk is full); free space there"),
        ("attempt to write a readonly database", "cannot be written (attempt to write a readonly database)"),
        ("database is locked", "stayed locked by another process for the 60 s kt waits (database is locked)"),
        ("disk I/O error", ": the disk failed (disk I/O error)"),
        ("no such table: x", ": SQLite failed (no such table: x)"),
    ],
)
def test_an_sqlite_error_without_its_code_is_told_by_sqlites_words(tmp_path, words, said):
    """Python 3.10's sqlite3 errors carry no sqlite_errorname (3.11 added it): every one of them read "SQLite
    failed (...)" or "not a kt tuning database", where 3.11 said the database is damaged, locked, read-only or
    on a full disk (found running the suite on Python 3.10.13). An error as 3.10 raises it, made here."""
    from kt.autotune.database import failure

    exc = sqlite3.OperationalError(words)
    assert not hasattr(exc, "sqlite_errorname")
    assert failure(exc, tmp_path / "t.db").startswith(f"db: {str(tmp_path / 't.db')!r}")
    assert said in failure(exc, tmp_path / "t.db")


MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 0:50 / /home rw,relatime shared:12 - nfs4 server:/export/home rw,vers=4.2
41 40 0:51 / /home/ann/scratch\040space rw,relatime - lustre 10.0.0.1@tcp:/scratch rw
42 27 0:52 / /mnt/data rw - ext4 /dev/sdb1 rw
43 27 0:53 / /mnt/data rw master:3 - cifs //nas/data rw
"""


def test_mount_type_is_the_type_of_the_longest_mount_holding_the_path(tmp_path):
    from kt.files import mount_type

    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    for path, kind in [
        ("/home/ann/tuning.db", "nfs4"),
        ("/home", "nfs4"),
        ("/homework/t.db", "ext4"),  # a longer name, not a folder under /home
        ("/home/ann/scratch space/kt/t.db", "lustre"),  # octal-escaped space in the mount point
        ("/mnt/data/t.db", "cifs"),  # stacked mounts: the last one listed is the one seen
        ("/var/t.db", "ext4"),
    ]:
        assert mount_type(path, mountinfo=str(info)) == kind, path
    assert mount_type("/x", mountinfo=str(tmp_path / "absent")) is None


@pytest.fixture
def on_nfs(monkeypatch):
    """Every database path on an NFS mount, as /proc/self/mountinfo would say of one."""
    import kt.autotune.database as database

    monkeypatch.setattr(database, "network_filesystem", lambda path: "nfs4")
    monkeypatch.setattr(database, "_WARNED_SHARED", set())


def test_a_database_on_a_network_filesystem_uses_a_rollback_journal_and_is_read_with_locks(tmp_path, on_nfs):
    """SQLite's write-ahead log works only among processes of one host (sqlite.org/wal.html), and kt's claims
    are made for tunes on several hosts sharing one database: on NFS, Lustre, GPFS, ... kt made it a WAL file."""
    path = tmp_path / "t.db"
    with Database(path) as writer:
        assert writer.shared == "nfs4"
        assert writer.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        writer.insert(row(rel_err=0.5))
        assert not list(tmp_path.glob("t.db-*")), "no -wal or -shm file"
        # a reader open beside a writer takes locks, and so sees what the writer commits after it opened (as
        # immutable, which a file with no log beside it was opened as, it read the file as it first found it)
        with Database(path, create=False, readonly=True) as reader:
            assert [r["rel_err"] for r in reader.find()] == [0.5]
            writer.insert(row(config_key="other", rel_err=0.25))
            assert sorted(r["rel_err"] for r in reader.find()) == [0.25, 0.5]
        with Database(path) as other:  # a second writer: the claims' case
            assert other.insert(row(config_key="third")) and writer.count() == 3


def test_a_wal_database_moved_to_a_network_filesystem_gets_a_rollback_journal_unless_another_holds_it(
    tmp_path, monkeypatch, caplog
):
    import kt.autotune.database as database

    path = tmp_path / "t.db"
    with Database(path) as db:  # made on a local disk
        db.insert(row())
    held = sqlite3.connect(path)  # another process's WAL connection, open (a tune on another host, say)
    held.execute("SELECT count(*) FROM measurements").fetchone()
    monkeypatch.setattr(database, "network_filesystem", lambda path: "lustre")
    monkeypatch.setattr(database, "_WARNED_SHARED", set())
    with caplog.at_level("WARNING", logger="kt.db"), Database(path) as db:
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(caplog.records) == 1, caplog.records
    assert "lies on a lustre filesystem, where SQLite's write-ahead log is safe only" in caplog.text
    held.close()
    with Database(path) as db:
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete" and db.count() == 1


def test_an_export_with_a_cell_over_csvs_default_limit_reads_back(tmp_path):
    """Python's csv refuses a field over 131,072 characters unless told: a block-sparse W's layout (262,144 for
    16384 square in 16x16 blocks) or a long message, which `kt export` writes, failed kt's own reader."""
    from kt.files import csv_records

    path = tmp_path / "t.db"
    with Database(path) as db:
        db.insert(row(message="x" * 200_000))
        assert db.export_csv(tmp_path / "out.csv") == 1
    ((_, record),) = list(csv_records((tmp_path / "out.csv").read_text(), "data", DatabaseError))
    assert record["message"] == "x" * 200_000


def test_a_csv_row_is_named_by_the_line_it_starts_on_counted_as_editors_count():
    """`kt export` writes a message's line breaks as they are: csv named a row by its last line, and counted a
    lone \\r inside a cell as a line of its own, so an error named the row after the bad one (line 6 for a row
    starting on line 3). Lines are counted by \\n, a row by its first, as grep -n shows them."""
    from kt.files import csv_records

    text = 'id,message\n1,"one\ntwo\r\nthree\rfour"\n2,plain\n3,"a\rb"\n4,last\n'
    where = [at for at, _ in csv_records(text, "data", DatabaseError)]
    assert where == ["data line 2", "data line 5", "data line 6", "data line 7"]
    records = [r["message"] for _, r in csv_records(text, "data", DatabaseError)]
    assert records == ["one\ntwo\r\nthree\rfour", "plain", "a\rb", "last"]
    with pytest.raises(DatabaseError, match=r"^data line 4: 3 cells, the header has 2"):
        list(csv_records('id,message\n1,"x\ry\nz"\n2,a,b\n', "data", DatabaseError))


def test_a_database_without_its_log_in_a_read_only_folder_is_read_as_it_stands(tmp_path):
    """Where SQLite's locks cannot be had (no -shm file can be made beside a WAL file), the reader falls back to
    reading the file as it stands, as every read did before it took locks."""
    import sys

    from conftest import run_as_user

    folder = tmp_path / "ro"
    folder.mkdir()
    with Database(folder / "t.db") as db:
        db.insert(row())
    assert sorted(p.name for p in folder.iterdir()) == ["t.db"]
    folder.chmod(0o555)
    try:
        code = (
            "import sys\nfrom kt.autotune.database import Database\n"
            "with Database(sys.argv[1], create=False, readonly=True) as db:\n    print(db.count())\n"
        )
        done = run_as_user([sys.executable, "-c", code, str(folder / "t.db")])
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0 and done.stdout.strip() == "1", (done.stdout, done.stderr)
    assert sorted(p.name for p in folder.iterdir()) == ["t.db"]
