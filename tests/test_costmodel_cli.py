"""kt costmodel fit/eval and kt inspect: one-line refusals, and real measurements end to end.

No runtime or power figure here is made up. The error paths use rows that carry no timing at all (the
interpreter's). The success paths use GPPerf's CUTLASS SGEMM measurements on an RTX 4070 (see
/work/shared/data/gpperf/README.md), skipped where that file is absent; it is read, never copied.
"""

import csv
import json
import re
import shutil
import sqlite3
import statistics
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import GPPERF, benchmark_module

from kt.autotune.database import CSV_COLUMNS, Database
from kt.autotune.inspection import inspect_tune, pareto_front
from kt.cli import main
from kt.costmodel.evaluate import assign_folds, holdout_key
from kt.costmodel.forest import ForestModel
from kt.device import load_profile, save_profile
from kt.ir import GemmProblem

GPPERF_CSV = GPPERF / "cutlass_results_flat.csv"
RTX4070 = "NVIDIA GeForce RTX 4070"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# The RTX 4070's datasheet profile, defined once, by the GPPerf benchmark.
GPPERF_BENCHMARK = benchmark_module("gpperf_costmodel")
RTX4070_PROFILE = GPPERF_BENCHMARK.RTX4070

# Every GPPerf row ran cutlass_simt_sgemm_128x128_8x2_<layout>, as a kt config (see the benchmark).
CUTLASS_CONFIG = GPPERF_BENCHMARK.CONFIG
CUTLASS_KEY = "m128n128k8g1w8s2x1"
# One layout per (M, N, K), so no problem has a near-twin of another layout in training; seven have power.
SHAPES = [
    (512, 512, 512, "nn"),
    (1024, 512, 1024, "nn"),
    (2048, 2048, 2048, "nn"),
    (128256, 1024, 2048, "nn"),
    (128256, 2048, 512, "tt"),
    (128256, 2048, 1024, "nn"),
    (128256, 2048, 2048, "tn"),
    (512, 1024, 2048, "nt"),
    (1024, 1024, 1024, "tt"),
    (2048, 512, 512, "tn"),
    (1024, 2048, 512, "nt"),
    (2048, 1024, 2048, "tt"),
]
# CUTLASS's n is column-major (stored transposed in kt's terms), t row-major: the benchmark's mapping
LAYOUT = {
    letter: "col" if column_major else "row" for letter, column_major in GPPERF_BENCHMARK.COLUMN_MAJOR.items()
}


