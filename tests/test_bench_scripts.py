"""The benchmark scripts refuse bad arguments and outputs in one line before any work (they overwrote a tuning
database or their own input with a CSV, exit 0; or failed with a traceback after the work)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_script

from kt.autotune.figures import drop_cut_line, write_csv
from kt.codegen.compat import triton_version
from kt.codegen.gemm import DEEP_K_TRITON

ROOT = Path(__file__).resolve().parents[1]


def cases(tmp: Path) -> list[tuple[list[str], str]]:
    db = tmp / "t.db"
    data = tmp / "in.csv"
    return [
        (["collect_dense.py", "--sample", "1", "--db", db, "--export", db], "--export: '"),
        (["nn_layers.py", "--device", "cpu", "--db", db, "--csv", db], "--csv: '"),
        (["nn_layers.py", "--device", "cpu", "--csv", tmp], "is a folder; give a file path"),
        (["search_efficiency.py", "--gpperf-tiled", data, "--csv", data], "is an input of this run itself"),
        (["search_efficiency.py", "--gpperf-tiled", data, "--seeds", "0"], "--seeds: 0; give 1 or more"),
        (["costmodel_h100.py", "--folds", "0"], "--folds must be 2 or more"),
        (["structured_probe.py"], "structured_probe: needs a CUDA GPU"),
        (["layout_probe.py"], "layout_probe: needs a CUDA GPU"),
        (["search_vs_tuners.py", "--budgets", "0"], "--budgets: budget: '0' is not a count"),
        (["search_vs_tuners.py", "--strategies", "nosuch"], "--strategies: nosuch unknown"),
        (
            ["search_variants.py", "--variants", "base", "--budgets", "-5", "--jsonl", tmp / "v.jsonl"],
            "--budgets",
        ),
        (["ship_costmodels.py", "--data", tmp / "none", "--out", tmp / "ship"], "h100_mm.txt.gz' not found"),
        (["unaligned_builds.py", "--per-shape", "0", "--jsonl", tmp / "u.jsonl"], "--per-shape: 0; give 1"),
        (["unaligned_builds.py", "--jsonl", db], "--jsonl: '"),
        (["unaligned_builds.py", "--shapes", "768x1032"], "give fit, held-out or MxNxK"),
        (["unaligned_builds.py", "--dtype", "float32", "--jsonl", tmp / "u.jsonl"], "give --arch 80"),
        (["unaligned_builds.py", "--check", data], "--check: judges --fit's weightings"),
        (["unaligned_builds.py", "--fit", data, "--check", tmp / "none.jsonl"], "none.jsonl' not found"),
        (["first_builds.py", "--top", "0", "--jsonl", tmp / "f.jsonl"], "--top: 0; give 1 or more"),
        (["first_builds.py", "--jsonl", db], "--jsonl: '"),
        (["first_builds.py", "--dtypes", "int8"], "invalid choice: 'int8'"),
        (["first_builds.py", "--shapes", "10x10"], "give MxNxK, three positive integers"),
        (["stage_builds.py", "--sample", "-1", "--jsonl", tmp / "s.jsonl"], "--sample: -1; give 0"),
        (["stage_builds.py", "--shape", "64x64", "--jsonl", tmp / "s.jsonl"], "give MxNxK, three positive"),
        (["stage_builds.py", "--jsonl", db], "--jsonl: '"),
        (["stage_builds.py", "--family", "fft", "--legal", "-2"], "--legal: -2; give 0 (none) or more"),
        (["stage_builds.py", "--legal", "3"], "--controls and --legal sample the block-GEMM examples"),
        (["deep_k_builds.py", "--per-group", "0", "--jsonl", tmp / "d.jsonl"], "--per-group: 0; give 1"),
        (["deep_k_builds.py", "--ops", "held", "--jsonl", tmp / "d.jsonl"], "give fit, held-out or MxNxK"),
        (["deep_k_builds.py", "--jsonl", db], "--jsonl: '"),
        (["deep_k_builds.py", "--score", tmp / "none.jsonl"], "none.jsonl' not found"),
        (["two_warp_k_builds.py", "--per-bin", "0", "--jsonl", tmp / "w.jsonl"], "--per-bin: 0; give 1"),
        (["two_warp_k_builds.py", "--ops", "held", "--jsonl", tmp / "w.jsonl"], "invalid choice: 'held'"),
        (["two_warp_k_builds.py", "--jsonl", db], "--jsonl: '"),
        (["two_warp_k_builds.py"], "--jsonl: where to write the builds"),
        (["two_warp_k_builds.py", "--check", data], "--check: judges --fit's limits"),
        (["two_warp_k_builds.py", "--score", tmp / "none.jsonl"], "none.jsonl' not found"),
        (["two_warp_k_builds.py", "--score", data, "--fit", data], "--score and --fit: give one of them"),
        # each crashed mid-run (a traceback, the figures measured before it lost) or, on a GPU, ran every
        # case to a failed tune and printed an empty table with exit 0
        (["dense_vs_cublas.py", "--shapes", "64x64"], "--shapes: '64x64' is not allowed; give MxNxK, three"),
        (["dense_vs_cublas.py", "--dtypes", "float8"], "--dtypes: 'float8' is not allowed; allowed: float16"),
        (["dense_vs_cublas.py", "--budget", "-5"], "--budget: must be an integer from 1 to 100000, got '-5'"),
        (
            ["structured_vs_torch.py", "--budget", "0"],
            "--budget: must be an integer from 1 to 100000, got '0'",
        ),
        (["structured_vs_torch.py", "--only", "nomatch"], "--only 'nomatch' matches no case (names: monarch"),
        (
            ["collect_dense.py", "--sample", "-5", "--db", db],
            "--sample: -5; give 1 or more",
        ),  # named --dtypes
        (
            ["collect_dense.py", "--sample", "2", "--db", db, "--dtypes", "int8"],
            "--dtypes: 'int8' is not allowed",
        ),
        (["sparse_vs_torch.py", "--budget", "x"], "--budget: must be an integer from 1 to 100000, got 'x'"),
    ]


@pytest.mark.parametrize("index", range(len(cases(Path(".")))))
def test_a_bad_argument_or_output_is_one_line_and_nothing_is_written(tmp_path, index):
    db = tmp_path / "t.db"
    sqlite3.connect(db).execute("CREATE TABLE kept (x)").connection.close()
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args, says = cases(tmp_path)[index]
    done = run_script(*args)  # in this process, as `python benchmarks/<script>` runs it
    assert done.returncode != 0, done.stderr
    assert says in done.stderr, done.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_write_csv_leaves_nothing_behind_when_the_place_is_a_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        write_csv(tmp_path / "out", [{"a": 1}])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # it left .out.tmp beside it
    write_csv(tmp_path / "x.csv", [{"a": 1}, {"b": 2}])
    assert (tmp_path / "x.csv").read_bytes() == b"a,b\r\n1,\r\n,2\r\n"  # as csv writes it


def test_a_line_cut_short_is_dropped_before_more_are_appended(tmp_path):
    """Ended with a newline, a cut line stayed in the middle of the file once more were appended, and every
    later read refused the file ("line 2 is not JSON")."""
    path = tmp_path / "runs.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b"')
    drop_cut_line(path)
    with path.open("a") as handle:
        handle.write('{"a": 3}\n')
    assert path.read_text().splitlines() == ['{"a": 1}', '{"a": 3}']
    drop_cut_line(path)  # a whole last line is left as it is
    assert path.read_text().endswith('{"a": 3}\n')
    path.write_text('{"a": 1')  # no whole line at all
    drop_cut_line(path)
    assert path.read_bytes() == b""


@pytest.mark.shipped_models
@pytest.mark.parametrize("run", ["h200-2026-11-30", "h200-2026-12-04", "h200-2026-12-04-1820"])
def test_the_cost_model_on_kts_own_gpu_rows_is_the_table_in_benchmarks_md(run):
    """benchmarks/costmodel_kt_rows.py scores the models a tune ranks with on each H200 run's rows (in this
    repository): its figures are BENCHMARKS.md's, digit for digit."""
    from conftest import benchmark_module

    lines, _ = benchmark_module("costmodel_kt_rows").score(
        ROOT / f"benchmarks/results/{run}/measurements.csv"
    )
    text = (ROOT / "BENCHMARKS.md").read_text()
    rows = [line for line in lines if line.startswith("| ") and "%" in line]
    assert len(rows) == 3
    for row in rows:
        figures = row.split(" | ", 1)[1]  # the model's label is shortened in the doc
        assert figures in text, row


