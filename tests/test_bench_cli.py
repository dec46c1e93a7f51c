"""`kt bench`: the smoke run on the CPU (every part on tiny shapes through the dry run), its report and files, the
time box, and merging a report into BENCHMARKS.md."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import kt_cli, run_as_user

from kt.bench import BEGIN, END, TABLE_HEAD, merge_table, smoke_specs, tune_cases

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU's dry run (a GPU runs the real one)"
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The whole smoke run as a user starts it: its own process, its console output as a terminal-less one's."""
    out = tmp_path_factory.mktemp("bench") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "kt.cli", "bench", "--smoke", "--out", str(out), "--workers", "2", "--minutes", "20"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    return out, done


def test_the_smoke_run_exits_0_and_every_line_says_nothing_was_timed(smoke_run):
    out, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("dry run, nothing timed on a GPU") for line in lines), lines
    progress = [line for line in done.stderr.splitlines() if line.strip() and "━" not in line]
    assert all("nothing timed on a GPU" in line for line in progress), progress
    # each op's two smoke lines say whose they are (they read alike: "dense float16: ok" twice)
    said = " ".join(lines + progress)
    assert "dense float16 kt: ok" in said and "dense float16 PyTorch: ok" in said, said[-3000:]
    report = (out / "report.md").read_text()
    assert report.startswith("# kt bench (dry run, nothing timed on a GPU)")
    # a dry run's quick tunes are not timed, which their rows say (each read "re-time failed": its energy status,
    # "no energy counter", was taken for a failed re-timing)
    assert "re-time failed" not in report + done.stdout + done.stderr
    assert "| not timed (dry run, nothing timed on a GPU) |" in report
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith(("| case", "| op", "|---")):
            assert "dry run, nothing timed on a GPU" in line, line


def test_the_smoke_run_checks_every_family_and_dtype_and_pytorch_beside_each(smoke_run):
    out, _ = smoke_run
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    smoke = [r for r in rows if r["part"] == "smoke"]
    wanted = {(s["op"], s["dtype"]) for s in smoke_specs(True)}
    assert ("fft", "float32") in wanted and ("blocksparse_grad", "bfloat16") in wanted
    for kind in ("kt", "pytorch"):
        mine = {
            (r["op"], r["dtype"]) for r in smoke if r["kernel"].startswith("PyTorch") == (kind == "pytorch")
        }
        assert mine == wanted, wanted - mine
    assert all(r["status"] == "ok" and float(r["rel_err"]) >= 0 for r in smoke), [
        (r["case"], r["status"], r["message"]) for r in smoke if r["status"] != "ok"
    ]
    assert all(r["timed"] == "False" and not r.get("kt_ms") and not r.get("baseline_ms") for r in rows)
    tunes = [r for r in rows if r["part"] == "tunes"]
    assert [r["case"] for r in tunes] == [c.name for c in tune_cases(True)]
    assert all(r["status"] == "ok" and r["baseline_impl"] for r in tunes)
    assert any(r["part"] == "collect" for r in rows)