def kt(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_one_line_error(result, message):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("kt: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr


# -- refusals: data without a single timing -----------------------------------------------------------------


def interpreter_db(path: Path, problem: GemmProblem) -> Path:
    """A database holding what a CPU tune writes: interpreter rows that passed the check, never timed."""
    with Database(path) as db:
        for block in (16, 32):
            config = {**CUTLASS_CONFIG, "block_m": block, "block_n": block, "block_k": 32, "num_stages": 3}
            db.insert(
                {
                    "runner": "interpret",
                    "device": "cpu (Triton interpreter)",
                    "target": "h100",
                    "family": "gemm",
                    "family_version": "test",
                    "problem_key": problem.key(),
                    "config_key": f"m{block}n{block}k32g1w8s3x1",
                    "problem": problem.to_dict(),
                    "config": config,
                    "status": "ok",
                    "triton_version": "test",
                }
            )
    return path


def test_fit_refuses_a_missing_data_file_and_writes_nothing(tmp_path):
    result = kt("costmodel", "fit", "--data", tmp_path / "none.db", "--out", tmp_path / "m.skops")
    assert_one_line_error(result, "none.db' not found")
    assert not (tmp_path / "m.skops").exists()


def test_fit_and_eval_refuse_data_without_gpu_measurements(tmp_path):
    db = interpreter_db(tmp_path / "cpu.db", GemmProblem(64, 64, 64))
    result = kt("costmodel", "fit", "--data", db, "--out", tmp_path / "m.skops")
    assert_one_line_error(result, "holds no GPU-measured passing rows for target h100")
    assert "(only rows that check but never time: 2 from Triton's interpreter)" in result.stderr
    assert "kt collect" in result.stderr
    assert not (tmp_path / "m.skops").exists()
    assert_one_line_error(kt("costmodel", "eval", "--data", db), "no GPU-measured passing rows")
    assert_one_line_error(kt("inspect", db), "nothing to compare")
    # the dry run's rows are named too (they were left out of the count)
    with Database(db) as database:
        row = database.find()[0]
        database.insert(
            {**{k: v for k, v in row.items() if k != "id"}, "runner": "dryrun", "config_key": "d"}
        )
    result = kt("costmodel", "fit", "--data", db, "--out", tmp_path / "m.skops")
    assert "2 from Triton's interpreter, 1 from the dry run (--backend dryrun))" in result.stderr
    # kt inspect counted only the interpreter's rows
    result = kt("inspect", db)
    assert_one_line_error(
        result, "(its rows were checked, never timed: 2 from Triton's interpreter, 1 from the dry"
    )
    # a CSV without the runtime_ms column says so (it said only that nothing was measured on a GPU)
    exported = tmp_path / "rows.csv"
    with Database(db, create=False, readonly=True) as database:
        database.export_csv(exported)
    with open(exported, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(exported, "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=[k for k in rows[0] if k != "runtime_ms"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows({**row, "id": str(i)} for i, row in enumerate(rows, 1))  # one database's ids
    result = kt("costmodel", "fit", "--data", exported, "--out", tmp_path / "m.skops")
    assert_one_line_error(result, "rows.csv' is not a `kt export` CSV (no runtime_ms column)")
    assert_one_line_error(kt("replay", exported, "--budget", "5"), "(no runtime_ms column)")  # "no sweep"
    # a status kt never writes (the database's own CHECK refuses one) left the row out of every fit in silence
    rows[1]["status"] = "weird"
    with open(exported, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "id": str(i)} for i, row in enumerate(rows, 1))  # one database's ids
    result = kt("costmodel", "fit", "--data", exported, "--out", tmp_path / "m.skops")
    assert_one_line_error(result, "rows.csv' line 3: column status is 'weird'; allowed: ok, compile_error, ")
    # nor a runner (a GPU's row as "CUDA" was left out of every fit and replay), nor a number with an
    # underscore, which int() and float() read ("1_0" as 10)
    for column, value, words in (
        ("runner", "CUDA", "column runner is 'CUDA'; kt's runners are cuda, interpret, dryrun"),
        ("runtime_ms", "1_0", "column runtime_ms is '1_0'; allowed: a finite number of milliseconds > 0"),
        # full-width digits and padding, which they read too (the columns beside the runtime: MALFORMED)
        (
            "runtime_ms",
            "\uff11.5",
            "column runtime_ms is '\uff11.5'; allowed: a finite number of milliseconds > 0",
        ),
        ("runtime_ms", " 0.5", "column runtime_ms is ' 0.5'; allowed: a finite number of milliseconds > 0"),
    ):
        changed = [dict(row) for row in rows]
        changed[1].update(status="ok", **{column: value})
        with open(exported, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(changed)
        result = kt("costmodel", "fit", "--data", exported, "--out", tmp_path / "m.skops")
        assert_one_line_error(result, f"rows.csv' line 3: {words}")


def test_fit_refuses_a_csv_that_kt_did_not_write(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("name,owner\nsgemm,someone\n")
    result = kt("costmodel", "fit", "--data", other, "--out", tmp_path / "m.skops")
    assert_one_line_error(result, "is not a `kt export` CSV")
    if GPPERF_CSV.is_file():  # real measurements, but not in kt's format
        result = kt("costmodel", "fit", "--data", GPPERF_CSV, "--out", tmp_path / "m.skops")
        assert_one_line_error(result, "is not a `kt export` CSV (no config, config_key, device, family")
    assert not (tmp_path / "m.skops").exists()


def test_another_tools_measurements_given_as_data_name_the_command_that_reads_them(tmp_path):
    """An Inductor log (a source the README names) or a Kernel Tuner cache given to --data was only "not a kt
    tuning database". The files here hold the two formats' headers, no measurement."""
    import gzip

    log = tmp_path / "h100_mm.txt.gz"
    with gzip.open(log, "wt") as file:
        file.write('{"name": "mm", "numerical_features": ["m", "k", "n"]}\nm,k,n,choice,feedback\n')
    cache = tmp_path / "gemm.json"
    cache.write_text('{"device_name": "x", "tune_params_keys": ["MWG"], "tune_params": {"MWG": [16]}}')
    result = kt("costmodel", "fit", "--data", log, "--out", tmp_path / "m.skops")
    assert_one_line_error(
        result, "it is a PyTorch Inductor autoheuristic log, which `kt import inductor` turns"
    )
    result = kt("costmodel", "eval", "--data", cache)
    assert_one_line_error(result, "it is a Kernel Tuner cache, which `kt replay` replays")
    plain = tmp_path / "notes.txt"
    plain.write_text("m,k,n\n")
    assert "it is" not in kt("costmodel", "eval", "--data", plain).stderr


def test_eval_refuses_a_file_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "model.skops"
    bogus.write_text("not a model\n")
    data = tmp_path / "rows.csv"  # its header is checked as the command line is read; its rows never are
    data.write_text(",".join(CSV_COLUMNS) + "\n")
    result = kt("costmodel", "eval", "--data", data, "--model", bogus)
    assert_one_line_error(result, "is not a skops file")


# -- malformed data: one line naming the file, the line or row id, and the column --------------------------

# (column, what the second row holds there, what the error says of it); none of these is a runtime
MALFORMED = [
    ("runtime_ms", "nan", "allowed: a finite number of milliseconds > 0"),
    ("runtime_ms", "inf", "allowed: a finite number of milliseconds > 0"),
    ("runtime_ms", "fast", "allowed: a finite number of milliseconds > 0"),
    ("runtime_ms", "0", "allowed: a finite number of milliseconds > 0"),
    ("runtime_ms", "-1.5", "allowed: a finite number of milliseconds > 0"),
    ("power_w", "inf", "allowed: a finite number of watts >= 0"),
    # the columns beside the runtime, unchecked before 2026-12-05 (an energy objective ranks by energy_mj)
    ("energy_mj", "-2.5", "is -2.5; allowed: a finite number of millijoules >= 0"),
    ("runtime_min_ms", "-1.5", "is -1.5; allowed: a finite number of milliseconds >= 0"),
    ("runs", "many", "is 'many'; allowed: an integer >= 1"),
    ("problem", "7", "is 7; allowed: a JSON object with m, n, k, batch, dtype"),
    ("problem", "null", "is null; allowed: a JSON object with m, n, k"),
    ("problem", "[64, 64, 64]", "is a list; allowed: a JSON object with m, n, k"),
    ("problem", '{"m": 64}', "lacks n, k; a gemm problem needs m, n, k"),
    ("problem", '{"m": 64, "n": 64, "k": 64, "shape": 1}', ": unknown key 'shape'; allowed: m, n, k"),
    ("problem", '{"m": 0, "n": 64, "k": 64}', ": m is 0; allowed: an integer from 1 to 16777216"),
    (
        "problem",
        '{"m": 64, "n": 64, "k": 64, "dtype": "int8"}',
        "dtype is 'int8'; allowed: float16, bfloat16",
    ),
    ("problem", "{oops", "is not JSON"),
    ("family", "conv2d", "is 'conv2d'; allowed: gemm, monarch, butterfly, fft"),
    ("config", '{"block_m": 16}', "lacks block_n, block_k, group_m, num_warps, num_stages, split_k"),
    ("config", "null", "is null; allowed: a JSON object with block_m, block_n"),
    (
        "config",
        '{"block_m": 16, "block_n": 16, "block_k": 32, "group_m": 1, "num_warps": 8, "num_stages": true, '
        '"split_k": 1}',
        ": num_stages is true; allowed: an integer from 1 to",
    ),
    (  # no Triton kernel runs a tile of 48 rows: `kt import inductor` refused it, a CSV did not
        "config",
        '{"block_m": 48, "block_n": 16, "block_k": 32, "group_m": 1, "num_warps": 4, "num_stages": 2, '
        '"split_k": 1}',
        ": column config: block_m is 48; allowed: a power of two from 1 to",
    ),
    (
        "config",
        '{"block_m": 16, "block_n": 16, "block_k": 32, "group_m": 1, "num_warps": 6, "num_stages": 2, '
        '"split_k": 1}',
        ": column config: num_warps is 6; allowed: a power of two from 1 to",
    ),
]


def malformed_data(tmp_path: Path, kind: str, column: str, value: str) -> tuple[Path, str]:
    """A two-row database (or its `kt export` CSV) whose second row holds `value` in `column`, and where the error
    must point: the CSV's line 3 or the database's row id 2."""
    db = interpreter_db(tmp_path / "data.db", GemmProblem(64, 64, 64))
    if kind == "csv":
        with Database(db) as database:
            database.export_csv(tmp_path / "data.csv")
        db.unlink()
        rows = list(csv.DictReader((tmp_path / "data.csv").open(newline="")))
        rows[1][column] = value
        with (tmp_path / "data.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return tmp_path / "data.csv", "data.csv' line 3: "
    conn = sqlite3.connect(db)
    conn.execute(f"UPDATE measurements SET {column} = ? WHERE id = 2", (value,))
    conn.commit()
    conn.close()
    return db, "data.db' row id 2: "


@pytest.mark.parametrize("kind", ["csv", "db"])
@pytest.mark.parametrize(("column", "value", "says"), MALFORMED)
def test_a_malformed_row_is_refused_in_one_line_naming_file_row_and_column(
    tmp_path, kind, column, value, says
):
    data, where = malformed_data(tmp_path, kind, column, value)
    before = data.read_bytes()
    message = f"{where}column {column}"
    result = kt("costmodel", "fit", "--data", data, "--out", tmp_path / "m.skops")
    assert_one_line_error(result, message)
    assert says in result.stderr, result.stderr
    assert not (tmp_path / "m.skops").exists()
    assert "error: data: " in result.stderr, result.stderr
    assert_one_line_error(kt("costmodel", "eval", "--data", data), message)
    result = kt("inspect", data, "--plots", tmp_path / "plots")
    assert_one_line_error(result, message)
    assert "error: inspect: " in result.stderr, result.stderr  # named what gave the file (it said data:)
    assert not (tmp_path / "plots").exists()
    assert data.read_bytes() == before, "read-only commands leave the data as it was"


def test_a_csv_that_is_not_utf8_is_refused_in_one_line_naming_the_line(tmp_path):
    data, _ = malformed_data(tmp_path, "csv", "spec_name", "caf\u00e9")
    data.write_bytes(data.read_bytes().replace("caf\u00e9".encode(), "caf\u00e9".encode("latin-1")))
    for command in (
        ("costmodel", "eval", "--data"),
        ("costmodel", "fit", "--out", tmp_path / "m.skops", "--data"),
    ):
        assert_one_line_error(kt(*command, data), "data.csv' line 3: not UTF-8 text (byte 0xe9)")
    assert_one_line_error(kt("inspect", data), "not UTF-8 text")
    assert not (tmp_path / "m.skops").exists()


def test_a_cut_off_or_damaged_csv_row_is_refused_not_read_with_empty_cells(tmp_path):
    """A `kt export` CSV cut off in its last row (a copy stopped part-way) was read as one more measured row
    whose missing cells were empty; so was a row with a cell too few or too many."""
    from kt.autotune.dataset import read_rows

    data, _ = malformed_data(tmp_path, "csv", "spec_name", "x")
    whole = data.read_text()
    assert len(read_rows(data)) == 2  # as exported: read
    header, first, second = whole.splitlines(keepends=True)
    columns = len(next(csv.reader([header])))
    cut = header + first + second[: second.rindex(",", 0, len(second) - 100)]  # mid-row
    data.write_text(cut)
    for command in (("costmodel", "eval", "--data"), ("inspect",)):
        assert_one_line_error(
            kt(*command, data),
            "data.csv' line 3: the file ends without a line break, so its last row may be cut",
        )
    data.write_text(cut + "\n")  # the row's line ended: its cells are too few
    cells = len(next(csv.reader([cut.splitlines()[-1]])))
    assert cells < columns
    message = f"data.csv' line 3: {cells} cells, the header has {columns}: a cut-off or damaged row"
    assert_one_line_error(kt("costmodel", "eval", "--data", data), message)
    data.write_text(header + first.rstrip("\r\n") + ",extra\r\n" + second)  # a cell too many
    message = f"data.csv' line 2: {columns + 1} cells, the header has {columns}: a cut-off or damaged row"
    assert_one_line_error(kt("costmodel", "eval", "--data", data), message)


def test_read_only_commands_never_turn_a_file_into_a_database(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    assert_one_line_error(
        kt("costmodel", "eval", "--data", empty), "empty.db' is empty, so it is not a kt tuning"
    )
    assert_one_line_error(kt("costmodel", "fit", "--data", empty, "--out", tmp_path / "m.skops"), "is empty")
    assert_one_line_error(kt("inspect", empty, "--plots", tmp_path / "plots"), "is empty")
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"], "no model, plots, journal or WAL"
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    assert_one_line_error(
        kt("costmodel", "eval", "--data", other), "is an SQLite file but not a kt tuning database"
    )
    assert_one_line_error(kt("inspect", other), "is an SQLite file but not a kt tuning database")
    assert other.read_bytes() == before


def artifact(path: Path, problem: GemmProblem, config: dict, db: Path, measured: bool, device: dict, **meta):
    """An artifact directory as `kt tune` lays it out, with the fields inspect reads."""
    path.mkdir(parents=True)
    (path / "kernel.py").write_text("# stand-in kernel: inspect reads meta.json and the database\n")
    fields = {
        "format": 1,
        "name": path.name,
        "family": "gemm",
        "family_version": meta.pop("family_version", "test"),
        "problem": problem.to_dict(),
        "config": config,
        "measured": measured,
        "device": device,
        "tuning": {"db": str(db)},
        **meta,
    }
    (path / "meta.json").write_text(json.dumps(fields, indent=2))
    return path


def test_inspect_refuses_an_artifact_tuned_without_a_gpu(tmp_path):
    problem = GemmProblem(64, 64, 64)
    db = interpreter_db(tmp_path / "cpu.db", problem)
    config = {**CUTLASS_CONFIG, "block_m": 16, "block_n": 16, "block_k": 32, "num_stages": 3}
    device = {"target": "h100", "ran_on": "cpu (Triton interpreter)", "runner": "interpret"}
    art = artifact(tmp_path / "a", problem, config, db, False, device)
    result = kt("inspect", art)
    assert_one_line_error(result, "was tuned without a GPU (measured: false)")
    assert "kt tune OP_YAML --backend cuda" in result.stderr
    moved = artifact(tmp_path / "b", problem, config, tmp_path / "gone.db", False, device)
    assert_one_line_error(kt("inspect", moved), "measured: false")
    assert not list((tmp_path / "a").glob("*.png"))


def test_an_artifact_records_its_database_by_absolute_path_so_inspect_finds_it_from_anywhere(
    tmp_path, monkeypatch
):
    # answers with the analytic model's outputs, as runner "stand-in": no GPU measurement
    from test_tune_loop import SPEC, StandInRunner

    import kt as kt_api
    import kt.autotune.tune as tune_module

    monkeypatch.setattr(
        tune_module, "make_runner", lambda backend, profile, **options: StandInRunner(profile)
    )
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    result = kt_api.tune(SPEC, budget=4, db="t.db", progress=False)  # a relative --db
    art = result.save(tmp_path / "art")
    assert json.loads((art / "meta.json").read_text())["tuning"]["db"] == str(tmp_path / "work" / "t.db")
    monkeypatch.chdir(tmp_path)
    # the stand-in's rows are not GPU measurements, so inspect refuses, naming the database it found
    assert_one_line_error(
        kt("inspect", art), f"inspect: {tmp_path / 'work' / 't.db'} holds no GPU-measured rows"
    )
    # gone: inspect read kt's default database without a word ("db: '.../tuning.db' not found")
    (tmp_path / "work" / "t.db").rename(tmp_path / "work" / "moved.db")
    monkeypatch.setenv("KT_DB", str(tmp_path / "work" / "absent.db"))  # kt's default database, none here
    gone = f"inspect: {tmp_path / 'work' / 't.db'}, the database {art} was tuned into, is gone; pass"
    assert_one_line_error(kt("inspect", art), gone)
    monkeypatch.setenv("KT_DB", str(tmp_path / "work" / "moved.db"))  # kt's default database: read then,
    assert_one_line_error(  # and named with the one that is gone
        kt("inspect", art),
        f"inspect: {tmp_path / 'work' / 'moved.db'} (the tune's own, {tmp_path / 'work' / 't.db'}, is gone) "
        "holds no GPU-measured",
    )


# -- real measurements: GPPerf's RTX 4070 CUTLASS SGEMM rows ------------------------------------------------


def gpperf_rows() -> list[dict]:
    """One kt row per chosen (M, N, K, layout): the median runtime of GPPerf's beta = 0 runs, and the median
    of the power readings of at least 35 W (the rest are idle readings), when there are any."""
    wanted = {(m, n, k, layout): [] for m, n, k, layout in SHAPES}
    with GPPERF_CSV.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            layout = re.search(r"_(nn|nt|tn|tt)_align", raw["kernel"]).group(1)
            key = (int(raw["M"]), int(raw["N"]), int(raw["K"]), layout)
            if key in wanted and float(raw["beta"]) == 0.0:
                wanted[key].append(raw)
    rows = []
    for (m, n, k, layout), runs in wanted.items():
        assert runs, (m, n, k, layout)
        problem = GemmProblem(
            m, n, k, dtype="float32", a_layout=LAYOUT[layout[0]], b_layout=LAYOUT[layout[1]]
        )
        power = [float(r["power_w"]) for r in runs if r["power_w"] and float(r["power_w"]) >= 35]
        first = min(int(r["timestamp"]) for r in runs)
        rows.append(
            {
                "runner": "cuda",
                "device": RTX4070,
                "target": RTX4070_PROFILE.key,
                "family": "gemm",
                "family_version": "cutlass_simt_sgemm_128x128_8x2",  # CUTLASS's kernel, not a kt template
                "problem_key": problem.key(),
                "config_key": CUTLASS_KEY,
                "created_at": datetime.fromtimestamp(first, timezone.utc).isoformat(timespec="seconds"),
                "op": "dense",
                "spec_name": "gpperf",
                "dtype": "float32",
                "problem": problem.to_dict(),
                "config": CUTLASS_CONFIG,
                "status": "ok",
                "message": f"GPPerf {runs[0]['kernel']}: median of {len(runs)} profiler runs with beta 0",
                "runtime_ms": statistics.median(float(r["runtime_ms"]) for r in runs),
                "power_w": statistics.median(power) if power else None,
                "gpu_name": RTX4070,
                "triton_version": "none (CUTLASS profiler)",
            }
        )
    return rows


@pytest.fixture(scope="module")
def gpperf(tmp_path_factory):
    if not GPPERF_CSV.is_file():
        pytest.skip(f"GPPerf measurements not found at {GPPERF_CSV} (set KT_GPPERF_DIR)")
    home = tmp_path_factory.mktemp("gpperf")
    profile = save_profile(RTX4070_PROFILE, home / "rtx4070.json")
    rows = gpperf_rows()
    with Database(home / "rtx4070.db") as db:
        for row in rows:
            assert db.insert(row)
    with Database(home / "train.db") as db:  # 8 of the 12 shapes, to fit a model that has not seen the rest
        for row in rows[:8]:
            assert db.insert(row)
    return {
        "home": home,
        "db": home / "rtx4070.db",
        "train": home / "train.db",
        "profile": profile,
        "rows": rows,
    }


def fit(gpperf, data: str):
    """`kt costmodel fit` of the gpperf fixture's `data` ("db": all 12 shapes, "train": 8) for its profile: the
    model file and the command's result. Fitted once per module and shared by the tests that only read the
    model (a fit and its skops save of 2 x 200 trees take seconds)."""
    fitted = gpperf.setdefault("fitted", {})
    if data not in fitted:
        out = gpperf["home"] / f"{data}.skops"
        result = kt("costmodel", "fit", "--data", gpperf[data], "--out", out, "--device", gpperf["profile"])
        assert result.exit_code == 0, result.stderr
        fitted[data] = (out, result)
    return fitted[data]


def fit_model(gpperf, data: str) -> Path:
    return fit(gpperf, data)[0]


def test_fit_writes_a_model_that_loads_for_its_device(gpperf, tmp_path):
    out_path, result = fit(gpperf, "db")
    with_power = sum(r["power_w"] is not None for r in gpperf["rows"])
    assert (
        f"forest for {RTX4070_PROFILE.key}: 12 rows, 12 shapes, power from {with_power} rows" in result.stdout
    )
    model = ForestModel.load(out_path, RTX4070_PROFILE)
    assert model.trained["rows"] == 12 and model.predicts_power
    # the h100 default finds none of these rows and says which target they are for
    result = kt("costmodel", "fit", "--data", gpperf["db"], "--out", tmp_path / "h100.skops")
    assert_one_line_error(result, f"it holds some for {RTX4070_PROFILE.key} (12 rows)")
    assert not (tmp_path / "h100.skops").exists()
    # a --gpu that names none of its GPUs: said to hold "only timed baseline rows" or nothing, not which GPUs
    result = kt(
        "costmodel", "fit", "--data", gpperf["db"], "--out", tmp_path / "x.skops", "--device", gpperf["profile"],
        "--gpu", "NVIDIA H100 80GB HBM3",
    )  # fmt: skip
    assert_one_line_error(
        result, f"its GPU-measured rows are on '{RTX4070}' (12 rows): pass one of those names"
    )


def test_a_fit_with_too_few_power_readings_says_so_and_predict_gives_that_reason(gpperf, tmp_path):
    """Three of the rows read power, three short of a power forest: the fit said `no power` and `kt predict`
    blamed the lack of public power data, telling the user to do what they had just done."""
    data = tmp_path / "three.db"
    with Database(data) as db:
        for row in gpperf["rows"][4:]:  # rows 4 to 6 hold power, the rest none
            assert db.insert(row)
    assert sum(r["power_w"] is not None for r in gpperf["rows"][4:]) == 3
    fitted = kt(
        "costmodel", "fit", "--data", data, "--out", tmp_path / "m.skops", "--device", gpperf["profile"]
    )
    assert fitted.exit_code == 0, fitted.stderr
    assert "no power (read in 3 rows; a power forest needs 6)" in " ".join(fitted.stdout.split())
    result = kt(
        "predict", DENSE, "--top", "1", "--model", tmp_path / "m.skops", "--device", gpperf["profile"]
    )
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0 and "held a power reading in only 3 rows, and a power forest needs 6" in text
    assert "no public data" not in text


def test_a_fit_on_rows_without_a_power_reading_says_so_and_predict_does_not_blame_public_data(
    gpperf, tmp_path
):
    """A forest fitted on the user's rows, none with a power reading, was described as plain `no power`, and
    `kt predict` said that no public data measures power, telling the user to fit a forest on their own GPU
    rows: what they had just done. The rows are GPPerf's with their readings left out (nothing made up)."""
    data = tmp_path / "unpowered.db"
    with Database(data) as db:
        for row in gpperf["rows"][:8]:
            assert db.insert({**row, "power_w": None})
    fitted = kt(
        "costmodel", "fit", "--data", data, "--out", tmp_path / "m.skops", "--device", gpperf["profile"]
    )
    assert fitted.exit_code == 0, fitted.stderr
    assert "no power (none of its rows holds a power reading)" in " ".join(fitted.stdout.split())
    result = kt(
        "predict", DENSE, "--top", "1", "--model", tmp_path / "m.skops", "--device", gpperf["profile"]
    )
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0, result.stderr
    assert "predicts no power: none of the rows it was fitted on held a power reading" in text, text
    assert "no public data" not in text
    # kt's shipped forest, fitted on Inductor's logs, keeps its own reason
    shipped = kt(
        "predict",
        DENSE,
        "--top",
        "1",
        "--model",
        DENSE.parents[1] / "kt" / "costmodel" / "models" / "h100.skops",
    )
    assert "predicts no power: no public data measures power" in " ".join(shipped.stdout.split())


def test_a_fit_on_rows_too_few_for_a_tree_to_split_is_refused_and_a_barely_split_one_says_so(
    gpperf, tmp_path
):
    """On 4 or 5 rows every tree of the forest (leaves of 3 rows) was one leaf, and `kt costmodel fit` saved
    that constant as "forest for ...: 5 rows, 5 shapes, power from 5 rows" without a word."""
    for count in (4, 5, 6):
        data = tmp_path / f"{count}.db"
        with Database(data) as db:
            for row in gpperf["rows"][:count]:  # the first 7 rows read power
                assert db.insert(row)
        out = tmp_path / f"{count}.skops"
        result = kt("costmodel", "fit", "--data", data, "--out", out, "--device", gpperf["profile"])
        if count < 6:
            assert_one_line_error(
                result,
                f"holds {count} GPU-measured passing rows for target {RTX4070_PROFILE.key}; the forest "
                "needs at least 6 (on fewer every tree is one leaf, and the forest one constant)",
            )
            assert not out.exists()
            continue
        assert result.exit_code == 0, result.stderr
        model = ForestModel.load(out, RTX4070_PROFILE)
        split = sum(tree.tree_.node_count > 1 for tree in model.runtime_forest.estimators_)
        assert 0 < split < 100, split
        text = " ".join(result.stdout.split())
        assert (
            f"6 rows (only {split} of 200 trees split them: the rest predict one value for every config)"
            in text
        )
    # cross-validation fits a forest per fold on the other folds' rows: 4 of these 6, and it said so of 4 rows
    # the data does not hold (eval scored constants on them before)
    result = kt("costmodel", "eval", "--data", tmp_path / "6.db", "--device", gpperf["profile"])
    assert_one_line_error(
        result,
        "eval: holding out fold 1 of 5 (2 rows) leaves 4 rows of other shapes to fit on, and the forest "
        "needs at least 6 (on fewer every tree is one leaf, and the forest one constant): measure more shapes, or "
        "use fewer folds",
    )


def test_a_tune_with_a_calibrated_cards_model_targets_that_card_as_predict_does(
    gpperf, tmp_path, monkeypatch
):
    """With nothing else naming the device, `kt predict --model` ranked for the model's card (an RTX 4070,
    sm_89), and `kt tune --model` targeted h100 (refusing the model, or naming sm_90 in its first note): only a
    built-in card's model gave the tune its device."""
    import kt as api

    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "cache"))
    model = fit_model(gpperf, "db")
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: c\nshape: {m: 64, n: 64, k: 64}\n")
    predicted = kt("predict", spec, "--model", model, "--top", "1")
    assert predicted.exit_code == 0 and "target rtx4070" in " ".join(predicted.stdout.split())
    tuned = kt("tune", spec, "--model", model, "--budget", "1", "--out", tmp_path / "art", "--db", tmp_path / "t.db",
               "--backend", "interpret", "--workers", "1", "--quiet")  # fmt: skip
    assert tuned.exit_code == 0, tuned.stderr
    text = " ".join(tuned.stdout.split())
    assert "predicted ms (rtx4070)" in text and "sm_90" not in text and "compiled for sm_89" in text, text
    assert api.load(tmp_path / "art" / "c").meta["device"]["key"] == RTX4070_PROFILE.key


def test_a_power_cap_no_config_is_predicted_under_is_said_by_a_tune_without_a_gpu(
    gpperf, tmp_path, monkeypatch
):
    """Every config predicted over the cap: `kt predict` said so, and a tune without a GPU chose one without a
    word, in its output or in meta.json (a tune on a GPU refuses when every config drew more)."""
    import kt as api

    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "cache"))
    model = fit_model(gpperf, "db")
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: c\nshape: {m: 64, n: 64, k: 64}\n")
    predicted = kt("predict", spec, "--model", model, "--top", "1", "--power-cap", "1")
    said = " ".join(predicted.stdout.split())
    assert predicted.exit_code == 0 and re.search(
        r"(\d+) of \1 configs are predicted to draw more than 1 W", said
    )
    # none under the cap: "they rank after all the others" named others there were none of
    assert "so are all, which rank in their own order as without the cap" in said, said
    tuned = kt("tune", spec, "--model", model, "--budget", "1", "--out", tmp_path / "art", "--db", tmp_path / "t.db",
               "--backend", "interpret", "--workers", "1", "--quiet", "--power-cap", "1")  # fmt: skip
    assert tuned.exit_code == 0, tuned.stderr
    note = "the 1 W power cap could not be met: the forest for " + RTX4070_PROFILE.key
    assert note in " ".join(tuned.stdout.split()), tuned.stdout
    assert any(n.startswith(note) for n in api.load(tmp_path / "art" / "c").meta["notes"])


def test_the_ranking_note_counts_configs_not_rows():
    """Each problem's one config measured twice (two tunes) is one ranked row: the metrics were blank and the
    note saying why was left out, as two rows were counted two configs."""
    from types import SimpleNamespace

    from kt.cli import _ranked_shapes

    twice = SimpleNamespace(
        runtime_ms=np.array([1.0, 1.02, 2.0, 2.04]),
        predicted_ms=np.array([1.1, 1.1, 2.1, 2.1]),
        groups=["a", "a", "b", "b"],
        configs=["m16", "m16", "m32", "m32"],
    )
    assert _ranked_shapes(twice) == 0
    assert _ranked_shapes(SimpleNamespace(**{**vars(twice), "configs": ["m16", "m32", "m16", "m32"]})) == 2


def test_eval_cross_validates_with_whole_shapes_held_out_and_scores_a_model_file(gpperf, tmp_path):
    result = kt("costmodel", "eval", "--data", gpperf["db"], "--device", gpperf["profile"], "--folds", "3")
    assert result.exit_code == 0, result.stderr
    assert "3 folds of whole shapes held out" in result.stdout
    for name in (
        "runtime R2",
        "runtime MAPE %",
        "power median APE %",
        "Spearman within problem",
        "top-5 recall",
    ):
        assert name in result.stdout
    assert "12 rows, 12 shapes, 3 folds of whole shapes held out: runtime R2" in result.stdout
    assert "ranking metrics say nothing" in result.stdout  # one config per problem in this data
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"MAPE [\d.]+% \| median APE [\d.]+% \| Spearman within problem - \| top-1 - \| top-5 recall - \| "
        r"shapes 12",
        last,
    ), last

    model = fit_model(gpperf, "train")
    result = kt("costmodel", "eval", "--data", gpperf["db"], "--model", model)
    assert result.exit_code == 0, result.stderr
    # the model file lists the 8 shapes it was fitted on: only the other 4 are scored
    assert "4 rows, 4 shapes (8 rows of 8 shapes the model was fitted on left out)" in result.stdout
    assert "never saw this device" not in result.stdout  # fitted for the card whose rows it scores
    result = kt("costmodel", "eval", "--data", gpperf["db"], "--model", model, "--device", "h100")
    assert_one_line_error(
        result, f"was fitted for {RTX4070_PROFILE.key} (sm_89), which cannot stand in for h100 (sm_90)"
    )
    # data of nothing but its training shapes: nothing left to score
    result = kt("costmodel", "eval", "--data", gpperf["train"], "--model", model)
    assert_one_line_error(
        result,
        "every row's shape was in the model's training data (8 rows of 8 shapes); evaluate it on other shapes",
    )


def test_inspect_with_a_model_scores_only_shapes_it_was_not_fitted_on(gpperf, tmp_path):
    model = fit_model(gpperf, "train")
    plots = tmp_path / "plots"
    result = kt("inspect", gpperf["db"], "--model", model, "--device", gpperf["profile"], "--plots", plots)
    assert result.exit_code == 0, result.stderr
    assert (
        "fitted on 8 of these shapes: their 8 rows are left out of its scores (4 rows scored)"
        in result.stdout
    )
    assert_png(plots / "predicted_vs_measured.png")
    refused = kt("inspect", gpperf["train"], "--model", model, "--plots", tmp_path / "none")
    assert_one_line_error(refused, "every row's shape was in the model's training data")
    assert not (tmp_path / "none").exists()


def test_a_fit_that_fails_is_one_line_for_fit_and_inspect(gpperf, tmp_path, monkeypatch):
    def refuse(self, records, source=None, **_):
        raise ValueError("Input X contains infinity\nor a value too large for dtype('float64').")

    monkeypatch.setattr(ForestModel, "fit", refuse)
    result = kt(
        "costmodel",
        "fit",
        "--data",
        gpperf["db"],
        "--out",
        tmp_path / "m.skops",
        "--device",
        gpperf["profile"],
    )
    assert_one_line_error(result, "fit: ")
    assert "rtx4070.db': Input X contains infinity or a value too large" in result.stderr
    assert not (tmp_path / "m.skops").exists()
    result = kt("inspect", gpperf["db"], "--device", gpperf["profile"], "--plots", tmp_path / "plots")
    assert_one_line_error(result, "inspect: fitting a forest on ")
    assert "contains infinity or a value too large" in result.stderr
    assert not (tmp_path / "plots").exists()


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def test_inspect_a_database_writes_both_plots_and_prints_the_metrics(gpperf, tmp_path):
    plots = tmp_path / "plots"
    result = kt("inspect", gpperf["db"], "--device", gpperf["profile"], "--plots", plots)
    assert result.exit_code == 0, result.stderr
    assert (
        f"12 measured rows of 12 problems on {RTX4070} (target {RTX4070_PROFILE.key}), 2024-11-"
        in result.stdout
    )
    assert "runtime R2" in result.stdout and "Spearman within problem" in result.stdout
    assert "forests fitted in 5 folds, each predicting shapes it never saw" in result.stdout
    assert "feature importances (runtime forest): " in result.stdout
    for name in ("predicted_vs_measured.png", "pareto.png"):
        assert_png(plots / name)
        assert str(plots / name) in result.stdout
    assert not list(plots.glob(".*")), "no temporary file left behind"
    # without a profile for its calibrated target and without a model, nothing predicts these rows
    result = kt("inspect", gpperf["db"], "--plots", tmp_path / "none")
    assert_one_line_error(result, "nothing to compare with the 12 measured rows")
    assert not (tmp_path / "none").exists()


def test_inspect_removes_an_earlier_pareto_plot_and_refuses_a_plot_folder_that_is_a_file_first(
    gpperf, tmp_path
):
    """Rows without power left an earlier run's pareto.png beside the new plot (in an artifact, the default
    folder); kt.inspect with a plot folder that is a file raised NotADirectoryError after the work, and a
    default <data>-inspect that was a file failed likewise, naming no plots."""
    plots, unpowered = tmp_path / "plots", tmp_path / "unpowered.db"
    shutil.copyfile(gpperf["db"], unpowered)
    with sqlite3.connect(unpowered) as conn:
        conn.execute("UPDATE measurements SET power_w = NULL, energy_mj = NULL")
    assert kt("inspect", gpperf["db"], "--device", gpperf["profile"], "--plots", plots).exit_code == 0
    assert (plots / "pareto.png").is_file()
    result = kt("inspect", unpowered, "--device", gpperf["profile"], "--plots", plots)
    assert result.exit_code == 0, result.stderr
    assert "so no pareto.png (an earlier one there was removed)" in result.stdout
    assert sorted(p.name for p in plots.iterdir()) == ["predicted_vs_measured.png"]
    (tmp_path / "unpowered.db-inspect").write_text("a file")
    result = kt("inspect", unpowered, "--device", gpperf["profile"])
    assert_one_line_error(
        result, "unpowered.db-inspect' exists and is not a folder; give --plots DIR to plot"
    )
    import kt as kt_api

    with pytest.raises(kt_api.KtError, match=r"^plots: '.*unpowered.db-inspect' exists and is not a folder$"):
        kt_api.inspect(unpowered, device=gpperf["profile"], plots_dir=tmp_path / "unpowered.db-inspect")


def test_inspect_plots_of_a_database_and_its_csv_export_side_by_side_go_to_two_folders(gpperf, tmp_path):
    # both were plotted into rows-inspect/, the second file's plots over the first's
    db = tmp_path / "rows.db"
    shutil.copyfile(gpperf["db"], db)
    with Database(db, create=False, readonly=True) as database:
        database.export_csv(tmp_path / "rows.csv")
    for data in (db, tmp_path / "rows.csv"):
        result = kt("inspect", data, "--device", gpperf["profile"])
        assert result.exit_code == 0, result.stderr
        assert_png(tmp_path / f"{data.name}-inspect" / "predicted_vs_measured.png")
        assert str(tmp_path / f"{data.name}-inspect" / "predicted_vs_measured.png") in result.stdout
    assert not (tmp_path / "rows-inspect").exists()


def test_inspect_an_artifact_holds_its_shape_out_of_the_forest(gpperf, tmp_path):
    row = next(r for r in gpperf["rows"] if r["problem"]["m"] == 128256 and r["problem"]["k"] == 1024)
    device = {"target": "rtx4070", "ran_on": RTX4070, "runner": "cuda"}
    art = artifact(
        tmp_path / "sgemm",
        GemmProblem(**row["problem"]),
        CUTLASS_CONFIG,
        gpperf["db"],
        True,
        device,
        family_version=row["family_version"],
        spec={"device": str(gpperf["profile"])},  # as kt tune records a calibrated profile: its absolute path
        runtime_ms=row["runtime_ms"],
    )
    result = kt("inspect", art)
    assert result.exit_code == 0, result.stderr
    assert f"1 measured row of 1 problem on {RTX4070}" in result.stdout
    assert f"chosen: {CUTLASS_KEY} · {row['runtime_ms']:.4f} ms measured" in result.stdout
    assert "a forest fitted on 11 rows of other shapes, this shape held out" in result.stdout
    assert_png(art / "predicted_vs_measured.png")
    assert_png(art / "pareto.png")


def test_inspect_an_artifact_tuned_without_a_gpu_finds_gpu_rows_of_its_problem_in_its_database(
    gpperf, tmp_path
):
    """The quick refusal asks SQLite only whether the database holds GPU rows of the family: where it does,
    inspect goes on and compares them, as for an artifact measured on that GPU."""
    row = next(r for r in gpperf["rows"] if r["problem"]["m"] == 128256 and r["problem"]["k"] == 1024)
    device = {"target": "rtx4070", "ran_on": "cpu (Triton interpreter)", "runner": "interpret"}
    problem = GemmProblem(**row["problem"])
    fields = dict(family_version=row["family_version"], spec={"device": str(gpperf["profile"])})
    art = artifact(tmp_path / "cpu", problem, CUTLASS_CONFIG, gpperf["db"], False, device, **fields)
    result = kt("inspect", art)
    assert result.exit_code == 0, result.stderr
    assert f"1 measured row of 1 problem on {RTX4070}" in result.stdout
    # --gpu was never passed on for an artifact: any name inspected the first row's GPU, exit 0
    assert kt("inspect", art, "--gpu", RTX4070).exit_code == 0
    # GPU rows of its problem, but of another template version: "tuned without a GPU ... nothing to compare"
    other = artifact(
        tmp_path / "new", problem, CUTLASS_CONFIG, gpperf["db"], False, device, family_version="new"
    )
    assert_one_line_error(
        kt("inspect", other, "--db", gpperf["db"]),
        f"holds GPU-measured rows of {other}'s problem only from other versions of kt's gemm template "
        f"({row['family_version']}), not this artifact's (new)",
    )
    assert_one_line_error(
        kt("inspect", art, "--gpu", "NVIDIA H200"),
        f"gpu: {gpperf['db']} holds no measured rows of {art}'s problem on 'NVIDIA H200'; allowed: "
        f"{RTX4070!r} (1 row)",
    )
    other = GemmProblem(64, 64, 64, dtype="float32")  # the database has GPU rows, none of this problem
    art = artifact(tmp_path / "other", other, CUTLASS_CONFIG, gpperf["db"], False, device, **fields)
    assert_one_line_error(kt("inspect", art), "was tuned without a GPU (measured: false)")


# -- kt predict ---------------------------------------------------------------------------------------------

DENSE = Path(__file__).resolve().parents[1] / "examples" / "dense.yaml"


def test_predict_lists_the_analytic_ranking_and_what_a_tune_would_measure():
    result = kt("predict", DENSE, "--top", "5", "--no-gpu")
    assert result.exit_code == 0, result.stderr
    assert (
        "model: analytic · target h100" in result.stdout and "predictions, not measurements" in result.stdout
    )
    assert result.stdout.count("m128n256k64") + result.stdout.count("m256n128k64") == 5
    assert "checks the model's best 64" in result.stdout and "predicts no power" in result.stdout
    # the roofline time (math vs DRAM) and the config's bound (the analytic terms) come from two models
    assert "config bound" in result.stdout and "roofline ms: max(FLOPs at peak, least bytes" in result.stdout
    guided = kt("predict", DENSE, "--top", "2000", "--gpu", "--budget", "64")
    assert guided.exit_code == 0, guided.stderr
    assert "its first round measures 8 of a budget of 64" in guided.stdout
    # half the round is the predicted best; the analytic model has no spread, so the other half explores at
    # random, mostly beyond the best 2000 of 14,790 legal configs
    cells = re.findall(r"│ round 1( \(explores\))?\s*│", guided.stdout)
    beyond = re.search(r"round 1 also measures (\d+) configs? ranked below the table", guided.stdout)
    assert cells.count("") == 4, "the best of the four best predicted tiles"
    assert len(cells) - 4 + (int(beyond.group(1)) if beyond else 0) == 4
    whole = kt("predict", DENSE, "--top", "3", "--gpu", "--budget", "8")  # kt bench's quick tunes
    assert whole.exit_code == 0, whole.stderr
    # it said "later rounds follow the model refitted", of a round that is the whole budget
    assert "its one round measures 8 of a budget of 8, all of it, so nothing is refitted" in whole.stdout
    # a tune on a database with rows of the op runs only what is missing: predict reads none, and says so
    assert "(as a tune on an empty database: a tune counts the rows its database holds" in whole.stdout
    top20 = kt("predict", DENSE, "--top", "20", "--no-gpu", "--budget", "64")
    assert top20.exit_code == 0, top20.stderr
    # the no-GPU tune takes the best 64: the 44 beyond a table of 20 print as one run of ranks
    assert "the tune also takes 44 configs ranked below the table (ranks 21-64)" in top20.stdout, top20.stdout


def test_a_tune_without_a_gpu_targets_the_device_of_the_model_it_is_given_as_predict_ranks_for_it(tmp_path):
    """With nothing naming a device (device: auto, no GPU here), `kt predict --model a100.skops` ranked for the
    A100 and `kt tune` with the same model targeted h100 and refused the model (sm_80 cannot stand in)."""
    import kt as kt_api
    from kt.costmodel.models import MODELS_DIR

    if (MODELS_DIR / "a100.skops").stat().st_size < 1024:
        pytest.skip("the shipped A100 model is a Git LFS pointer here")
    spec = {"op": "dense", "name": "on_a100", "dtype": "float16", "shape": {"m": 32, "n": 32, "k": 32}}
    options = {"model": MODELS_DIR / "a100.skops", "progress": False, "baseline": False, "workers": 1}
    result = kt_api.tune(spec, budget=1, backend="interpret", db=tmp_path / "t.db", **options)
    assert result.plan.space.device.name == "a100"
    assert kt_api.plan(spec, budget=1, model=MODELS_DIR / "a100.skops").space.device.name == "a100"


def test_predict_says_the_budget_the_tune_spends_not_the_one_asked_for(tmp_path):
    """It said "its one round measures 3 of a budget of 1, all of it" of three listed configs (all measured
    whatever the budget) and "1 of a budget of 4" where the space held one program."""
    spec = tmp_path / "listed.yaml"
    spec.write_text(
        "op: dense\ndtype: float16\nshape: {m: 64, n: 64, k: 64}\ntune:\n  budget: 1\n  configs:\n"
        "    - {block_m: 16, block_n: 16, block_k: 16}\n    - {block_m: 32, block_n: 32, block_k: 32}\n"
        "    - {block_m: 64, block_n: 64, block_k: 64}\n"
    )
    result = kt("predict", spec, "--gpu", "--model", "analytic")
    assert result.exit_code == 0, result.stderr
    assert "its one round measures 3 of a budget of 3, all of it" in result.stdout, result.stdout


def test_predict_marks_configs_that_run_a_better_ranked_configs_program(tmp_path):
    """On a 40x24 output, group_m orders no tiles for most configs: the table says which rank's program each
    such config runs (a tune does not measure it), and the note counts them."""
    spec = tmp_path / "skinny.yaml"
    spec.write_text("op: dense\ndtype: float16\nshape: {m: 40, n: 24, k: 32}\n")
    result = kt("predict", spec, "--top", "30", "--gpu", "--budget", "64", "--model", "analytic")
    assert result.exit_code == 0, result.stderr
    rows = re.findall(r"│\s+(\d+) │ (\S+)\s+│.*│ ([^│]*?)\s*│\n", result.stdout)
    assert len(rows) == 30
    twins = [
        (int(rank), int(m.group(1))) for rank, _, cell in rows if (m := re.match(r"no: rank (\d+)'s", cell))
    ]
    assert twins and all(first < rank for rank, first in twins)
    keys = {int(rank): key for rank, key, _ in rows}
    for rank, first in twins:  # the same config but for group_m
        assert re.sub(r"g\d+", "", keys[rank]) == re.sub(r"g\d+", "", keys[first]), (keys[rank], keys[first])
    assert "legal configs run the same program as another" in result.stdout


def test_rank_runs_are_joined():
    from kt.cli import _runs

    assert _runs([21, 22, 23, 30, 40, 41]) == "21-23, 30, 40-41"
    assert _runs([5]) == "5" and _runs([]) == ""


def test_predict_refuses_a_missing_or_foreign_model_file_in_one_line(tmp_path):
    assert_one_line_error(kt("predict", DENSE, "--model", tmp_path / "none.skops"), "not found")
    (tmp_path / "junk.skops").write_bytes(b"not a model")
    assert_one_line_error(kt("predict", DENSE, "--model", tmp_path / "junk.skops"), "is not a skops file")


def test_predict_with_a_forest_shows_spread_and_power(gpperf, tmp_path):
    model = fit_model(gpperf, "db")
    result = kt("predict", DENSE, "--top", "3", "--model", model, "--device", gpperf["profile"], "--no-gpu")
    assert result.exit_code == 0, result.stderr
    assert (
        f"model: forest for {RTX4070_PROFILE.key}" in result.stdout
        and "predicts no power" not in result.stdout
    )
    assert re.search(r"\d+%", result.stdout), "a spread across trees"
    refused = kt("predict", DENSE, "--model", model, "--device", "h100")
    assert_one_line_error(
        refused, f"was fitted for {RTX4070_PROFILE.key} (sm_89), which cannot stand in for h100 (sm_90)"
    )


# -- kt's own GPU measurements: the first H200 run's rows, structured ops among them ----------------------

H200_ROWS = (
    Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "h200-2026-11-30" / "measurements.csv"
)


def test_inspect_scores_structured_ops_by_their_stored_predictions_and_the_forest_on_the_gemm_rows(tmp_path):
    """A structured op's GPU rows crashed kt inspect (KeyError 'm': its shape was read as a GEMM's), for a
    database and an artifact alike; its shapes line counted problems."""
    result = kt("inspect", H200_ROWS, "--plots", tmp_path / "all")
    assert result.exit_code == 0, result.stderr
    assert "284 measured rows of 37 problems on NVIDIA H200 (target h200)" in result.stdout
    assert (
        "note: the forest scores the 237 GEMM rows; the 47 rows of structured ops time whole ops"
        in result.stdout
    )
    assert re.search(r"│ problems\s+│\s+15 │\s+14 │", result.stdout), result.stdout
    assert re.search(r"│ shapes\s+│\s+14 │\s+11 │", result.stdout), "shapes, not problems"
    assert_png(tmp_path / "all" / "predicted_vs_measured.png")
    with H200_ROWS.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    structured = tmp_path / "structured.csv"
    with structured.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["family"] not in ("gemm",))
    result = kt("inspect", structured, "--plots", tmp_path / "structured")
    assert result.exit_code == 0, result.stderr
    assert (
        "note: no forest: the forests learn single GEMM launches, and these rows time whole" in result.stdout
    )
    assert "tuner (stored)" in result.stdout and "│ forest" not in result.stdout
    # the forest's own commands: not "it holds some for h200: pass that target's profile" of the target asked
    for command in (["costmodel", "fit", "--out", tmp_path / "m.skops"], ["costmodel", "eval"]):
        result = kt(*command, "--data", structured, "--device", "h200")
        assert_one_line_error(result, "time whole structured ops, and the forest learns single GEMM launches")
    assert not (tmp_path / "m.skops").exists()


def test_the_shipped_h100_forest_is_scored_on_h200_rows_as_a_tune_uses_it(tmp_path):
    """kt tune ranks an H200's configs with the H100's forest (same architecture, the H200's own roofline), but
    `kt costmodel eval --model` and `kt inspect --model` refused that file for h200 rows (fitted for h100), so
    the model a tune uses could not be scored on the only GPU rows kt has of its own kernels."""
    shipped = Path(__file__).resolve().parents[1] / "kt" / "costmodel" / "models" / "h100.skops"
    result = kt("costmodel", "eval", "--data", H200_ROWS, "--model", shipped, "--device", "h200")
    assert result.exit_code == 0, result.stderr
    assert "237 rows, 14 problems, 11 shapes" in result.stdout, result.stdout
    result = kt("inspect", H200_ROWS, "--model", shipped, "--plots", tmp_path)
    assert result.exit_code == 0, result.stderr
    refused = kt("costmodel", "eval", "--data", H200_ROWS, "--model", shipped, "--device", "a100")
    assert_one_line_error(refused, "h100")  # another architecture: no stand-in


def test_eval_of_a_model_standing_in_for_another_card_says_so_in_the_words_predict_uses():
    """`kt costmodel eval --model` scored the H100's forest on H200 rows, as a tune uses it, without a word that
    the forest was fitted for another card: its title named only the file. `kt predict` and `kt tune` say it
    (ForestModel.unseen); eval now does in the same words."""
    shipped = Path(__file__).resolve().parents[1] / "kt" / "costmodel" / "models" / "h100.skops"
    stand_in = (
        "the cost model never saw this device h200 (fitted for h100, predicting with h200's own roofline): its "
        "predictions here are extrapolations"
    )
    result = kt("costmodel", "eval", "--data", H200_ROWS, "--model", shipped, "--device", "h200")
    assert result.exit_code == 0, result.stderr
    assert f"note: {stand_in}" in " ".join(result.stdout.split()), result.stdout
    predicted = kt("predict", DENSE, "--top", "1", "--device", "h200", "--model", shipped)
    assert f"warning: {stand_in}" in " ".join(predicted.stderr.split()), predicted.stderr


def test_inspect_ranks_each_structured_problem_within_itself(tmp_path):
    """A structured config's own `group` field (blocks per program) overwrote the record's group (its problem):
    a Monarch of 16384 rows was ranked with a butterfly of 8192, each problem split by that field."""
    import numpy as np

    from kt.autotune.inspection import inspect_tune
    from kt.costmodel.evaluate import Report

    with H200_ROWS.open(newline="") as handle:
        rows = [
            r
            for r in csv.DictReader(handle)
            if r["runner"] == "cuda"
            and r["status"] == "ok"
            and r["runtime_ms"]
            and r["config_key"] != "pytorch"
        ]
    stored = [r for r in rows if r["predicted_ms"]]
    expected = Report(
        np.array([float(r["runtime_ms"]) for r in stored]),
        np.array([float(r["predicted_ms"]) for r in stored]),
        [r["problem_key"] for r in stored],
    ).metrics
    result = inspect_tune(H200_ROWS, plots_dir=tmp_path)
    assert result.tuner.metrics["problems"] == expected["problems"]
    for name in ("spearman_within_problem", "top1_score", "top5_recall", "runtime_mape"):
        assert result.tuner.metrics[name] == pytest.approx(expected[name]), name


def test_fit_says_what_its_model_lacks_and_whose_card_its_rows_came_from(tmp_path):
    """A model fitted on rows without candidate zero's (kt collect times none) had no baseline forest, which
    switched off kt predict's PyTorch line and the tune's sizing without a word; rows tuned for another
    profile's card (--device h100 on this H200: the H200 run's rows, their target read as h100) were fitted as
    that card's model without one either."""
    with H200_ROWS.open(newline="") as handle:
        reader = csv.DictReader(handle)
        names, rows = reader.fieldnames, list(reader)

    def written(path, kept):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, names)
            writer.writeheader()
            writer.writerows(kept)
        return path

    whole = kt("costmodel", "fit", "--data", H200_ROWS, "--out", tmp_path / "a.skops", "--device", "h200")
    assert whole.exit_code == 0 and "note:" not in whole.stdout, whole.stdout
    collected = written(tmp_path / "collected.csv", [r for r in rows if r["config_key"] != "pytorch"])
    fitted = kt("costmodel", "fit", "--data", collected, "--out", tmp_path / "b.skops", "--device", "h200")
    text = " ".join(fitted.stdout.split())
    assert fitted.exit_code == 0 and "note: no baseline forest: the data holds no timed PyTorch rows" in text
    as_h100 = written(tmp_path / "as_h100.csv", [{**r, "target": "h100"} for r in rows])
    fitted = kt("costmodel", "fit", "--data", as_h100, "--out", tmp_path / "c.skops", "--device", "h100")
    text = " ".join(fitted.stdout.split())
    assert fitted.exit_code == 0, fitted.stderr
    assert (
        "note: the rows were measured on NVIDIA H200, and this is h100's model (NVIDIA H100 80GB HBM3)"
        in text
    )