def test_unaligned_builds_compiles_its_sample_and_scores_the_rule_on_it(tmp_path):
    """benchmarks/unaligned_builds.py: two sm_90 builds of an unaligned float16 shape, compiled by kt's workers,
    written as JSON lines, then scored: kt's rule and the unweighted count, over the spills the builds had."""
    import json

    out = tmp_path / "u.jsonl"
    script = "unaligned_builds.py"  # run in this process, as `python benchmarks/<script>` runs it
    build = [script, "--arch", "90", "--seed", "3", "--per-shape", "2", "--shapes", "768x1032x1000"]
    done = run_script(*build, "--jsonl", out)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["arch"] == 90 and r["status"] in ("ok", "out_of_resources") for r in rows)
    assert all(isinstance(r["registers"], int) and r["shape"] == [768, 1032, 1000] for r in rows)
    spills = sum(r["status"] != "ok" for r in rows)
    scored = run_script(script, "--score", out)
    assert scored.returncode == 0, scored.stderr
    lines = scored.stdout.splitlines()
    assert len(lines) == 2 and all(
        "2 builds" in line and f"of {spills} spills caught" in line for line in lines
    )


def test_unaligned_builds_samples_tf32_and_judges_the_16_bit_count_and_a_fit_on_it(tmp_path):
    """`--dtype tf32`: float32 problems with precision tf32, compiled like the float16 sample; `--score` judges
    kt's rule (the tf32 count, read from the row's precision) and the float16 rule's weighted count on them, and
    `--fit` with `--check` judges its weightings on the builds given."""
    import json

    from kt.codegen import GemmConfig
    from kt.codegen.gemm import illegal_reason
    from kt.device import H100
    from kt.ir import GemmProblem

    out = tmp_path / "t.jsonl"
    script = "unaligned_builds.py"  # run in this process, as `python benchmarks/<script>` runs it
    build = [script, "--dtype", "tf32", "--arch", "90", "--seed", "175", "--per-shape", "1"]
    done = run_script(*build, "--shapes", "640x1000x1000", "--jsonl", out)
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["dtype"], row["precision"], row["arch"]) == ("float32", "tf32", 90)
    assert row["status"] in ("ok", "out_of_resources") and isinstance(row["registers"], int)
    spills = int(row["status"] != "ok")
    scored = run_script(script, "--score", out)
    assert scored.returncode == 0, scored.stderr
    now, as_16_bit = scored.stdout.splitlines()
    problem = GemmProblem(640, 1000, 1000, dtype="float32", precision="tf32")
    config = GemmConfig(**row["config"])
    refused = int(illegal_reason(problem, config, H100) is not None)
    # seed 175 draws a config the tf32 count refuses and legality admits for float32 ieee (m256n32k32 w4)
    assert refused and illegal_reason(GemmProblem(640, 1000, 1000, dtype="float32"), config, H100) is None
    assert f"kt's rule: {refused * (1 - spills)} clean builds refused, {refused * spills} of {spills}" in now
    assert "1 builds, float16's weighted count: " in as_16_bit
    fitted = run_script(script, "--fit", out, "--check", out)
    assert fitted.returncode == 0, fitted.stderr
    lines = fitted.stdout.splitlines()
    assert lines[0] == f"1 builds, {spills} spills; the lowest limits that refuse no clean build:"
    # judged on the builds it was fitted on, a weighting refuses no clean build there either
    assert len(lines) == 9 and all(" (sm_90): " in line for line in lines[1:])
    assert all("; sm_90's 1 other builds: 0 clean refused, " in line for line in lines[1:])