def test_the_report_files_are_small_and_the_database_export_is_there(smoke_run):
    out, _ = smoke_run
    for name in ("report.md", "results.csv", "measurements.csv", "bench.log"):
        size = (out / name).stat().st_size
        assert 0 < size < 16 * 1024 * 1024, (name, size)
    with open(out / "measurements.csv", newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert {r["runner"] for r in exported} == {"dryrun"} and all(not r["runtime_ms"] for r in exported)
    assert any(r["config_key"] == "pytorch" for r in exported)
    assert "part smoke" in (out / "bench.log").read_text()
    assert (out / "artifacts").is_dir() and len(list((out / "artifacts").iterdir())) == len(tune_cases(True))


def test_a_dry_runs_report_never_goes_into_benchmarks_md(smoke_run, tmp_path):
    out, _ = smoke_run
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# Benchmarks\n")
    done = kt_cli("bench", "--from", str(out), "--update", str(target))
    assert done.returncode == 2 and "dry run" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "# Benchmarks\n"


def test_merging_replaces_this_devices_rows_of_the_same_cases_and_keeps_the_rest():
    """Table rows are opaque text here (no figures): what is checked is which rows survive a merge. A row is
    (device, date, case, ...); a run with --only replaced all of its device's rows, the other cases' too, and a
    merge again of an earlier run moved its rows to the table's end: a replaced row keeps its place."""
    first = merge_table(
        "# Benchmarks\n\nintro\n", "gpu-a", ["| gpu-a | day 1 | dense |", "| gpu-a | day 1 | fft |"]
    )
    assert first.startswith("# Benchmarks\n\nintro\n\n" + BEGIN) and first.rstrip().endswith(END)
    second = merge_table(first, "gpu-b", ["| gpu-b | day 1 | dense |"])
    third = merge_table(second, "gpu-a", ["| gpu-a | day 2 | dense |", "| gpu-a | day 2 | monarch |"])
    body = third.split(BEGIN)[1].split(END)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ") and line not in TABLE_HEAD]
    assert rows == [
        "| gpu-a | day 2 | dense |",
        "| gpu-a | day 1 | fft |",
        "| gpu-b | day 1 | dense |",
        "| gpu-a | day 2 | monarch |",
    ]
    assert merge_table(third, "gpu-b", ["| gpu-b | day 1 | dense |"]) == third  # merged again: no change
    assert third.count(TABLE_HEAD[0]) == 1 and third.startswith("# Benchmarks\n\nintro")


H200_RUN = (
    Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "h200-2026-12-04-1820"
)  # the latest
# its quick tunes, merged in this order: the whole run, then the two cases it did not reach, each run alone
H200_MERGES = [H200_RUN, H200_RUN / "only-butterfly", H200_RUN / "only-fft"]


def test_the_committed_gpu_run_merges_into_benchmarks_md_unchanged_and_malformed_markers_are_refused(
    tmp_path,
):
    """BENCHMARKS.md's table is what merging the latest H200 run gives (a hand-edited row came back as the
    report had it); misplaced markers crashed the merge (ValueError) or, after an orphan begin marker, lost
    the text between it and the next table."""
    benchmarks = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    copy = tmp_path / "BENCHMARKS.md"
    head, rest = benchmarks.read_text().split(BEGIN)
    copy.write_text(head + BEGIN + "\n" + END + rest.split(END)[1])  # the table's rows all come from the runs
    for run in H200_MERGES:
        done = kt_cli("bench", "--from", str(run), "--update", str(copy))
        assert done.returncode == 0, done.stderr
    assert copy.read_text() == benchmarks.read_text()
    for text in (f"# B\n{END}\nx\n{BEGIN}\n", f"# B\n{BEGIN}\nkeep me\n## Other\nkeep me too\n"):
        target = tmp_path / "bad.md"
        target.write_text(text)
        done = kt_cli("bench", "--from", str(H200_RUN), "--update", str(target))
        assert done.returncode == 2 and "markers; it needs one of each, begin first" in done.stderr, (
            done.stderr
        )
        assert "Traceback" not in done.stderr and target.read_text() == text
    done = kt_cli("bench", "--from", str(H200_RUN), "--update", str(tmp_path / "missing" / "B.md"))
    assert done.returncode == 2 and "update: the folder of" in done.stderr and "does not exist" in done.stderr
    # a run's options beside --from were passed over: --only merged every case
    before = copy.read_text()
    done = kt_cli("bench", "--from", str(H200_RUN), "--update", str(copy), "--only", "butterfly", "--quiet")
    assert done.returncode == 2 and copy.read_text() == before
    assert "--only, --quiet are for a run (--out DIR); drop them" in done.stderr, done.stderr


def _damaged_report(tmp_path, name: str, edit) -> Path:
    """A copy of the committed H200 run whose results.csv text `edit` changes."""
    report = tmp_path / name
    shutil.copytree(H200_RUN, report)
    text = (report / "results.csv").read_text()
    data = edit(text)
    (report / "results.csv").write_bytes(data if isinstance(data, bytes) else data.encode())
    return report


def _tune_line(text: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if ",tunes," in line)


def test_a_damaged_older_or_self_overwriting_report_is_refused_and_benchmarks_md_is_left_as_it_was(tmp_path):
    """A bad figure (0.23x), a missing column, non-UTF-8 text: tracebacks (exit 1). A results.csv cut off in
    its last quick-tune row merged a row of "None" cells with exit 0; nan went in as "nan". An older report
    replaced a newer run's rows without a word, and --update naming the report's own results.csv wrote the
    table into it."""
    target = tmp_path / "BENCHMARKS.md"
    original = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text()
    header = (H200_RUN / "results.csv").read_text().splitlines()[0].split(",")

    def set_cell(column: str, value: str):
        def edit(text: str) -> str:
            lines = text.splitlines(keepends=True)
            line = _tune_line(text) - 1
            cells = lines[line].rstrip("\r\n").split(",")
            assert len(cells) == len(header)  # no quoted comma in the first quick-tune row
            cells[header.index(column)] = value
            lines[line] = ",".join(cells) + "\n"
            return "".join(lines)

        return edit

    line = _tune_line((H200_RUN / "results.csv").read_text())
    cases = {
        "bad-number": (
            set_cell("kt_ms", "0.23x"),
            f"line {line}: kt_ms is '0.23x', not a finite number >= 0",
        ),
        "nan": (set_cell("ratio", "nan"), f"line {line}: ratio is 'nan', not a finite number"),
        "bad-date": (set_cell("date", "04/12/2026"), f"line {line}: date is '04/12/2026', not YYYY-MM-DD"),
        "no-device": (
            lambda text: text.replace(",device,", ",gpu,", 1),
            "has no device column: not a kt bench report's results.csv",
        ),
        "latin-1": (lambda text: text.encode() + b"\xe9\n", "is not UTF-8 text (damaged)"),
        "cut-off": (lambda text: text.rstrip("\n")[:-40], "the file ends without a line break"),
        "short-row": (
            lambda text: "".join(
                ln if n != line else ",".join(ln.split(",")[:16]) + "\n"
                for n, ln in enumerate(text.splitlines(keepends=True), start=1)
            ),
            f"line {line}: 16 cells, the header has {len(header)}: a cut-off or damaged row",
        ),
        "older": (
            lambda text: text.replace("2026-12-04", "2026-11-30"),
            "holds NVIDIA H200's dense fp16 4096^3 from 2026-12-04 18:20, newer than",
        ),
        # the same day, earlier: the whole run (18:20) over the butterfly case run alone after it (18:27)
        # replaced that case's 22.13x with the whole run's failure (dates alone were compared)
        "same-day": (
            lambda text: text,
            "holds NVIDIA H200's fft fp16 n=4096 from 2026-12-04 18:28, newer than",
        ),
        "bad-start": (
            set_cell("started_at", "yesterday"),
            f"line {line}: started_at is 'yesterday', not an ISO date and time",
        ),
        # rows of another GPU, of two runs appended, or without a device or command went in without a word,
        # under the first row's device
        "another-gpu": (
            set_cell("device", "NVIDIA H100"),
            "holds rows of more than one run (device: 'NVIDIA H100', 'NVIDIA H200'); give one run's report",
        ),
        "appended": (
            lambda text: text + text.splitlines(keepends=True)[_tune_line(text) - 1],
            "holds the case dense fp16 4096^3 twice; give one run's report",
        ),
        # one name of two dtypes: the table keys a device's rows by name, so the second went over the first
        "two-dtypes": (
            lambda text: text + set_cell("dtype", "bfloat16")(text).splitlines(keepends=True)[line - 1],
            "holds the case dense fp16 4096^3 twice; give one run's report",
        ),
        "no-command": (set_cell("command", ""), f"line {line}: command is empty; a figure must name its"),
        # a quoted line break is valid CSV: each merge split the table's row in two and kept the old halves
        "line-break": (
            set_cell("case", '"dense\nfp16"'),
            f"line {line}: case holds a line break; each cell of a table row is one line",  # the line it starts on
        ),
    }
    for name, (edit, message) in cases.items():
        target.write_text(original)
        done = kt_cli("bench", "--from", str(_damaged_report(tmp_path, name, edit)), "--update", str(target))
        assert done.returncode == 2 and message in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, (name, done.stderr)
        assert target.read_text() == original, name
    report = _damaged_report(tmp_path, "self", lambda text: text)
    before = (report / "results.csv").read_bytes()
    for path, message in (
        (report / "results.csv", "must end in .md"),
        (report / "report.md", "is the report itself; give another file"),
    ):
        done = kt_cli("bench", "--from", str(report), "--update", str(path))
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert (report / "results.csv").read_bytes() == before


def test_a_dry_run_never_writes_over_a_gpu_runs_report(tmp_path):
    """`kt bench --smoke --out` into the folder of a GPU run's report replaced its report.md, results.csv and
    measurements.csv with the dry run's, exit 0. A dry run's own report may be written over."""
    report = tmp_path / "h200"
    shutil.copytree(H200_RUN, report)
    before = {p.name: p.read_bytes() for p in report.iterdir() if p.is_file()}
    done = kt_cli("bench", "--smoke", "--out", str(report))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "holds the report of a GPU run (NVIDIA H200, 2026-12-04T18:20:25+00:00)" in done.stderr
    assert {p.name: p.read_bytes() for p in report.iterdir() if p.is_file()} == before


def test_bench_refuses_a_gpu_run_without_a_gpu_and_a_foreign_directory(tmp_path):
    done = kt_cli("bench", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "no CUDA GPU here" in done.stderr and "--smoke" in done.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    done = kt_cli("bench", "--smoke", "--out", str(tmp_path / "mine"))
    assert done.returncode == 2 and "not a kt bench report" in done.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    done = kt_cli("bench", "--smoke", "--out", str(tmp_path / "mine" / "notes.txt" / "run"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "out: the folder '" in done.stderr and "run' cannot be made (" in done.stderr


@pytest.mark.parametrize("theirs", ["report.md", "bench.log"])
def test_a_folder_is_a_bench_report_by_what_its_files_say_not_their_names(tmp_path, theirs):
    """A folder holding the user's own report.md (or bench.log) passed as a report's by its name, and the run
    wrote over it and the user's other files' neighbours; a report is now known by its first line."""
    from kt.bench import _check_out

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / theirs).write_text("my own notes\n")
    (mine / "data.txt").write_text("precious")
    with pytest.raises(Exception, match="holds files that are not a kt bench report"):
        _check_out(mine)
    (mine / theirs).write_text(
        "# kt bench (dry run, nothing timed on a GPU)\n"
        if theirs == "report.md"
        else "2026-12-07 14:00:00,123 kt.bench INFO part smoke\n"
    )
    _check_out(mine)  # a report's, or the log of a run killed before its report


def test_the_database_is_no_file_the_report_writes(tmp_path):
    """`--db OUT/report.md` was accepted: the run's database was written over by its report."""
    done = kt_cli("bench", "--smoke", "--out", str(tmp_path / "r"), "--db", str(tmp_path / "r" / "report.md"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "is a file the report in --out writes" in done.stderr and not (tmp_path / "r").exists()


def test_a_bench_stopped_as_it_starts_says_it_wrote_no_report(tmp_path, monkeypatch):
    """A SIGTERM in the first seconds (torch's import, git) left a folder holding only the lock, and kt said
    "the report in its --out folder holds the parts that finished". The stamp is now taken before the folder is
    made, and the message says what is there."""
    from click.testing import CliRunner

    import kt.bench as bench
    from kt.cli import main

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_context", interrupted)
    result = CliRunner().invoke(main, ["bench", "--smoke", "--out", str(tmp_path / "r")])
    assert result.exit_code == 130
    assert "it was stopped as it started, before it wrote a report" in result.output + (result.stderr or "")
    assert not (tmp_path / "r").exists()


def test_a_time_box_that_runs_out_cuts_the_parts_and_still_writes_the_report(tmp_path):
    """A time box far smaller than any part's work: what did not fit is recorded as not reached, nothing aborts.
    Through the API, whose box has no floor: the CLI's half-minute floor held the whole smoke run on a machine
    with warm caches and no other load, so that the test failed 2 of 3 runs (2026-12-06)."""
    import kt.bench as bench

    out = tmp_path / "short"
    bench.run_bench(
        out, minutes=0.01, smoke=True, workers=1, progress=False
    )  # 0.6 s: the workers' start eats it
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    cut = {r["part"] for r in rows if r["status"].startswith("not reached")}
    assert cut == {"smoke", "tunes", "collect"}, {(r["part"], r["status"]) for r in rows}
    # a part with rows not reached was said to be "done" (the report's header and the log)
    header = (out / "report.md").read_text()
    for part in cut:
        assert f"{part} cut short in" in header and f"{part} done in" not in header, header[:600]


class _QuietReporter:
    """A bench part's reporter that shows nothing (the parts call these two)."""

    def part(self, *args):
        pass

    def advance(self, *args):
        pass


def test_a_tune_case_that_raises_past_its_share_is_failed_not_unreached(monkeypatch, caplog):
    """The first H200 run's FFT case (three candidates, each past the 120 s timeout) read "not reached"; kt's
    own error (a KtError) was logged with a full traceback."""
    import time

    import kt.bench as bench
    from kt.errors import KtError

    def overrunning(case, settings, deadline, out):
        time.sleep(0.05)
        raise KtError("none of the 3 candidates passed (3 timeout)")

    monkeypatch.setattr(bench, "_tune_case", overrunning)
    settings = bench._Settings(smoke=True, backend="dryrun", db=Path("unused.db"), workers=1, budget=1)
    result = bench.BenchResult(Path("unused"))
    with caplog.at_level("WARNING", logger="kt.bench"):
        done = bench._tune_part(settings, time.monotonic() + 0.01, result, _QuietReporter(), "fft")
    assert done == 1
    (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert record.exc_info is None and "KtError: none of the 3 candidates passed" in record.getMessage()
    (row,) = result.rows
    assert row["status"].startswith("failed (past its time share): KtError: none of the 3 candidates passed")
    line = bench._benchmarks_line({**row, "device": "GPU", "date": "d", "command": "c", "gpu_run": "True"})
    assert "| failed (past its time share)" in line and "| - | - | `c` |" in line


def test_kt_bench_measures_on_one_gpu_so_both_sides_share_it(monkeypatch):
    """The cuda runner takes every visible GPU of cuda:0's model by default: on a machine of several, kt bench's
    pool timed kt's kernel and PyTorch's side by side on two cards, where its report says same GPU."""

    import kt.api  # noqa: F401  imported now, not under the patch: kt.autotune.tune binds make_runner as it
    import kt.autotune.runners as runners  # loads, and kept the stand-in for every later tune of the process
    from kt import bench

    asked = []
    monkeypatch.setattr(runners, "make_runner", lambda backend, profile, **options: asked.append(options))
    bench._runner(SimpleNamespace(backend="cuda", workers=1))
    bench._runner(SimpleNamespace(backend="dryrun", workers=1))
    assert asked[0]["gpus"] == [0] and asked[1]["gpus"] is None


def test_the_smoke_builds_the_next_ranked_config_when_the_compiler_refuses_one(tmp_path, monkeypatch):
    """On the H200 (2026-12-04) the smoke's first-ranked dense fp16 and bf16 configs spilled (legality let them
    in), and those families had no float64 check. A refused build now sends the next ranked config, up to
    SMOKE_TRIES. Here a dense fp16 problem with odd row strides lists two configs that spill on sm_90 (the model
    the tests use, the analytic one, ranks them first) and one that builds; the dry run compiles each for sm_90
    before its check. Whether they spill is the installed Triton's ptxas's to say (3.9's does, 3.7.1's not)."""
    import time

    from kt import bench
    from kt.autotune.progress import BenchProgress
    from kt.autotune.runners import DryRunner, target_compiler_available
    from kt.device import H100

    if not target_compiler_available():
        pytest.skip("needs Triton's bundled ptxas to compile for sm_90")
    tiles = [(64, 64, 128, 8, 4, 3), (64, 64, 128, 1, 4, 4), (128, 128, 32, 1, 8, 2)]
    configs = [
        dict(block_m=m, block_n=n, block_k=k, group_m=g, num_warps=w, num_stages=s)
        for m, n, k, g, w, s in tiles
    ]
    spec = {
        "op": "dense",
        "name": "smoke_dense_float16",
        "dtype": "float16",
        "shape": {"m": 65, "n": 67, "k": 129},
        "tune": {"configs": configs},
    }
    # a second family and dtype after it, whose build passes: the fallback is measured before it
    after = {"op": "dense", "name": "smoke_dense_float32", "dtype": "float32", "shape": {"m": 33, "n": 17, "k": 16},
             "tune": {"configs": [dict(block_m=32, block_n=32, block_k=16, num_warps=4, num_stages=2)]}}  # fmt: skip
    monkeypatch.setattr(bench, "smoke_specs", lambda smoke: [spec, after])
    settings = bench._Settings(smoke=True, backend="dryrun", db=tmp_path / "t.db", workers=1, budget=1)
    settings.runner = DryRunner(H100, workers=1, timeout_s=300.0)
    result = bench.BenchResult(tmp_path)
    with settings.runner:
        reached = bench._smoke_part(
            settings, time.monotonic() + 600, result, BenchProgress(False, True), only=""
        )
    rows = [(r["case"], r["kernel"], r["status"]) for r in result.rows]
    # the next config is built as soon as one is refused, and measured in the place of the refused one, before
    # the families after it: it waited for the whole first batch, and the H200's 54 s smoke of 46 rows
    # (2026-12-04) never reached it
    built = [
        ("dense float16", "m64n64k128g8w4s3x1", "out_of_resources"),
        ("dense float16", "m64n64k128g1w4s4x1", "out_of_resources"),
        ("dense float16", "m128n128k32g1w8s2x1", "ok"),
    ]
    if rows[0] == built[0][:2] + ("ok",):
        # the first two spill by a few bytes at 255 registers under Triton 3.9's ptxas; Triton 3.7.1's fits them
        # in 255 with none (seen 2026-12-06): there the first ranked config is measured, with nothing to replace
        built = [rows[0]]
    assert rows == [
        *built,
        ("dense float16", "PyTorch: torch.matmul", "ok"),
        ("dense float32", "m32n32k16g8w4s2x1", "ok"),
        ("dense float32", "PyTorch: torch.matmul", "ok"),
    ], result.rows
    assert reached == len(rows)
    (checked,) = (r for r in result.rows if r["kernel"] == built[-1][1])
    assert checked["rel_err"] < 1e-2


def test_a_pipe_in_the_bench_command_stays_inside_its_table_cell():
    """`kt bench ... | tee log` put a bare | in the command cell, which split the row into one cell more."""
    import kt.bench as bench

    row = {"device": "GPU", "date": "2026-12-04", "case": "dense", "dtype": "float16", "status": "ok"}
    line = bench._benchmarks_line({**row, "command": "kt bench --out r | tee log", "gpu_run": "True"})
    assert line.endswith("| `kt bench --out r \\| tee log` |")
    cells = [cell for cell in line.replace("\\|", "").strip().strip("|").split("|")]
    assert len(cells) == TABLE_HEAD[0].strip().strip("|").count("|") + 1


def test_the_worst_case_line_says_how_many_cases_have_no_ratio():
    """The report's worst case is the least ratio of the cases that have one: a case whose tune or re-timing
    failed dropped out without a word, so the stated worst could be better than the run's."""
    import kt.bench as bench

    context = {"gpu_run": True, "device": "GPU", "date": "d", "started_at": "s", "command": "kt bench",
               **{f"{p}_version": "-" for p in ("kt", "torch", "triton", "cuda", "python")}}  # fmt: skip

    def case(name, ratio):
        return {"part": "tunes", "status": "ok", "case": name, "dtype": "float16", "ratio": ratio,
                "kernel": "generated", "measured": 4, "legal": 9, "baseline_impl": "torch.matmul"}  # fmt: skip

    failed = {"part": "tunes", "status": "failed", "case": "c", "dtype": "float16"}
    text = bench.render_report(
        bench.BenchResult(Path("."), [case("a", 1.5), case("b", 0.8), failed], context)
    )
    (line,) = [line for line in text.splitlines() if line.startswith("Worst case")]
    assert line.startswith("Worst case 0.80x, best 1.50x") and line.endswith("over 2 cases (baseline time / "
                                                                              "kt time: above 1, kt is faster); 1 more has no ratio (above).")  # fmt: skip


def test_a_case_whose_tune_measured_no_generated_config_says_why_where_its_ratio_goes():
    """The H200's `kt bench --minutes 3` (2026-12-04) reached its FFT case with seconds left: PyTorch's path was
    measured, no generated config was. Its log said "checked, not timed (None and PyTorch's torch.fft.fft)",
    the report "not timed", and BENCHMARKS.md's line would have said "ok" in the ratio's place."""
    import kt.bench as bench

    context = {"gpu_run": True, "device": "GPU", "date": "d", "started_at": "s", "command": "kt bench",
               **{f"{p}_version": "-" for p in ("kt", "torch", "triton", "cuda", "python")}}  # fmt: skip
    row = {"part": "tunes", "status": "ok", "case": "fft fp16 n=4096", "dtype": "float16", "kernel": "pytorch",
           "kt_config": None, "kt_missing": "no generated config measured in its time share", "measured": 0,
           "legal": 19334, "baseline_impl": "torch.fft.fft", "baseline_ms": 0.6036, "op": "fft"}  # fmt: skip
    why = "no generated config measured in its time share"
    assert bench._ratio_text(row) == f"{why}; PyTorch's path is the artifact (0.6036 ms)"
    (line,) = [
        line
        for line in bench.render_report(bench.BenchResult(Path("."), [row], context)).splitlines()
        if line.startswith("| fft fp16")
    ]
    assert f"| 0.6036 | - | {why} | PyTorch | - |" in line
    csv_row = {k: "" if v is None else str(v) for k, v in row.items()}  # as results.csv gives it back
    line = bench._benchmarks_line(
        {**csv_row, "device": "GPU", "date": "d", "command": "c", "gpu_run": "True"}
    )
    assert f"| 0.6036 | {why} | PyTorch |" in line


def test_each_quick_tune_stops_in_time_for_the_timing_after_it(monkeypatch):
    """Each case's tune got the whole of its share as its deadline, then ran its winner and PyTorch's path again
    (3.3 to 3.6 s a case on the H200, 2026-12-04), so every case overran and the 3-minute run's last two cases
    started with seconds left. The tune's deadline now leaves RETIME_S for the first case, then what the case
    before took after its tune (not less than half RETIME_S), and never less than half the share."""
    import time

    import kt.bench as bench

    asked, after_tune = [], [0.5]

    def case(case, settings, deadline, out):
        asked.append((time.monotonic(), deadline))
        time.sleep(0.1 + after_tune[0])  # 0.1 s of "tune", then the timing after it
        return {"part": "tunes", "case": case.name, "status": "ok", "ratio": 1.0, "kernel": "generated",
                "baseline_impl": "torch.matmul", "tune_s": 0.1}  # fmt: skip

    def held_back(retime_s: float) -> list[float]:
        """What each case's deadline kept from its share, the part's time 2 s a case (the 4 dense cases)."""
        monkeypatch.setattr(bench, "RETIME_S", retime_s)
        asked.clear()
        cases = [c.name for c in bench.tune_cases(True) if "dense" in c.name]
        part = time.monotonic() + 2.0 * len(cases)
        bench._tune_part(settings, part, bench.BenchResult(Path("unused")), _QuietReporter(), "dense")
        assert len(asked) == len(cases) == 4
        return [
            (part - start) / (len(cases) - n) - (deadline - start)
            for n, (start, deadline) in enumerate(asked)
        ]

    monkeypatch.setattr(bench, "_tune_case", case)
    settings = bench._Settings(smoke=True, backend="dryrun", db=Path("unused.db"), workers=1, budget=1)
    first, second, *_ = held_back(0.2)
    assert abs(first - 0.2) < 0.01  # the first guess
    assert 0.5 <= second < 0.8, second  # then what the case before took after its tune (0.5 s and a little)
    after_tune[0] = 0.0
    first, second, *_ = held_back(0.6)
    assert abs(first - 0.6) < 0.01 and abs(second - 0.3) < 0.01  # not less than half the first guess
    monkeypatch.setattr(bench, "RETIME_S", 100.0)
    asked.clear()
    bench._tune_part(
        settings, time.monotonic() + 2.0, bench.BenchResult(Path("unused")), _QuietReporter(), "fft"
    )
    ((start, deadline),) = asked
    assert 0.95 < deadline - start < 1.05  # never less than half the share


def test_update_keeps_the_files_mode_and_refuses_a_read_only_file_or_one_not_utf8(tmp_path):
    """A read-only (0444) FILE.md was replaced and came back 0644; one in a read-only folder was refused as
    "Permission denied: .../.B.md.x8fk.tmp" (the temporary file's name); a Latin-1 one was a traceback."""
    import stat

    target = tmp_path / "B.md"
    target.write_text("# B\n")
    target.chmod(0o640)
    done = kt_cli("bench", "--from", str(H200_MERGES[-1]), "--update", str(target))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and "| fft fp16 n=4096 |" in target.read_text()
    target.write_bytes(b"# B\n\xe9t\xe9\n")
    done = kt_cli("bench", "--from", str(H200_MERGES[-1]), "--update", str(target))
    assert done.returncode == 2 and done.stderr == (
        f"kt: error: update: {target} is not UTF-8 text (at offset 4); give a Markdown file kt may rewrite\n"
    )
    target.write_text("# B\n")
    target.chmod(0o444)
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "B.md").write_text("# B\n")
    folder.chmod(0o555)
    try:
        for path, says in (
            (target, f"the file is read-only (chmod u+w it, or give another path): {target}"),
            (folder / "B.md", f"(nothing can be written in its folder, {folder}): {folder / 'B.md'}"),
        ):
            done = run_as_user(
                [
                    sys.executable,
                    "-m",
                    "kt.cli",
                    "bench",
                    "--from",
                    str(H200_MERGES[-1]),
                    "--update",
                    str(path),
                ]
            )
            assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
            assert path.read_text() == "# B\n"
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == ["B.md"]


def test_bench_neither_uses_nor_checks_kt_db_and_its_help_names_the_out_folders_database(tmp_path):
    """`kt bench --help` said --db defaults to $KT_DB (else the cache's tuning.db), but a bench writes
    OUT/tuning.db; and a $KT_DB naming a file that is no database still refused the run it would not touch."""

    shown = " ".join(kt_cli("bench", "--help").stdout.split())
    assert "Default: tuning.db in the --out folder, beside the report ($KT_DB is not used)" in shown, shown
    assert "Default: $KT_DB" not in shown
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("text, not sqlite " * 20)
    # a run stopped by its own next check (no such case), after the command line: past $KT_DB's old refusal
    done = kt_cli(
        "bench", "--smoke", "--out", str(tmp_path / "out"), "--only", "nosuch", env={"KT_DB": str(not_a_db)}
    )
    assert done.returncode == 2
    assert done.stderr.startswith("kt: error: only: 'nosuch' is in no quick-tune case's name"), done.stderr
    done = kt_cli("bench", "--smoke", "--out", str(tmp_path / "out"), "--db", str(not_a_db))
    assert done.returncode == 2 and "notes.db" in done.stderr and "kt: error: db:" in done.stderr, done.stderr


def test_a_bench_stopped_by_ctrl_c_says_so_in_its_report_and_names_the_parts_that_never_ran(tmp_path):
    """The report written as a Ctrl-C stopped the run read like a complete one: its parts line left out the part
    that was running and those never started, and nothing said the run was interrupted."""
    import re
    import signal
    import time

    out = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "kt.cli", "bench", "--smoke", "--quiet", "--out", str(out), "--workers", "1",
         "--minutes", "0.5", "--only", "dense"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    log = out / "bench.log"
    while child.poll() is None and time.monotonic() < deadline:
        if log.is_file() and "tune dense fp16:" in log.read_text():  # the quick tunes are under way
            break
        time.sleep(0.05)
    assert child.poll() is None, "the bench finished before it could be interrupted"
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("kt: interrupted; the report in its --out folder")
    header = (out / "report.md").read_text().split("## Quick tunes")[0]
    said = re.search(
        r"^- \*\*interrupted\*\* \(Ctrl-C, SIGTERM or SIGHUP\) during the (\w+) part: (.*)$", header, re.M
    )
    assert said, header
    stopped = said.group(1)
    assert stopped in ("tunes", "collect"), header  # the signal came after the first quick tune
    assert re.search(rf"{stopped} interrupted in \d+ s \(stopped after \d+ rows?\)", header), header
    if stopped == "tunes":
        assert "collect not run" in header and "never ran: collect." in said.group(2), header
    assert "interrupted during " in log.read_text()


def test_a_report_records_the_commit_kt_ran_from():
    """Every committed run recorded kt_version 0.1.0 alone: the figures could not be tied to the code that made
    them (feature-major ends arrived between two runs)."""
    import re
    import subprocess

    from kt.bench import run_context

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    commit = run_context(True, "kt bench --smoke")["kt_commit"]
    assert re.fullmatch(r"[0-9a-f]{12}(\+changes)?", commit) and commit.startswith(head.stdout.strip())


def test_a_bench_stopped_as_its_workers_start_writes_the_report_it_says_it_wrote(tmp_path, monkeypatch):
    """A Ctrl-C while torch and Triton loaded for the workers (seconds) left --out empty, and kt said that the
    report in its --out folder held the parts that finished; results.csv of a run without a row had no header,
    which `kt bench --from` refused as no bench report's."""
    import kt.bench as bench

    def interrupted(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "_runner", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(out, smoke=True, progress=False)
    report = (out / "report.md").read_text()
    assert "**interrupted** (Ctrl-C, SIGTERM or SIGHUP) during the workers' start or shutdown" in report
    assert "never ran: smoke, tunes, collect" in report
    with open(out / "results.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert {"part", "gpu_run", "device", "date", "case", "dtype", "command"} <= set(header)

    def broken(settings):  # not a Ctrl-C: the report said "parts: " over empty tables
        raise OSError("no workers")

    monkeypatch.setattr(bench, "_runner", broken)
    with pytest.raises(OSError):
        bench.run_bench(out, smoke=True, progress=False)
    assert "- parts: smoke not run, tunes not run, collect not run" in (out / "report.md").read_text()


def test_two_benches_into_one_folder_are_refused_and_a_dead_ones_lock_is_not(tmp_path):
    """Two runs into one --out garbled bench.log (both opened it to write) and left one run's report under the
    other's, both exit 0."""
    import os

    import kt.bench as bench
    from kt.errors import KtError

    out = tmp_path / "run"
    out.mkdir()
    held = bench._lock_out(out)
    try:
        with pytest.raises(
            KtError, match=rf"^out: another kt bench \(pid {os.getpid()}\) is writing its report to "
        ):
            bench.run_bench(out, smoke=True, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [bench.LOCK_NAME]
    finally:
        held.close()
    bench._check_out(out)  # the lock file of a run killed as it began: no foreign file
    bench._lock_out(out).close()


def test_bench_log_that_cannot_be_written_is_said_once_and_tracebacks_stay_off_the_terminal(tmp_path, capsys):
    """On a full disk every record to bench.log printed logging's traceback (22 of them, with the terminal
    handler's own for each failed part): bench.log's failure is one line, and the terminal shows a record logged
    with its traceback as its one line."""
    import logging

    import kt.bench as bench
    from kt.cli import _OneLine

    handler = bench._BenchLog(tmp_path / "bench.log", mode="w")
    handler.stream.close()  # every write now fails
    logger = logging.getLogger("kt.test_bench_log")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for number in range(3):
            logger.warning("line %d", number)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bench.log cannot be written (" in err and "Traceback" not in err
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "kt", logging.ERROR, __file__, 1, "part %s failed: %s", ("p", "boom"), sys.exc_info()
        )
    assert _OneLine("kt: warning: %(message)s").format(record) == "kt: warning: part p failed: boom"


def test_a_pipe_in_any_text_cell_of_a_report_row_is_escaped_in_the_table():
    """Only the command's pipes were escaped: one in a case, device or baseline cut the table's row apart."""
    from kt.bench import _benchmarks_line, _cells, _row_key

    row = {"device": "GPU|x", "date": "2026-12-05", "case": "a|b", "dtype": "float16", "baseline_impl": "c|d",
           "command": "kt bench | tee", "status": "ok"}  # fmt: skip
    line = _benchmarks_line(row)
    assert line.count("|") - line.count("\\|") == 15  # the 14 cells' own borders
    assert "GPU\\|x" in line and "a\\|b" in line and "c\\|d" in line and "kt bench \\| tee" in line
    # read back cell by cell as written (the readers split at every pipe: the device cell was 'GPU\\')
    assert _row_key(line) == ("GPU|x", "a|b")
    assert _cells(line)[:5] == ["GPU|x", "2026-12-05", "a|b", "float16", "c|d"]


def test_a_kt_installed_inside_another_repository_records_no_commit(tmp_path):
    """kt installed in a .venv inside a user's own project recorded the project's commit (and its changes) as
    kt's: git found the repository around site-packages."""
    import shutil
    import subprocess

    from kt.bench import _commit

    if shutil.which("git") is None:
        pytest.skip("no git here")
    project = tmp_path / "project"
    package = project / ".venv" / "site-packages" / "kt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (project / ".gitignore").write_text(".venv/\n")
    (project / "train.py").write_text("print('the user's code')\n")
    git = ["git", "-C", str(project), "-c", "user.name=u", "-c", "user.email=u@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "the user's project"], check=True)
    (project / "train.py").write_text("changed\n")
    assert _commit(package) is None
    # a checkout of kt itself: its top-level kt folder, tracked
    checkout = tmp_path / "kt-checkout"
    (checkout / "kt").mkdir(parents=True)
    (checkout / "kt" / "__init__.py").write_text("")
    git = ["git", "-C", str(checkout), "-c", "user.name=u", "-c", "user.email=u@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "kt"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    )
    assert _commit(checkout / "kt") == head.stdout.strip()


def test_a_copy_without_git_records_the_commit_its_command_names(tmp_path, monkeypatch):
    """A lent GPU machine runs a copy of the working tree without .git: its report said "commit unknown". The
    session's command names the commit in KT_COMMIT; anything else there is not taken for one."""
    from kt.bench import _commit

    package = tmp_path / "copy" / "kt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.delenv("KT_COMMIT", raising=False)
    assert _commit(package) is None
    monkeypatch.setenv("KT_COMMIT", "109d100a3f2c+changes")
    assert _commit(package) == "109d100a3f2c+changes"
    for bogus in ("main", "$(git rev-parse HEAD)", "109d100 extra"):
        monkeypatch.setenv("KT_COMMIT", bogus)
        assert _commit(package) is None, bogus


def test_the_source_distribution_holds_what_the_readme_points_to_and_kts_version(tmp_path):
    """The sdist held tests that could not run (no conftest.py, no benchmarks/) and lacked the examples, the docs
    and BENCHMARKS.md that the README points to; its version was written twice (pyproject.toml and
    kt.__version__), kept alike by hand."""
    import shutil
    import tarfile

    import kt

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("kt", "examples", "docs", "tests", "benchmarks"):
        shutil.copytree(root / name, source / name, ignore=ignore)
    for name in ("README.md", "BENCHMARKS.md", "pyproject.toml", "MANIFEST.in"):
        shutil.copy(root / name, source / name)
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import build_meta; print(build_meta.build_sdist('dist'))"],
        cwd=source, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(source / "dist" / name) as archive:
        members = {member.split("/", 1)[1] for member in archive.getnames() if "/" in member}
        info = archive.extractfile(f"{name.removesuffix('.tar.gz')}/PKG-INFO").read().decode()
    assert {"examples/dense.yaml", "docs/architecture.md", "BENCHMARKS.md", "README.md"} <= members
    assert {"kt/codegen/templates/gemm.py.j2", "kt/costmodel/models/h100.skops"} <= members
    assert not [m for m in members if m.startswith(("tests/", "benchmarks/")) or "__pycache__" in m]
    assert f"\nVersion: {kt.__version__}\n" in info


def _edited_run(source: Path, target: Path, **changes) -> Path:
    """A copy of a committed report whose quick-tune rows take `changes` (a later start, another status)."""
    shutil.copytree(source, target)
    with open(source / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["part"] == "tunes":
            row.update(changes)
    with open(target / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def _merged_table(tmp_path: Path) -> Path:
    """BENCHMARKS.md with its kt bench table rebuilt from the committed H200 runs."""
    benchmarks = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    head, rest = benchmarks.read_text().split(BEGIN)
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text(head + BEGIN + "\n" + END + rest.split(END)[1])
    for run in H200_MERGES:
        assert kt_cli("bench", "--from", str(run), "--update", str(copy)).returncode == 0
    return copy


def test_a_case_a_later_run_did_not_reach_keeps_its_measured_row_and_a_failed_re_timing_says_so(tmp_path):
    """A later run that never reached the butterfly put "not reached" over its measured 22.13x; a later run
    whose re-timing of kt's kernel gave a wrong result read "not timed", a dry run's words."""
    table = _merged_table(tmp_path)
    before = table.read_text()
    # an earlier run that did not reach the butterfly, merged after the butterfly's run alone (18:27): it was
    # refused as older (its not-reached row was compared by date before it was left out)
    earlier = _edited_run(
        H200_MERGES[1], tmp_path / "earlier", started_at="2026-12-04T18:10:00+00:00",
        status="not reached: the part's time share ran out first", kt_ms="", kt_status="", ratio="", kt_tflops="",
    )  # fmt: skip
    done = kt_cli("bench", "--from", str(earlier), "--update", str(table))
    assert done.returncode == 0 and "0 rows of" in done.stdout, done.stderr
    assert table.read_text() == before
    later = "2026-12-05T09:00:00+00:00"
    unreached = _edited_run(
        H200_MERGES[1], tmp_path / "unreached", started_at=later, date="2026-12-05",
        status="not reached: the part's time share ran out first", kt_ms="", kt_status="", ratio="", kt_tflops="",
    )  # fmt: skip
    done = kt_cli("bench", "--from", str(unreached), "--update", str(table))
    assert done.returncode == 0 and "0 rows of" in done.stdout, done.stderr
    assert table.read_text() == before and "| 22.13x |" in before
    wrong = _edited_run(
        H200_MERGES[2], tmp_path / "wrong", started_at=later, date="2026-12-05",
        kt_status="wrong_result", kt_ms="", ratio="", kt_tflops="", kt_power_w="", kt_energy_mj="",
    )  # fmt: skip
    assert kt_cli("bench", "--from", str(wrong), "--update", str(table)).returncode == 0
    (line,) = [line for line in table.read_text().splitlines() if "2026-12-05 09:00 | fft" in line]
    assert "| re-time failed (kt: wrong_result) |" in line, line
    lines = table.read_text().splitlines()  # in the place of the row it replaced
    assert lines.index(line) == before.splitlines().index(
        next(old for old in before.splitlines() if "| fft fp16 n=4096 |" in old)
    )


def test_a_line_inside_the_table_markers_that_kt_did_not_write_is_refused_or_read_as_what_it_is(tmp_path):
    """A note written between the markers was dropped by the next merge without a word, and a separator
    written `| --- |` was kept as a data row under the header kt writes."""
    table = _merged_table(tmp_path)
    good = table.read_text()
    table.write_text(good.replace(END, "Worst case 0.60x on the low-rank case.\n" + END))
    noted = table.read_text()
    done = kt_cli("bench", "--from", str(H200_MERGES[-1]), "--update", str(table))
    assert done.returncode == 2 and "is no table row ('Worst case 0.60x" in done.stderr, done.stderr
    assert "move it out" in done.stderr and table.read_text() == noted
    table.write_text(good.replace(TABLE_HEAD[1], "| " + " | ".join(["---"] * 14) + " |"))
    assert kt_cli("bench", "--from", str(H200_MERGES[-1]), "--update", str(table)).returncode == 0
    assert table.read_text() == good


def test_the_recorded_command_runs_as_written():
    """`kt bench --only "dense fp16 skinny"` was recorded as `... --only dense fp16 skinny`, another command."""
    import shlex

    from kt import cli

    seen = {}

    def fake_run(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    argv = ["kt", "bench", "--out", "my out", "--only", "dense fp16 skinny", "--smoke"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        patch.setattr("kt.bench.run_bench", fake_run)
        with pytest.raises(SystemExit):
            cli.main.main(argv[1:])
    assert shlex.split(seen["command"]) == argv, seen