def test_inspect_ranks_a_configs_repeats_once_as_costmodel_eval_does(tmp_path):
    """kt's three H200 runs in one file, as a database of several tunes holds them: kt costmodel eval took one
    row per config of a problem for its ranking metrics, kt inspect counted each repeat as a config."""
    import numpy as np

    from kt.costmodel.evaluate import Report

    rows, names = [], []
    for path in sorted(H200_ROWS.parents[1].glob("h200-*/measurements.csv")):
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            names += [name for name in reader.fieldnames if name not in names]
            rows += list(reader)
    merged = tmp_path / "three.csv"
    with merged.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, names, restval="")
        writer.writeheader()
        writer.writerows({**row, "id": str(i)} for i, row in enumerate(rows, 1))  # one database's ids
    result = inspect_tune(merged, plots_dir=tmp_path)
    stored = [
        r
        for r in rows
        if r["runner"] == "cuda" and r["status"] == "ok" and r["runtime_ms"] and r["predicted_ms"]
        and r["config_key"] != "pytorch"
    ]  # fmt: skip
    arrays = (
        np.array([float(r["runtime_ms"]) for r in stored]),
        np.array([float(r["predicted_ms"]) for r in stored]),
        [r["problem_key"] for r in stored],
    )
    per_config = Report(*arrays, configs=[r["config_key"] for r in stored]).metrics
    per_row = Report(*arrays).metrics
    assert len({(r["problem_key"], r["config_key"]) for r in stored}) < len(stored)  # repeats there are
    assert per_config["top1_score"] != pytest.approx(per_row["top1_score"])
    for name in ("spearman_within_problem", "top1_score", "top5_recall"):
        assert result.tuner.metrics[name] == pytest.approx(per_config[name]), name