@pytest.mark.shipped_models
def test_first_builds_compiles_the_ranked_configs_as_kt_build_checks_them(tmp_path):
    """benchmarks/first_builds.py: the unaligned float16 GEMMs on the A100, compiled in rank order until one
    builds clean; the clean one is the config `kt.build(compile_check=True)` chooses in its own process."""
    import json

    import kt
    from kt.api import COMPILE_TRIES

    out = tmp_path / "f.jsonl"
    done = run_script(  # in this process, as `python benchmarks/<script>` runs it
        "first_builds.py", "--ops", "dense-unaligned", "--dtypes", "float16", "--devices", "a100", "--jsonl", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["model"].startswith("forest for a100") for r in rows)
    assert [r["op"] for r in rows] == [
        "dense_m256_n4100_k1000",
        "dense_m2048_n2056_k2048",
        "dense_m4096_n4104_k4100",
    ]
    for row in rows:
        statuses = [b["status"] for b in row["builds"]]
        assert set(statuses) <= {"ok", "out_of_resources"} and 1 <= len(statuses) <= COMPILE_TRIES
        assert "ok" not in statuses[:-1]  # it stops at the first clean build
    assert done.stdout.splitlines()[-1].startswith("a100: 3 ops, first-ranked refused in ")
    m, n, k = 256, 4100, 1000  # the A100 forest ranks a spilling build first here (docs/architecture.md)
    (row,) = [r for r in rows if r["op"] == f"dense_m{m}_n{n}_k{k}"]
    assert row["builds"][0]["status"] == "out_of_resources" and row["builds"][-1]["status"] == "ok"
    spec = {"op": "dense", "name": row["op"], "dtype": "float16", "shape": {"m": m, "n": n, "k": k}}
    kernel = kt.build(spec, device="a100", compile_check=True)
    assert kernel.config.key() == row["builds"][-1]["key"]
    assert [key for key, _ in kernel.meta["refused"]] == [b["key"] for b in row["builds"][:-1]]


