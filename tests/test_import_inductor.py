"""kt import inductor: Inductor's autoheuristic mm logs become rows kt's cost model reads like a `kt export`.

The small logs here are written by the tests in the exact format of the real ones; their timings are inputs for
the parser (random numbers), not measurements. The end-to-end tests read the real logs in
../shared/data/autoheuristic (see its README.md) and skip where they are absent; they are read, never copied.
"""

import csv
import gzip
import json
import random
import re
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from kt.autotune.database import BASELINE_KEY, COLUMN_NAMES
from kt.autotune.dataset import measured_records, read_rows
from kt.autotune.inductor import COLUMNS, FAILED, ORIGIN
from kt.cli import main
from kt.codegen import GemmConfig
from kt.errors import DatabaseError
from kt.ir import GemmProblem

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/autoheuristic"
H100 = {"shared_memory": 232448, "device_capa": [9, 0], "name": "mm"}
A100 = {"shared_memory": 166912, "device_capa": [8, 0], "name": "mm"}
H100_NAME = "NVIDIA H100 (autoheuristic log; variant not recorded)"
A100_NAME = "NVIDIA A100 (autoheuristic log; variant not recorded)"
TRITON = "type=triton_BLOCK-M={}_BLOCK-K={}_BLOCK-N={}_numstages={}_numwarps={}"