def test_a_model_scored_on_data_of_another_target_names_its_device_not_the_device_option(tmp_path):
    h100 = Path(__file__).resolve().parents[1] / "kt" / "costmodel" / "models" / "h100.skops"
    result = kt("costmodel", "eval", "--data", H200_ROWS, "--model", h100)
    assert_one_line_error(
        result, f"for target h100, the device of model {str(h100)!r}; it holds some for h200"
    )
    assert "score a model fitted for that target" in result.stderr


def test_pareto_front_keeps_the_points_nothing_beats_and_ties():
    """A point is off the front only when another is at least as fast and as frugal and strictly better in one:
    with <= for 'strictly better' every point beat itself and the front came out empty."""
    runtime = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    power = np.array([300.0, 200.0, 250.0, 200.0, 300.0])
    # the third is slower and hungrier than the second; the ties (first and last, second and fourth) both stay
    assert pareto_front(runtime, power).tolist() == [True, True, False, True, True]
    assert pareto_front(np.array([5.0]), np.array([100.0])).tolist() == [True]


def test_inspect_forests_never_see_the_shapes_they_predict_and_rank_importances(gpperf, tmp_path):
    """Each shape is predicted by a forest fitted on the other folds' shapes only (a forest that also saw the
    shape it predicts scores its own training data); the mean importances print most important first."""
    result = inspect_tune(gpperf["db"], device=str(gpperf["profile"]), plots_dir=tmp_path)
    records = result.records
    fold_of = assign_folds({holdout_key(r) for r in records}, 5, 0)
    test = [r for r in records if fold_of[holdout_key(r)] == 0]
    train = [r for r in records if fold_of[holdout_key(r)] != 0]
    expected = ForestModel(load_profile(gpperf["profile"]), seed=0).fit(train).predict(test).runtime_s * 1e3
    rows = [i for i, r in enumerate(records) if fold_of[holdout_key(r)] == 0]
    np.testing.assert_allclose(result.forest.predicted_ms[rows], expected)
    values = list(result.importances["runtime"].values())
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