def test_stage_builds_counts_the_configs_legal_by_the_stages_a_build_keeps_and_compiles_some(tmp_path):
    """benchmarks/stage_builds.py: the A100 float16 configs that legality admits only because it counts the
    stages a build keeps; two of them compiled, each within the A100's shared memory and kt's bound."""
    import json

    from kt.codegen.gemm import GemmConfig, built_shared_memory, illegal_reason, shared_memory
    from kt.device import A100
    from kt.ir import GemmProblem

    out = tmp_path / "s.jsonl"
    done = run_script(  # in this process, as `python benchmarks/<script>` runs it
        "stage_builds.py", "--devices", "a100", "--dtypes", "float16", "--sample", "2", "--seed", "3", "--jsonl", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    problem = GemmProblem(4096, 4096, 4096)
    assert row["legal"] == sum(illegal_reason(problem, c, A100) is None for c in _gemm_configs())
    # 750 before the deep-K rule, which holds from Triton 3.9
    assert (
        row["newly_legal"] == (705 if triton_version() >= DEEP_K_TRITON else 750) and len(row["builds"]) == 2
    )
    for build in row["builds"]:
        config = GemmConfig.from_dict(build["config"])
        assert config.key() == build["key"]
        assert illegal_reason(problem, config, A100) is None
        assert shared_memory(problem, config) > A100.smem_per_block == row["smem_limit"]
        assert build["bound"] == built_shared_memory(problem, config, A100)
        assert 0 < build["built"] <= build["bound"] <= A100.smem_per_block
    assert done.stdout.splitlines()[-1].startswith("2 builds: 0 allocate more shared memory than kt's bound")


def _gemm_configs():
    from kt.codegen.gemm import GemmFamily

    return list(GemmFamily().all_configs())


def test_deep_k_builds_compiles_its_groups_and_scores_kts_legality_on_them(tmp_path):
    """benchmarks/deep_k_builds.py: one four-warp build per group at 128 accumulator registers on the A100, in
    float16 and tf32; the builds over 192 tile elements per thread, which spill, are those kt's legality now
    refuses."""
    import json

    out = tmp_path / "d.jsonl"
    done = run_script(  # in this process, as `python benchmarks/<script>` runs it
        "deep_k_builds.py", "--ops", "1024x1024x1024", "--dtypes", "float16", "tf32", "--acc", "128",
        "--warps", "4", "--per-group", "1", "--seed", "5", "--jsonl", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["per_thread"] for r in rows) == sorted([32, 40, 64, 80, 128, 160, 256, 320] * 2)
    assert {r["spec"].get("precision", "ieee") for r in rows} == {"ieee", "tf32"}
    assert all(r["acc"] == 128 and r["warps"] == 4 and r["arch"] == 80 and not r["wgmma"] for r in rows)
    deep = [r for r in rows if r["per_thread"] > 192]
    last = done.stdout.splitlines()[-1]
    spills = sum(r["status"] != "ok" for r in rows)
    caught = 0  # the rule holds from Triton 3.9; under 3.6 the dense 16-bit ones may build clean
    if triton_version() >= DEEP_K_TRITON:
        assert all(r["status"] == "out_of_resources" and r["registers"] == 255 for r in deep)
        caught = 4
    says = f"sm_80: 16 builds (2 ops), kt's legality refuses 0 clean builds and catches {caught} of {spills} spills"
    assert last == says
    scored = run_script("deep_k_builds.py", "--score", out)
    assert scored.returncode == 0 and scored.stdout.splitlines()[-1] == last, scored.stderr


@pytest.mark.parametrize(
    "args", [["bogus"], ["all", "3m"], ["-1"], ["0.25"], ["700"], ["1.2.3"], ["all", "0"], ["."]]
)
def test_the_gpu_session_script_refuses_a_bad_part_before_it_installs_anything(args, tmp_path):
    """benchmarks/gpu_session.sh's argument is checked first: a bad one costs a lent machine's call nothing but
    the line (it once reached the wheel install first; 0.25 and 700 minutes, which kt bench refuses, passed it
    and failed after the 210 s of tests)."""
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "OUT": str(tmp_path / "out")},
    )
    assert done.returncode == 2, done.stderr
    assert (
        "give the minutes of kt bench (0.5 to 600, e.g. 4), 'tests', 'rest', or 'all MINUTES'" in done.stderr
    )
    assert not (tmp_path / "out").exists()