def kt(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_one_line_error(result, message):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("kt: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    assert message in result.stderr, result.stderr


def line(m, k, n, choice, feedback, dtype="float16", strides=None, tf32=None):
    """One log line in Inductor's column order (m, k, n), row-major operands unless `strides` says otherwise."""
    s10, s11, s20, s21 = strides or (k, 1, n, 1)
    tf32 = tf32 if tf32 is not None else ("False" if dtype == "float32" else "not_float_32")
    a_contig, b_contig = s11 == 1 and s10 == k, s21 == 1 and s20 == n
    return (
        f"{m},{k},{n},torch.{dtype},torch.{dtype},{s10},{s11},{s20},{s21},{a_contig},{b_contig},{tf32},"
        f"{choice},{feedback}"
    )


def write_log(path: Path, lines: list[str], header=H100, zipped: bool = False) -> Path:
    text = "\n".join([json.dumps(header), ",".join(COLUMNS), *lines]) + "\n"
    if zipped:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def import_rows(tmp_path, *logs, out_name="out.csv"):
    out = tmp_path / out_name
    result = kt("import", "inductor", *logs, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    with open(out, newline="") as handle:
        return list(csv.DictReader(handle)), result


def by_config(rows):
    return {r["config_key"]: r for r in rows}


def timings(rng, count):
    return [f"{rng.uniform(0.01, 5.0)!r}" for _ in range(count)]


# -- rows ------------------------------------------------------------------------------------------------------


def test_rows_name_problem_and_config_as_kt_does_and_summarise_every_repeat(tmp_path):
    rng = random.Random(7)
    m, k, n = 192, 320, 96  # Inductor's order is m, k, n
    triton = TRITON.format(64, 32, 128, 4, 8)
    times = timings(rng, 5)
    extern = timings(rng, 3)
    lines = [line(m, k, n, triton, t, "bfloat16") for t in times]
    lines += [line(m, k, n, "extern_mm", t, "bfloat16") for t in extern]
    rows, result = import_rows(tmp_path, write_log(tmp_path / "log.txt", lines))

    assert list(rows[0]) == [*COLUMN_NAMES, "repeats_ms", "source"]
    problem = GemmProblem(m=m, n=n, k=k, dtype="bfloat16")
    config = GemmConfig(block_m=64, block_n=128, block_k=32, group_m=8, num_warps=8, num_stages=4, split_k=1)
    row = by_config(rows)[config.key()]
    assert row["problem_key"] == problem.key()
    assert json.loads(row["problem"]) == problem.to_dict()
    assert json.loads(row["config"]) == config.to_dict()
    assert (row["runner"], row["target"], row["device"], row["family"]) == ("cuda", "h100", H100_NAME, "gemm")
    assert row["status"] == "ok" and row["timer"] == "inductor_benchmarker"
    values = sorted(float(t) for t in times)
    assert float(row["runtime_ms"]) == statistics.median(values)
    assert float(row["runtime_min_ms"]) == values[0]
    assert values[0] <= float(row["runtime_p20_ms"]) <= float(row["runtime_p80_ms"]) <= values[-1]
    assert int(row["runs"]) == 5
    assert row["repeats_ms"].split(";") == times  # every repeat, as logged, in order
    assert row["source"] == f"{ORIGIN} log.txt"
    assert row["triton_version"] and row["created_at"] == "" and row["rel_err"] == ""
    out = tmp_path / "out.csv"
    assert result.stdout.count("\n") == 1
    assert "read 8 timing lines of 1 file: 1 problem, 1 Triton config, 0 failed" in result.stdout
    assert f"1 cuBLAS baseline row, on {H100_NAME} (target h100) -> 2 rows in {out}" in result.stdout


@pytest.mark.parametrize(
    ("strides", "a_layout", "b_layout"),
    [
        ((320, 1, 96, 1), "row", "row"),
        ((1, 192, 96, 1), "col", "row"),
        ((320, 1, 1, 320), "row", "col"),  # mat2_stride_0 == 1: B stored transposed
        ((1, 192, 1, 320), "col", "col"),
        ((640, 1, 1, 640), "row", "col"),  # slices of wider tensors: the layout of the stride that is 1
    ],
)
def test_layouts_follow_the_strides(tmp_path, strides, a_layout, b_layout):
    log = write_log(tmp_path / "log.txt", [line(192, 320, 96, "extern_mm", "0.25", strides=strides)])
    (row,), result = import_rows(tmp_path, log)
    problem = json.loads(row["problem"])
    assert (problem["a_layout"], problem["b_layout"]) == (a_layout, b_layout)
    assert ("padded leading dimension" in result.stdout) == (strides[0] == 640)


def test_an_operand_with_a_size_1_dimension_is_one_row_problem_whatever_its_strides(tmp_path):
    rng = random.Random(3)
    m, k, n = 4096, 1, 512  # A is a column vector, B a row vector: one contiguous run each
    logged = [(1, 1, 1, 1), (1, 1, n, 1), (1, m, 1, 1), (1, m, n, 1)]
    times = timings(rng, len(logged))
    lines = [line(m, k, n, "extern_mm", t, strides=s) for s, t in zip(logged, times)]
    (row,), _ = import_rows(tmp_path, write_log(tmp_path / "log.txt", lines))
    assert row["problem_key"] == GemmProblem(m=m, n=n, k=k).key()
    assert row["repeats_ms"].split(";") == times


def test_fp32_precision_is_tf32_only_when_inductor_allowed_it(tmp_path):
    lines = [
        line(256, 128, 64, "extern_mm", "0.5", "float32", tf32="True"),
        line(256, 128, 64, "extern_mm", "0.7", "float32", tf32="False"),
        line(256, 128, 64, "extern_mm", "0.3", "float16"),
    ]
    rows, _ = import_rows(tmp_path, write_log(tmp_path / "log.txt", lines))
    found = {(json.loads(r["problem"])["dtype"], json.loads(r["problem"])["precision"]) for r in rows}
    assert found == {("float32", "tf32"), ("float32", "ieee"), ("float16", "ieee")}


def test_a_config_that_always_logged_inf_is_a_crash_row_without_runtime(tmp_path):
    failing, flaky = TRITON.format(128, 128, 64, 4, 8), TRITON.format(32, 32, 32, 2, 4)
    lines = [line(512, 256, 128, failing, "inf")] * 3
    lines += [line(512, 256, 128, flaky, t) for t in ("inf", "0.42", "0.40")]
    rows, result = import_rows(tmp_path, write_log(tmp_path / "log.txt", lines))
    crash = next(r for r in rows if r["status"] == "crash")
    assert crash["message"] == FAILED and crash["runtime_ms"] == "" and crash["runs"] == ""
    assert crash["repeats_ms"] == "inf;inf;inf"
    ok = next(r for r in rows if r["status"] == "ok")  # some repeats ran: the finite ones count
    assert float(ok["runtime_ms"]) == statistics.median([0.42, 0.40]) and ok["runs"] == "2"
    assert ok["repeats_ms"] == "inf;0.42;0.40"
    assert "1 failed" in result.stdout


def test_extern_mm_is_the_problems_baseline_row_like_a_tunes_candidate_zero(tmp_path):
    triton = TRITON.format(64, 64, 64, 3, 4)
    lines = [line(1024, 512, 256, choice, t) for choice, t in (("extern_mm", "0.11"), (triton, "0.13"))]
    log = write_log(tmp_path / "log.txt", lines)
    rows, _ = import_rows(tmp_path, log)
    baseline = by_config(rows)[BASELINE_KEY]
    assert baseline["config"] == "{}" and baseline["impl"] == "cublas (extern_mm)"
    checked = read_rows(tmp_path / "out.csv")  # kt's own reader and row check accept both
    assert [r["config_key"] for r in checked] == [BASELINE_KEY, "m64n64k64g8w4s3x1"]
    records = measured_records(tmp_path / "out.csv")  # the baseline is no config the model ranks
    assert [r["config_key"] for r in records] == ["m64n64k64g8w4s3x1"]
    assert records[0]["runtime_ms"] == 0.13


def test_a_gzipped_log_is_read_by_its_magic_bytes_whatever_its_name(tmp_path):
    rng = random.Random(11)
    lines = [line(128, 64, 256, TRITON.format(32, 32, 64, 3, 4), t) for t in timings(rng, 3)]
    plain, _ = import_rows(tmp_path, write_log(tmp_path / "log.txt", lines), out_name="plain.csv")
    zipped, _ = import_rows(tmp_path, write_log(tmp_path / "log", lines, zipped=True), out_name="zip.csv")
    suffixed, _ = import_rows(
        tmp_path, write_log(tmp_path / "l.txt.gz", lines, zipped=True), out_name="gz.csv"
    )
    assert (tmp_path / "log").read_bytes()[:2] == b"\x1f\x8b"
    for rows in (zipped, suffixed):
        assert [{k: v for k, v in r.items() if k != "source"} for r in rows] == [
            {k: v for k, v in r.items() if k != "source"} for r in plain
        ]


def test_several_files_merge_repeats_of_one_gpu_and_keep_gpus_apart(tmp_path):
    rng = random.Random(5)
    first, second, third = timings(rng, 2), timings(rng, 3), timings(rng, 2)
    lines = [line(64, 64, 64, "extern_mm", t) for t in first]
    one = write_log(tmp_path / "one.txt", lines)
    two = write_log(tmp_path / "two.txt", [line(64, 64, 64, "extern_mm", t) for t in second])
    a100 = write_log(tmp_path / "a100.txt", [line(64, 64, 64, "extern_mm", t) for t in third], A100)
    rows, result = import_rows(tmp_path, one, two, a100)
    h100, other = sorted(rows, key=lambda r: r["target"], reverse=True)
    assert h100["repeats_ms"].split(";") == first + second and h100["runs"] == "5"
    assert h100["source"] == f"{ORIGIN} one.txt;two.txt"
    assert (other["target"], other["device"], other["runs"]) == ("a100", A100_NAME, "2")
    assert "2 problems" in result.stdout and f"{H100_NAME} (target h100), {A100_NAME}" in result.stdout
    assert_one_line_error(kt("import", "inductor", one, one, "--out", tmp_path / "x.csv"), "given twice")
    copy = tmp_path / "copy.txt"  # the same log under another name: every repeat counted twice (runs 2 of 1)
    copy.write_bytes(one.read_bytes())
    assert_one_line_error(
        kt("import", "inductor", one, copy, "--out", tmp_path / "x.csv"),
        f"'{copy}' holds the same log as '{one}'; its repeats would count twice, so give one of them",
    )
    zipped = tmp_path / "one.txt.gz"  # the log and its gzip: different bytes, one log (runs 4 of 2)
    zipped.write_bytes(gzip.compress(one.read_bytes()))
    assert_one_line_error(
        kt("import", "inductor", one, zipped, "--out", tmp_path / "x.csv"),
        f"'{zipped}' holds the same log as '{one}'; its repeats would count twice, so give one of them",
    )


def autotune_run(rng, m, k, n, configs):
    """One autotune run as Inductor logs it: every choice of one problem once, cuBLAS first."""
    choices = ["extern_mm", *(TRITON.format(*config) for config in configs)]
    return [line(m, k, n, choice, t) for choice, t in zip(choices, timings(rng, len(choices)))]


def test_an_autotune_run_read_twice_counts_once_in_overlapping_logs_and_within_one(tmp_path):
    """An older copy of a log Inductor appends to, read beside the newer one, counted every repeat of their
    common runs twice (`runs` 2 where 1 was measured, and the percentiles over doubled repeats); a run is one
    measurement however often it is logged."""
    rng = random.Random(3)
    configs = [(64, 32, 64, 3, 4), (128, 64, 128, 4, 8)]
    first, second, third = (autotune_run(rng, 256, 128, 512, configs) for _ in range(3))
    older = write_log(tmp_path / "older.txt", first + second)
    newer = write_log(tmp_path / "newer.txt", first + second + third)  # the same log, grown by a run
    rows, result = import_rows(tmp_path, older, newer)
    alone, _ = import_rows(tmp_path, newer, out_name="alone.csv")
    assert [{k: v for k, v in r.items() if k != "source"} for r in rows] == [
        {k: v for k, v in r.items() if k != "source"} for r in alone
    ]
    assert {r["runs"] for r in rows} == {"3"}
    assert (
        "read 15 timing lines of 2 files: 1 problem, 2 Triton configs, 0 failed, 1 cuBLAS baseline row, on "
        f"{H100_NAME} (target h100); 6 timing lines of 2 autotune runs repeat a run already read, every choice "
        "and timing to the digit: counted once -> 3 rows"
    ) in " ".join(result.stdout.split())
    # within one file too: Inductor logs a run again as it was (its cached timings)
    logged_again = write_log(tmp_path / "again.txt", first + second + first + third + second)
    rows, result = import_rows(tmp_path, logged_again, out_name="again.csv")
    assert {r["runs"] for r in rows} == {"3"} and "6 timing lines of 2 autotune runs repeat" in result.stdout
    # a run that differs in one timing is another measurement, and a single line is no fingerprint (two runs
    # time a config alike to the digit now and then): both count
    changed = first[:-1] + [first[-1].rsplit(",", 1)[0] + ",0.5"]
    single = [line(64, 64, 64, "extern_mm", "0.25")] * 2
    rows, result = import_rows(
        tmp_path, write_log(tmp_path / "d.txt", first + changed + single), out_name="d.csv"
    )
    assert {r["runs"] for r in rows} == {"2"} and "repeat a run" not in result.stdout


def test_an_older_copy_cut_off_inside_a_run_counts_that_run_once(tmp_path):
    """Inductor appends a run line by line: a copy taken mid-run ends in part of it, which matched no whole run
    read, so its timings counted twice (runs 2 where 1 was measured)."""
    rng = random.Random(5)
    configs = [(64, 32, 64, 3, 4), (128, 64, 128, 4, 8), (64, 64, 64, 2, 4)]
    first, second = (autotune_run(rng, 256, 128, 512, configs) for _ in range(2))
    cut = write_log(tmp_path / "cut.txt", first + second[:2])  # two of the second run's four lines
    whole = write_log(tmp_path / "whole.txt", first + second)
    alone, _ = import_rows(tmp_path, whole, out_name="alone.csv")
    for order in ((cut, whole), (whole, cut)):
        rows, result = import_rows(tmp_path, *order)
        assert [{k: v for k, v in r.items() if k != "source"} for r in rows] == [
            {k: v for k, v in r.items() if k != "source"} for r in alone
        ], order
        assert "6 timing lines of 2 autotune runs repeat a run already read" in " ".join(
            result.stdout.split()
        )
    # a file's last run that no other file holds counts, whole or cut
    rows, _ = import_rows(tmp_path, cut, out_name="cut.csv")
    assert {r["runs"] for r in rows} == {"1", "2"}


def test_a_byte_that_is_not_utf8_is_named_by_its_own_line(tmp_path):
    """The text reader decoded ahead in chunks: a bad byte on line 1001 was "near line 957"."""
    lines = [line(64, 64, 64, "extern_mm", f"0.{i + 1}") for i in range(1200)]
    log = write_log(tmp_path / "log.txt", lines)
    text = log.read_bytes().split(b"\n")
    text[1000] = text[1000].replace(b"extern_mm", b"extern_\xffmm")
    log.write_bytes(b"\n".join(text))
    result = kt("import", "inductor", log, "--out", tmp_path / "o.csv")
    assert_one_line_error(result, "log.txt' line 1001: not UTF-8 text (byte 0xff at column")


def test_a_line_csv_cannot_read_is_named_by_its_own_line(tmp_path):
    """csv's own count named the line before: a lone CR on line 6 was "near line 5"."""
    lines = [line(64, 64, 64, "extern_mm", f"0.{i + 1}") for i in range(8)]
    lines[3] = lines[3].replace("True,True", "True\rTrue")  # line 6: the JSON header and the CSV header first
    result = kt("import", "inductor", write_log(tmp_path / "log.txt", lines), "--out", tmp_path / "o.csv")
    assert_one_line_error(result, "log.txt' near line 6: cannot read it (new-line character seen")


def test_an_import_given_twice_in_one_csv_is_refused_where_it_was_read_twice(tmp_path):
    """An imported CSV has no id column, the only repeat the reader looked for: one import appended to
    itself was fitted and evaluated with every row twice."""
    rng = random.Random(3)
    configs = [TRITON.format(64, 32, 64, 3, 4), TRITON.format(128, 32, 64, 4, 8)]
    lines = [line(256, 128, 96, c, t) for c, t in zip(configs, timings(rng, 2))]
    rows, _ = import_rows(tmp_path, write_log(tmp_path / "log.txt", lines))
    assert len(read_rows(tmp_path / "out.csv")) == 2
    text = (tmp_path / "out.csv").read_text().splitlines(keepends=True)
    (tmp_path / "twice.csv").write_text("".join(text + text[1:]))
    with pytest.raises(DatabaseError, match=r"twice.csv' line 4: the row of line 2 again; .* keep one copy$"):
        read_rows(tmp_path / "twice.csv")
    retimed = text[2].replace(rows[1]["runtime_ms"], "9.5", 1)
    (tmp_path / "retimed.csv").write_text("".join([*text, retimed]))
    with pytest.raises(
        DatabaseError, match=r"line 4: the measurement key of line 3 \(runner, .*\) on another row"
    ):
        read_rows(tmp_path / "retimed.csv")
    # a number past Python's 4300 digits in a JSON column: its error named no column
    huge = text[1].replace('""m"": 256', '""m"": ' + "9" * 5000, 1)
    assert huge != text[1], text[1]
    (tmp_path / "huge.csv").write_text("".join([text[0], huge]))
    with pytest.raises(
        DatabaseError, match=r"huge.csv' line 2: column problem holds a number too long for kt"
    ):
        read_rows(tmp_path / "huge.csv")


def test_origin_names_where_the_logs_came_from(tmp_path):
    log = write_log(tmp_path / "mine.txt", [line(64, 64, 64, "extern_mm", "0.2")])
    result = kt("import", "inductor", log, "--origin", "my-sweep@2026-11", "--out", tmp_path / "o.csv")
    assert result.exit_code == 0, result.output
    assert len(read_rows(tmp_path / "o.csv")) == 1
    with open(tmp_path / "o.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["source"] == "my-sweep@2026-11 mine.txt"
    empty = kt(
        "import", "inductor", log, "--origin", "", "--out", tmp_path / "e.csv"
    )  # was the default origin
    assert_one_line_error(empty, "origin: ''; allowed: one line of text")
    assert not (tmp_path / "e.csv").exists()


def test_blank_lines_are_skipped_and_line_numbers_still_count_them(tmp_path):
    lines = [line(64, 64, 64, "extern_mm", "0.2"), "", line(64, 64, 64, "extern_mm", "0.3"), "1,2"]
    result = kt("import", "inductor", write_log(tmp_path / "log.txt", lines), "--out", tmp_path / "o.csv")
    assert_one_line_error(result, "log.txt' line 6: 2 columns; allowed: 14")


# -- refusals: one line naming the file and line, exit 2, nothing written --------------------------------------


GOOD = line(64, 32, 16, "extern_mm", "0.2")
BAD_LINES = [
    ("64,32,16,torch.float16", "line 4: 4 columns; allowed: 14"),
    (GOOD.replace("64,32", "64x,32", 1), "line 4: column m is '64x'; allowed: an integer from 1 to"),
    (GOOD.replace("64,32", "0,32", 1), "line 4: column m is '0'; allowed: an integer from 1 to"),
    (GOOD.replace("torch.float16", "torch.int8"), "line 4: column mat1_dtype is 'torch.int8'; allowed:"),
    (
        GOOD.replace("torch.float16,torch.float16", "torch.float16,torch.bfloat16"),
        "line 4: mat1_dtype torch.float16 and mat2_dtype torch.bfloat16 differ",
    ),
    (
        GOOD.replace("extern_mm", "type=triton_BLOCK-M=64"),
        "line 4: column choice is 'type=triton_BLOCK-M=64'",
    ),
    (GOOD.replace("extern_mm", TRITON.format(64, 0, 64, 3, 4)), "line 4: column choice: BLOCK-K is 0"),
    # no Triton kernel has a block or warp count that is no power of two: they were imported as configs
    (
        GOOD.replace("extern_mm", TRITON.format(48, 32, 64, 3, 4)),
        "line 4: column choice: BLOCK-M is 48; allowed: a power of two from 1 to 1048576 (the template's "
        "tl.arange over a block takes only a power-of-two range)",
    ),
    (
        GOOD.replace("extern_mm", TRITON.format(64, 32, 96, 3, 4)),
        "line 4: column choice: BLOCK-N is 96; allowed: a",
    ),
    (
        GOOD.replace("extern_mm", TRITON.format(64, 32, 64, 3, 6)),
        "line 4: column choice: numwarps is 6; allowed: a power of two from 1 to 1048576 (Triton takes no other",
    ),
    (
        GOOD.replace("extern_mm", TRITON.format(64, 32, 64, 0, 4)),
        "line 4: column choice: numstages is 0; allowed: an integer from 1 to 1048576",
    ),
    (GOOD.replace("0.2", "fast"), "line 4: column feedback is 'fast'; allowed: milliseconds > 0, or inf"),
    (GOOD.replace("0.2", "-0.2"), "line 4: column feedback is '-0.2'"),
    # Python's int() and float() took forms Inductor never writes: 7_470 ms read as 7470, an Arabic-Indic 2
    (GOOD.replace("0.2", "7_470"), "line 4: column feedback is '7_470'; allowed: milliseconds > 0"),
    (GOOD.replace("0.2", " 0.5"), "line 4: column feedback is ' 0.5'; allowed: milliseconds > 0"),
    (GOOD.replace("64,32", "1_152,32", 1), "line 4: column m is '1_152'; allowed: an integer from 1 to"),
    (
        GOOD.replace("extern_mm", TRITON.format(64, 32, 64, 3, "\u0662")),
        "line 4: column choice is 'type=triton",
    ),
    (GOOD.replace("not_float_32", "True"), "line 4: column using_tf32 is 'True' for torch.float16"),
    # past Python's 4,300 digits int() raised: a traceback, exit 1
    (GOOD.replace("64,32", "9" * 5000 + ",32", 1), "line 4: column m is '99999999999999999999"),
    (
        GOOD.replace("extern_mm", TRITON.format("1" * 5000, 32, 64, 3, 4)),
        "line 4: column choice is 'type=triton",
    ),
    (
        line(64, 32, 16, "extern_mm", "0.2", strides=(0, 1, 16, 1)),
        "line 4: mat1 (64 x 32) has strides (0, 1)",
    ),
    (
        line(64, 32, 16, "extern_mm", "0.2", strides=(32, 1, 32, 2)),
        "line 4: mat2 (32 x 16) has strides (32, 2)",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_a_malformed_line_is_one_error_naming_file_and_line_and_nothing_is_written(tmp_path, bad, message):
    log = write_log(tmp_path / "log.txt", [GOOD, bad, GOOD])
    result = kt("import", "inductor", log, "--out", tmp_path / "x.csv")
    assert_one_line_error(result, f"'{log}' {message}")
    assert list(tmp_path.iterdir()) == [log]  # no output, no temporary file


def test_inductors_own_configs_off_kts_axes_are_kept_one_warp_one_stage_and_odd_stage_counts(tmp_path):
    """What the power-of-two check must not refuse: Inductor's list has 1 warp, 1 stage and 5 stages (kt's own
    space has none of them), and a stage count is any count."""
    configs = [(16, 16, 32, 1, 1), (128, 64, 128, 5, 8), (32, 128, 16, 3, 2)]
    lines = [line(64, 32, 16, TRITON.format(*config), f"0.{i + 2}") for i, config in enumerate(configs)]
    rows, _ = import_rows(tmp_path, write_log(tmp_path / "log.txt", lines))
    assert [r["config_key"] for r in rows] == [
        "m16n32k16g8w1s1x1",
        "m128n128k64g8w8s5x1",
        "m32n16k128g8w2s3x1",
    ]


@pytest.mark.parametrize("zipped", [False, True])
def test_a_log_whose_last_row_is_cut_off_is_refused_not_read_as_a_shorter_number(tmp_path, zipped):
    """A copy of a log cut off mid-row (a partial download, a full disk) ended in `extern_mm,1` where the log
    had 10.269248008728027: imported as a 1.0 ms timing. The last row must end with its line break."""
    text = "\n".join([json.dumps(H100), ",".join(COLUMNS), GOOD, line(64, 32, 16, "extern_mm", "1")])
    log = tmp_path / ("log.txt.gz" if zipped else "log.txt")
    log.write_bytes(gzip.compress(text.encode()) if zipped else text.encode())
    result = kt("import", "inductor", log, "--out", tmp_path / "x.csv")
    assert_one_line_error(
        result, f"'{log}' line 4: the file ends without a line break, so its last row may be"
    )
    assert list(tmp_path.iterdir()) == [log]
    log.write_bytes(gzip.compress((text + "\r\n").encode()) if zipped else (text + "\n").encode())
    rows, _ = import_rows(tmp_path, log)
    assert [float(r["runtime_ms"]) for r in rows] == [0.6]  # whole: the median of its two repeats, 0.2 and 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: empty"),
        (",".join(COLUMNS) + "\n" + GOOD + "\n", "line 1: not the JSON header"),
        ("{not json\n" + ",".join(COLUMNS) + "\n", "line 1: not the JSON header"),
        (
            '{"device_capa": [7, 0]}\n' + ",".join(COLUMNS) + "\n",
            "line 1: device_capa [7, 0] has no kt device",
        ),
        ('{"device_capa": "sm_90"}\n', 'line 1: device_capa is "sm_90"; allowed: [major, minor]'),
        ('{"device_capa": [9, 0], "name": "pad_mm"}\n', "line 1: the log is of 'pad_mm'; allowed: mm"),
        (
            json.dumps(H100) + "\nm,k,n,choice,feedback\n" + GOOD + "\n",
            "line 2: the CSV header is 'm,k,n,choice",
        ),
    ],
)
def test_a_bad_header_is_one_error_and_nothing_is_written(tmp_path, text, message):
    log = tmp_path / "log.txt"
    log.write_text(text)
    result = kt("import", "inductor", log, "--out", tmp_path / "x.csv")
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == [log]


def test_a_gzipped_log_damaged_mid_file_is_called_damaged_not_a_malformed_row(tmp_path):
    """Bytes damaged inside a .gz (a bad copy) decompress into rows that look malformed; gzip's checksum, read
    only at the end, tells the two apart. The error said "line 3: 13 columns" of a row Inductor wrote right."""
    log = write_log(tmp_path / "log.txt", [GOOD, line(64, 32, 16, "extern_mm", "1.5")])
    packed = gzip.compress(log.read_bytes(), compresslevel=0)  # stored: each byte of the text as it is
    at = packed.index(b",extern_mm,")
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(packed[:at] + b";" + packed[at + 1 :])
    result = kt("import", "inductor", broken, "--out", tmp_path / "x.csv")
    assert_one_line_error(result, f"'{broken}' is damaged (CRC check failed")
    assert "rows from about line 3 on are not what Inductor wrote; copy the log again" in result.stderr
    assert not (tmp_path / "x.csv").exists()
    whole = tmp_path / "whole.txt.gz"  # the same row malformed in an intact file: the row is blamed
    whole.write_bytes(gzip.compress(log.read_text().replace(",extern_mm,", ";extern_mm,").encode()))
    assert_one_line_error(kt("import", "inductor", whole, "--out", tmp_path / "x.csv"), "line 3: 13 columns")


def test_unreadable_input_and_a_bad_out_path_are_one_line_errors(tmp_path):
    log = write_log(tmp_path / "log.txt", [GOOD])
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(log.read_bytes())[:-12])  # truncated
    assert_one_line_error(kt("import", "inductor", broken, "--out", tmp_path / "x.csv"), "cannot read it")
    assert_one_line_error(
        kt("import", "inductor", tmp_path / "no.txt", "--out", tmp_path / "x.csv"), "not found"
    )
    assert_one_line_error(kt("import", "inductor", log, "--out", tmp_path / "x.db"), "must end in .csv")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()
    assert kt("import", "inductor", "--out", tmp_path / "x.csv").exit_code == 2  # no FILE


def test_a_failed_import_keeps_the_previous_output(tmp_path):
    out = tmp_path / "x.csv"
    import_rows(tmp_path, write_log(tmp_path / "good.txt", [GOOD]), out_name="x.csv")
    before = out.read_bytes()
    bad = write_log(tmp_path / "bad.txt", [GOOD, "1,2,3"])
    assert_one_line_error(kt("import", "inductor", bad, "--out", out), "bad.txt' line 4")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "good.txt", "x.csv"]


# -- the real logs ---------------------------------------------------------------------------------------------


def real_log(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the autoheuristic data lives in ../shared/data)")
    return path


def test_the_real_h100_log_imports_322_problems_that_the_cost_model_reads(tmp_path):
    out = tmp_path / "h100.csv"
    result = kt("import", "inductor", real_log("h100_mm.txt.gz"), "--out", out)
    assert result.exit_code == 0, result.output
    assert "read 28344 timing lines of 1 file: 322 problems" in result.stdout
    assert "repeat a run already read" not in result.stdout  # every run of h100_mm is its own
    rows = read_rows(out)
    assert len({r["problem_key"] for r in rows}) == 322
    assert sum(r["config_key"] == BASELINE_KEY for r in rows) == 322  # cuBLAS timed on every problem
    assert {(r["device"], r["target"]) for r in rows} == {(H100_NAME, "h100")}
    records = measured_records(out)
    assert len(records) > 5000 and all(r["runtime_ms"] > 0 for r in records)
    assert len({r["group"] for r in records}) == 322


def test_costmodel_eval_runs_on_an_imported_slice_of_the_real_h100_log(tmp_path):
    source = real_log("h100_mm.txt.gz")
    with gzip.open(source, "rt") as handle:  # the log is ordered by problem: keep its first 20
        kept, problems = [next(handle), next(handle)], set()
        for text in handle:
            problems.add(tuple(text.split(",")[:12]))
            if len(problems) > 20:
                break
            kept.append(text)
    part = tmp_path / "h100_part.txt"
    part.write_text("".join(kept))
    out = tmp_path / "part.csv"
    assert kt("import", "inductor", part, "--out", out).exit_code == 0
    result = kt("costmodel", "eval", "--data", out, "--folds", "3")
    assert result.exit_code == 0, result.output
    # every problem scored once, held out with the other problems of its shape (sizes, whatever the layout)
    assert re.search(r"\b20 problems, \d+ shapes, 3 folds", result.stdout), result.stdout
    shapes = len({tuple(line.split(",")[:3]) for line in part.read_text().splitlines()[2:]})
    assert result.stdout.strip().endswith(f"| shapes {shapes}"), result.stdout
    # fitted as the h100's model, the log's own card: no note that it was measured on another (the log names
    # no variant, "NVIDIA H100 (autoheuristic log; ...)", and nobody can calibrate the card a log came from)
    fitted = kt("costmodel", "fit", "--data", out, "--out", tmp_path / "part.skops", "--device", "h100")
    assert fitted.exit_code == 0 and "were measured on" not in fitted.stdout, fitted.stdout


def test_fitting_on_an_import_of_cublas_rows_alone_says_that_is_all_it_holds(tmp_path):
    """An import whose problems were timed only by cuBLAS (extern_mm) was told it "holds no GPU-measured
    passing rows", though it holds passing GPU timings: those of the baseline, which the forest does not learn."""
    log = write_log(
        tmp_path / "log.txt", [line(64, 32, 16, "extern_mm", "0.2"), line(64, 64, 16, "extern_mm", "0.3")]
    )
    rows, _ = import_rows(tmp_path, log)
    result = kt("costmodel", "fit", "--data", tmp_path / "out.csv", "--out", tmp_path / "m.skops")
    assert_one_line_error(
        result, "(only 2 timed baseline rows, PyTorch's own path: the forest learns generated"
    )
    assert not (tmp_path / "m.skops").exists()