def test_inspect_dates_span_the_first_and_the_last_measurement(gpperf, tmp_path):
    """The header's 'measured FIRST to LAST' is the earliest and the latest day of the rows inspected (GPPerf's
    runs span several days)."""
    result = inspect_tune(gpperf["db"], device=str(gpperf["profile"]), plots_dir=tmp_path)
    days = sorted(str(r["created_at"])[:10] for r in result.records)
    assert days[0] < days[-1]
    assert result.dates == (days[0], days[-1])


def test_inspect_refuses_a_model_fitted_for_another_target(gpperf, tmp_path):
    """Without a profile for the rows' calibrated target the model file is loaded as it is: one fitted for
    h100 must be refused for rtx4070 rows, not score them with another GPU's roofline."""
    shipped = Path(__file__).resolve().parents[1] / "kt" / "costmodel" / "models" / "h100.skops"
    result = kt("inspect", gpperf["db"], "--model", shipped, "--plots", tmp_path / "none")
    assert_one_line_error(
        result, f"was fitted for device h100, and these rows were tuned for {RTX4070_PROFILE.key}"
    )
    assert not (tmp_path / "none").exists()


def test_inspect_gpu_and_device_must_name_what_the_data_holds(tmp_path):
    """--gpu keeps only that GPU's rows and --device picks a target the rows were tuned for: a filter that was
    ignored inspected another GPU's rows under the name asked for, and an absent target crashed on no rows."""
    result = kt("inspect", H200_ROWS, "--gpu", RTX4070, "--plots", tmp_path / "none")
    assert_one_line_error(
        result, f"holds no GPU-measured passing rows on {RTX4070!r}; allowed: 'NVIDIA H200'"
    )
    result = kt("inspect", H200_ROWS, "--device", "h100", "--plots", tmp_path / "none")
    assert_one_line_error(result, "holds no rows for target h100; it holds h200 (284 rows)")
    assert not (tmp_path / "none").exists()