def _session(tmp_path, *args, **env):
    bin_dir = Path(sys.executable).parent  # the script runs python3: this interpreter, with kt's dependencies
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OUT": str(tmp_path / "out"), "PATH": f"{bin_dir}:{os.environ['PATH']}",
             "KT_TESTS_RAN": str(tmp_path / "ran.txt"), **env},
    )  # fmt: skip


def test_the_gpu_session_script_stops_at_once_where_kts_wheels_are_missing(tmp_path):
    """Without the carried wheels (skops among them) every kt step failed, for the whole call: the script now
    stops before the first, in one line saying what to carry."""
    fake = tmp_path / "fake" / "skops"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no skops here')\n")
    done = _session(tmp_path, "all", "3", PYTHONPATH=str(tmp_path / "fake"))
    assert done.returncode == 3, (done.stdout[-2000:], done.stderr[-2000:])
    assert done.stderr.startswith("gpu_session.sh: skops, prettytable or scikit-learn does not import")
    assert "carry .whl" in done.stderr and "no skops here" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["imports.txt"]


def test_the_gpu_session_scripts_rest_runs_the_gpu_tests_the_first_call_did_not_reach(tmp_path):
    """The tests a call runs are listed on the machine; `rest` leaves them out (the second call was put
    together by hand, test by test, within the 30 s the machine stays warm). Here every GPU test skips."""
    if list((ROOT / ".whl").glob("*.whl")):
        pytest.skip("a checkout holding .whl/ (for the GPU machines) would install them here")
    first = _session(tmp_path, "tests")
    assert first.returncode == 0, first.stderr
    ran = (tmp_path / "ran.txt").read_text().splitlines()
    assert len(ran) > 20 and all(line.startswith("tests/test_gpu.py::test_") for line in ran)
    rest = _session(tmp_path, "rest")
    assert rest.returncode == 0 and f"leaving out the {len(ran)} tests run before" in rest.stderr
    assert f"{len(ran) + 1} deselected" in (tmp_path / "out" / "gpu-tests-rest.txt").read_text()


def test_the_gpu_session_script_skips_a_step_past_the_calls_deadline(tmp_path):
    """A step is cut at KT_END (the call's deadline, KT_BUDGET_S after an `all` call starts), and one with
    under 20 s left is skipped: the steps' own caps added up to more than the device's 590 s."""
    done = _session(tmp_path, "tests", KT_END="1")
    assert done.returncode == 0, done.stderr
    assert "skipped, " in (tmp_path / "out" / "gpu-tests.txt").read_text()
    assert not (tmp_path / "ran.txt").exists() or not (tmp_path / "ran.txt").read_text()


def test_the_gpu_session_script_exits_with_kt_benchs_status(tmp_path):
    """`kt bench ... | tee` gave tee's status: a failed kt bench ended the call with 0, and only its output said
    so. The script now runs the comparisons after it and exits with kt bench's status (here: no GPU, exit 2)."""
    if list((ROOT / ".whl").glob("*.whl")):  # the lent machine's wheels would be installed into /tmp/site
        pytest.skip("a checkout holding .whl/ (for the GPU machines) would install them here")
    bin_dir = Path(sys.executable).parent  # the script runs python3: this interpreter, with kt's dependencies
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OUT": str(tmp_path / "out"), "PATH": f"{bin_dir}:{os.environ['PATH']}",
             "KT_DENSE_S": "60", "KT_STRUCTURED_S": "60"},
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert (tmp_path / "out" / "machine.txt").exists() and (tmp_path / "out" / "probe.txt").exists()


def test_a_benchmark_case_whose_tune_fails_is_named_and_the_others_go_on(capsys):
    """dense_vs_cublas, structured_vs_torch and sparse_vs_torch write their CSV at the end: one case's failed
    tune (a KtError) lost every earlier case of the run. `each_case` reports it and goes on."""
    from kt.autotune.figures import each_case
    from kt.errors import KtError

    def bench(case):
        if case == 2:
            raise KtError("none of the 6 candidates passed (6 compile_error)")
        return case * 10

    assert list(each_case([1, 2, 3], bench, lambda case: f"case {case}")) == [10, 30]
    assert capsys.readouterr().err == "case 2: failed: none of the 6 candidates passed (6 compile_error)\n"
    with pytest.raises(ValueError):  # a bug is no failed tune: it stops the run
        list(each_case([1], lambda case: int("x"), str))