def test_an_artifact_tuned_without_a_gpu_is_inspected_on_the_gpu_named_or_the_only_one():
    """The first row's GPU stood in for an artifact tuned without a GPU, whatever --gpu said, and a database
    with its problem's rows from two GPUs was scored on one of them without a word of the other."""
    from kt.autotune.inspection import _artifact_gpu
    from kt.errors import ArtifactError

    rows = [{"device": "NVIDIA H100 PCIe"}, {"device": "NVIDIA H100 80GB HBM3"}] * 2
    rows.append({"device": "NVIDIA H100 80GB HBM3"})
    where = Path("art"), Path("t.db")
    assert _artifact_gpu(*where, rows, None, "NVIDIA H100 PCIe") == "NVIDIA H100 PCIe"
    assert _artifact_gpu(*where, rows[1:2], None, None) == "NVIDIA H100 80GB HBM3"
    with pytest.raises(
        ArtifactError,
        match=r"^inspect: t.db holds measurements of art's problem from several GPUs: 'NVIDIA H100 80GB HBM3' "
        r"\(3 rows\), 'NVIDIA H100 PCIe' \(2 rows\); pick one with --gpu$",
    ):
        _artifact_gpu(*where, rows, None, None)


def test_inspect_refuses_rows_of_two_gpus_until_gpu_picks_one(gpperf, tmp_path):
    """GPPerf's RTX 4070 rows and kt's H200 rows in one database: inspect names both GPUs and asks for --gpu (a
    check that let two GPUs through scored one GPU's timings with the other's model), and --gpu picks one."""
    from kt.autotune.dataset import read_rows

    both = tmp_path / "both.db"
    shutil.copy(gpperf["db"], both)
    with Database(both) as db:
        for row in read_rows(H200_ROWS):
            db.insert({k: v for k, v in row.items() if k != "id"})
    result = kt("inspect", both, "--plots", tmp_path / "none")
    assert_one_line_error(
        result, f"holds measurements from several GPUs: 'NVIDIA H200' (284 rows), {RTX4070!r}"
    )
    assert "pick one with --gpu" in result.output and not (tmp_path / "none").exists()
    result = kt("inspect", both, "--gpu", RTX4070, "--device", gpperf["profile"], "--plots", tmp_path / "p")
    assert result.exit_code == 0, result.output