def test_the_two_warp_limits_are_those_the_committed_builds_give():
    """kt's two-warp K-step limits are `--fit`'s on the committed fit and held-out builds (a sum's fused
    accumulation on sm_90 capped at a single source's), and kt's legality judges the committed check builds as
    BENCHMARKS.md says."""
    from conftest import benchmark_module

    from kt.codegen.gemm import TWO_WARP_K_LIMITS
    from kt.codegen.tilesum import FUSED_SUM_TWO_WARP_K_LIMITS

    study = benchmark_module("two_warp_k_builds")
    runs = ROOT / "benchmarks" / "results" / "two-warp-k-2026-12-05"
    fitted = study.fitted_limits(study.load(sorted(runs.glob("fit-*")) + sorted(runs.glob("held-out-*"))))
    assert fitted == {
        (80, "fused sum"): FUSED_SUM_TWO_WARP_K_LIMITS[80],
        (80, "one source"): TWO_WARP_K_LIMITS[80],
        (90, "fused sum"): 192,
        (90, "one source"): TWO_WARP_K_LIMITS[90],
    }
    assert FUSED_SUM_TWO_WARP_K_LIMITS[90] == min(192, TWO_WARP_K_LIMITS[90])
    for name, refused_clean, caught, spills in [
        ("check-sm80-seed101-triton3.9", 57, 49, 51),
        ("check-sm90-seed102-triton3.9", 77, 65, 65),
    ]:
        rows = study.load([runs / f"{name}.jsonl.gz"])
        refused = [study.refused_now(row) for row in rows]
        assert sum(r and not row["spilled"] for r, row in zip(refused, rows)) == refused_clean, name
        assert (
            sum(r and row["spilled"] for r, row in zip(refused, rows)),
            sum(row["spilled"] for row in rows),
        ) == (
            caught,
            spills,
        ), name


def test_the_complex_several_block_limits_are_those_the_committed_builds_give():
    """kt's limits for the FFT's complex launches over several blocks with K steps over 32 are `--fit`'s on the
    committed fit and held-out builds, and kt's legality judges the committed check builds (Triton 3.9 and 3.6)
    as BENCHMARKS.md says: every spill caught."""
    from conftest import benchmark_module

    from kt.codegen.blockgemm import COMPLEX_SEVERAL_K_LIMITS

    study = benchmark_module("complex_group_k_builds")
    runs = ROOT / "benchmarks" / "results" / "complex-group-k-2026-12-05"
    fitted = study.fitted_limits(study.load(sorted(runs.glob("fit-*")) + sorted(runs.glob("held-out-*"))))
    sizes = {"16-bit": 2, "tf32": 4}
    assert {(arch, sizes[kind]): limit for (arch, kind), limit in fitted.items()} == COMPLEX_SEVERAL_K_LIMITS
    for name, refused_clean, spills in [
        ("check-sm80-seed380-triton3.9", 29, 4),
        ("check-sm90-seed390-triton3.9", 41, 19),
        ("check-sm80-seed380-triton3.6", 23, 10),
        ("check-sm90-seed390-triton3.6", 47, 13),
    ]:
        rows = study.load([runs / f"{name}.jsonl.gz"])
        refused = [study.refused_now(row) for row in rows]
        assert sum(r and not row["spilled"] for r, row in zip(refused, rows)) == refused_clean, name
        assert sum(r and row["spilled"] for r, row in zip(refused, rows)) == sum(
            row["spilled"] for row in rows
        )
        assert sum(row["spilled"] for row in rows) == spills, name


def test_no_register_count_separates_the_committed_one_block_deep_k_tf32_fft_builds():
    """BENCHMARKS.md's tf32 FFT launches in one block with K steps over 32: kt's legality admits all the committed
    builds, spills among them, and a limit that no spill passes (72 on sm_90, 64 on sm_80) would refuse 9 clean
    builds of each: the spills are left to the compile stage. A rule for them would change these counts."""
    from conftest import benchmark_module

    study = benchmark_module("complex_deep_k_builds")
    runs = ROOT / "benchmarks" / "results" / "complex-deep-k-2026-12-06"
    rows = study.load(sorted(runs.glob("fit-*")))
    assert not any(study.refused_now(row) for row in rows)  # kt admits every one of them
    assert study.STUDY.fitted_limits(rows) == {(80, "tf32"): 64, (90, "tf32"): 72}
    for arch, clean, spills in [(80, 15, 5), (90, 17, 9)]:
        mine = [row for row in rows if row["arch"] == arch]
        assert (sum(not row["spilled"] for row in mine), sum(row["spilled"] for row in mine)) == (
            clean,
            spills,
        )
    spill_counts = [study.count(row) for row in rows if row["spilled"]]
    clean_counts = [study.count(row) for row in rows if not row["spilled"]]
    assert min(spill_counts) == 72 and max(clean_counts) == 224