def test_a_row_is_refused_for_a_zero_prediction_or_a_float_size_and_kept_for_the_longest_chain(gpperf):
    """A prediction is a runtime (> 0 ms); a problem's sizes are integers (64.0 is text someone edited); a low-rank
    problem of MAX_CHAIN factors (MAX_CHAIN + 1 sizes), which op.yaml allows, is data."""
    from kt.autotune.dataset import _check_problem, check_row
    from kt.errors import DatabaseError
    from kt.spec import MAX_CHAIN

    row = dict(gpperf["rows"][0], id=1)
    check_row({**row, "predicted_ms": 0.5}, "data: row id 1")
    with pytest.raises(
        DatabaseError, match="column predicted_ms is 0.0; allowed: a finite number of milliseconds"
    ):
        check_row({**row, "predicted_ms": 0.0}, "data: row id 1")
    with pytest.raises(
        DatabaseError, match="column problem: m is 64.0; allowed: an integer from 1 to 16777216"
    ):
        check_row({**row, "problem": {**row["problem"], "m": 64.0}}, "data: row id 1")
    chain = {"rows": 8, "dims": [16] * (MAX_CHAIN + 1), "dtype": "float16"}
    _check_problem("lowrank", chain, "data: row id 2")
    with pytest.raises(DatabaseError, match=f"dims is .*; allowed: a list of 3 to {MAX_CHAIN + 1} integers"):
        _check_problem("lowrank", {**chain, "dims": [16] * (MAX_CHAIN + 2)}, "data: row id 2")


def test_a_power_zero_reading_is_data_and_a_negative_one_is_refused(gpperf):
    """power_w is 'a finite number of watts >= 0': a row whose meter read 0 W is kept (refusing it made a
    whole data file unreadable), a negative reading is refused naming the column."""
    from kt.autotune.dataset import check_row
    from kt.errors import DatabaseError

    row = dict(gpperf["rows"][0], id=1)
    check_row({**row, "power_w": 0.0}, "data: row id 1")
    with pytest.raises(DatabaseError, match="column power_w is -1.0; allowed: a finite number of watts >= 0"):
        check_row({**row, "power_w": -1.0}, "data: row id 1")


def test_a_passing_gpu_row_without_a_runtime_is_refused_not_taken_for_a_failure(tmp_path):
    """kt replay read an edited database's passing GPU row with runtime_ms NULL as a failed config (the optimum
    it scored against moved), and every fit left it out, while a 0 there was refused naming the row."""
    from kt.autotune.dataset import read_rows
    from kt.autotune.replay import replay_file
    from kt.errors import DatabaseError

    rows = list(csv.DictReader(H200_ROWS.open(newline="")))
    line = next(i for i, r in enumerate(rows) if r["runner"] == "cuda" and r["status"] == "ok")
    rows[line]["runtime_ms"] = ""
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "id": str(i)} for i, row in enumerate(rows, 1))  # one database's ids
    message = f"edited.csv' line {line + 2}: column runtime_ms is null in a passing GPU row"
    with pytest.raises(DatabaseError, match=message):
        read_rows(edited)
    with pytest.raises(DatabaseError, match=message):
        replay_file(edited, "random", 1, repeats=1)
    assert len(read_rows(H200_ROWS)) == len(rows)


def test_inspect_takes_a_calibrated_tunes_own_profile_though_it_bears_a_built_in_name(tmp_path):
    """`kt calibrate` names a profile after its built-in (h100): inspect must go by the recorded key (h100-<hash>),
    not the name, else it took the built-in h100 and compared the wrong target's rows (a first version of
    preferring the recorded target over the spec's device did)."""
    import dataclasses

    from kt.autotune.inspection import _artifact_rows

    if not GPPERF_CSV.is_file():
        pytest.skip(f"GPPerf measurements not found at {GPPERF_CSV} (set KT_GPPERF_DIR)")
    calibrated = dataclasses.replace(RTX4070_PROFILE, name="h100")
    profile_file = save_profile(calibrated, tmp_path / "gpu.json")
    rows = gpperf_rows()
    with Database(tmp_path / "d.db") as db:
        for row in rows:
            db.insert({**row, "target": calibrated.key})
    row = next(r for r in rows if r["problem"]["m"] == 128256 and r["problem"]["k"] == 1024)
    device = {"target": "h100", "key": calibrated.key, "ran_on": RTX4070, "runner": "cuda"}
    tuned = artifact(
        tmp_path / "a",
        GemmProblem(**row["problem"]),
        CUTLASS_CONFIG,
        tmp_path / "d.db",
        True,
        device,
        family_version=row["family_version"],
        spec={"device": str(profile_file)},
        runtime_ms=row["runtime_ms"],
    )
    with Database(tmp_path / "d.db") as db:  # the same problem measured for the built-in h100 too
        db.insert({**row, "target": "h100"})
    result, profile, _ = _artifact_rows(tuned, None, None)
    assert (result.target, profile.key) == (calibrated.key, calibrated.key)


def test_the_plots_legend_names_the_tuners_model_in_two_short_lines():
    """The shipped forest's description (its rows, shapes, stand-in) made a legend entry wider than the figure:
    the axes were squeezed into its right 40% and the legend ran off the left edge."""
    from kt.autotune.inspection import tuner_label

    model = (
        "forest for h100 predicting h200 with its own roofline: 34188 rows, 1234 problems of 917 shapes, no "
        "power, at selection"
    )
    lines = tuner_label(model).splitlines()
    assert len(lines) == 2 and max(map(len, lines)) <= 50 and lines[1].startswith("(forest for h100")


def test_a_csv_that_holds_a_row_twice_is_refused_naming_both_lines(tmp_path):
    """Two exports joined by hand (a database holds each row once) were read whole: a fit weighed their rows
    twice, and an evaluation counted a config's two copies as two of a shape's top five."""
    from kt.autotune.dataset import read_rows
    from kt.errors import DatabaseError

    data, _ = malformed_data(tmp_path, "csv", "spec_name", "x")
    header, first, second = data.read_text().splitlines(keepends=True)
    assert len(read_rows(data)) == 2
    data.write_text(header + first + second + first)
    with pytest.raises(DatabaseError, match=r"data.csv' line 4: id \d+ again \(line 2 has it\); a kt export CSV "
                       r"holds each row once: keep one copy$"):  # fmt: skip
        read_rows(data)
    assert_one_line_error(kt("costmodel", "eval", "--data", data), "line 4: id ")
    # exports of two databases joined (each numbers its rows from 1): another row of that id, which "keep one
    # copy" would have dropped
    cells = first.split(",", 8)  # (the 8th cell is config_key)
    data.write_text(header + first + second + ",".join([*cells[:7], "m16n16k16g1w4s2x1", cells[8]]))
    with pytest.raises(DatabaseError, match=r"line 4: id \d+ again, on another row than line 2's; exports of two "
                       r"databases joined\? give each row its own id"):  # fmt: skip
        read_rows(data)


def test_fit_refuses_data_of_two_timing_regimes(tmp_path):
    """Times taken with a warm L2 are another quantity than flushed ones (the tune loop refuses to mix them in
    one problem): `kt costmodel fit --data` learnt their mixture without a word. The H200 run's CSV with its
    first GEMM problem's rows marked l2_warm is refused in one line, and fits as it was."""
    with H200_ROWS.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    first = next(r["problem_key"] for r in rows if r["family"] == "gemm")
    for row in rows:
        if row["problem_key"] == first:
            row["timing_regime"] = "l2_warm"
    mixed = tmp_path / "mixed.csv"
    with mixed.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    result = kt("costmodel", "fit", "--data", mixed, "--device", "h200", "--out", tmp_path / "m.skops")
    assert_one_line_error(result, "holds times of several timing regimes: l2_flushed (")
    assert "l2_warm (" in result.stderr and not (tmp_path / "m.skops").exists()


def test_inspect_takes_the_rows_of_the_target_the_artifact_recorded(gpperf, tmp_path):
    """inspect chose an artifact's target from its spec's device (the op file's, which --device overrides) or a
    name's start: rows of another tune under a second key were read, or refused as two targets though the
    artifact's key named one. The key it recorded is its own rows' target."""
    from kt.autotune.dataset import read_rows

    row = next(r for r in gpperf["rows"] if r["problem"]["m"] == 128256 and r["problem"]["k"] == 1024)
    both = tmp_path / "both.db"
    shutil.copy(gpperf["db"], both)
    key = row["target"]
    with Database(both) as db:  # the same rows under another calibrated key of the card
        for other in read_rows(gpperf["db"]):
            db.insert({**{k: v for k, v in other.items() if k != "id"}, "target": "rtx4070-deadbeef"})
    with sqlite3.connect(both) as conn:  # the tune's own predictions: the tuner's column needs no profile
        conn.execute("UPDATE measurements SET predicted_ms = runtime_ms * 1.1")
    device = {"target": "rtx4070", "key": key, "ran_on": RTX4070, "runner": "cuda"}
    art = artifact(
        tmp_path / "gpc", GemmProblem(**row["problem"]), CUTLASS_CONFIG, both, True, device,
        family_version=row["family_version"],
        spec={"device": str(tmp_path / "on-another-machine.json")},  # its profile is not here
    )  # fmt: skip
    result = kt("inspect", art, "--plots", tmp_path / "plots")
    assert result.exit_code == 0, result.stderr
    assert f"1 measured row of 1 problem on {RTX4070} (target {key})" in result.stdout, result.stdout
    meta = json.loads((art / "meta.json").read_text())
    (art / "meta.json").write_text(json.dumps({**meta, "kernel": "pytorch"}))
    said = kt("inspect", art, "--plots", tmp_path / "plots").stdout
    assert "the artifact runs PyTorch's own path, which beat every generated config" in said, said