def test_the_several_block_limits_are_those_the_committed_builds_give():
    """kt's limits for tensor-core launches over several blocks with more than 32 accumulator registers per
    thread are `--fit`'s on the committed fit and held-out builds, and kt's legality judges the committed check
    builds (Triton 3.9 and 3.6) as BENCHMARKS.md says."""
    from conftest import benchmark_module

    from kt.codegen.blockgemm import SEVERAL_BLOCKS_LIMITS

    study = benchmark_module("several_blocks_builds")
    runs = ROOT / "benchmarks" / "results" / "several-blocks-2026-12-05"
    fitted = study.fitted_limits(study.load(sorted(runs.glob("fit-*")) + sorted(runs.glob("held-out-*"))))
    sizes = {"16-bit": 2, "tf32": 4}

    def key(arch, kind):
        dots, size, ends = kind.split()
        return arch, dots, sizes[size], ends == "strided"

    assert {key(arch, kind): limit for (arch, kind), limit in fitted.items()} == SEVERAL_BLOCKS_LIMITS
    for name, refused_clean, caught, spills in [
        ("check-sm80-seed380-triton3.9", 39, 44, 48),
        ("check-sm90-seed390-triton3.9", 33, 37, 39),
        ("check-sm80-seed380-triton3.6", 55, 28, 29),
        ("check-sm90-seed390-triton3.6", 53, 17, 18),
    ]:
        rows = study.load([runs / f"{name}.jsonl.gz"])
        refused = [study.refused_now(row) for row in rows]
        assert sum(r and not row["spilled"] for r, row in zip(refused, rows)) == refused_clean, name
        assert sum(r and row["spilled"] for r, row in zip(refused, rows)) == caught, name
        assert sum(row["spilled"] for row in rows) == spills, name


def test_space_time_times_each_examples_space_made_afresh_and_refuses_an_unknown_example():
    done = run_script("space_time.py", "--repeats", "1", "--only", "dense", "monarch_rect")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines[1:-1]]
    assert [(r[0], r[1]) for r in rows] == [
        ("dense", "h100"),
        ("dense", "a100"),
        ("monarch_rect", "h100"),
        ("monarch_rect", "a100"),
    ]
    assert rows[0][2:4] == ["17658", "25200"]  # the README's space of examples/dense.yaml
    assert all(0 < float(r[4]) < 60 for r in rows)
    assert lines[-1].startswith("worst: ") and "median of 1" in lines[-1]
    bad = run_script("space_time.py", "--only", "densee")
    assert bad.returncode == 2 and "--only: no example densee; allowed: blocksparse" in bad.stderr


def test_search_vs_tuners_tabulates_a_csv_without_the_spaces_it_came_from(tmp_path):
    """`--repeats 0` runs nothing and tabulates --csv: it loaded every space first, so the held-out table
    could not be made again without the hub's checkout ("no space found")."""
    csv_copy = tmp_path / "held_out.csv"
    shutil.copy(
        Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "search_held_out.csv", csv_copy
    )
    done = run_script(
        "search_vs_tuners.py", "--held-out", tmp_path / "no-hub", "--repeats", "0", "--csv", csv_copy,
        "--budgets", "25,100", "--overall",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| smac:rf | 100 |" in done.stdout, done.stdout
