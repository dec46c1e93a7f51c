"""Replaying searches over recorded sweeps, on real measurements: GPPerf's tiled-matmul runtimes (RTX 4070).

Skipped where that public data is absent (it is evaluation data kept outside this repository).
"""

import re

import numpy as np
import pytest
from conftest import GPPERF, benchmark_module

from kt.autotune.database import CSV_COLUMNS
from kt.autotune.replay import Sweep, reached, replay, sweeps_from_rows
from kt.autotune.search import SearchTrace
from kt.cli import _space_line
from kt.ir.problems import GemmProblem

TILED = GPPERF / "execution_times_all.csv"

pytestmark = pytest.mark.skipif(not TILED.is_file(), reason=f"GPPerf data not found at {GPPERF}")


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("search_efficiency")


@pytest.fixture(scope="module")
def device():
    return benchmark_module("gpperf_costmodel").RTX4070


@pytest.fixture(scope="module")
def sweeps(bench):
    return bench.tiled_sweeps(TILED)


def test_the_tiled_file_becomes_one_sweep_per_shape(sweeps):
    assert len(sweeps) >= 30 and all(3 <= len(s) <= 5 for s in sweeps)
    assert all(np.isfinite(s.runtime_ms).all() and s.best == s.runtime_ms.min() for s in sweeps)


@pytest.mark.parametrize("strategy", ["guided", "random", "top", "exhaustive"])
def test_a_whole_budget_replay_finds_the_best_and_a_budget_of_one_measures_one(sweeps, device, strategy):
    sweep = sweeps[0]
    prior = [r for other in sweeps[1:6] for r in other.measured_records(range(len(other)))]
    whole = replay(sweep, strategy, device, len(sweep), seed=1, prior=prior, n_estimators=10)
    assert sorted(whole.measured) == list(range(len(sweep))) and reached(sweep, whole, len(sweep)) == 1.0
    one = replay(sweep, strategy, device, 1, seed=1, prior=prior, n_estimators=10)
    assert len(one.measured) == 1 and 0 < reached(sweep, one, 1) <= 1


def test_the_benchmark_never_trains_the_prior_on_the_shape_it_replays(bench, sweeps, device, monkeypatch):
    seen = []
    real = bench.replay

    def spy(sweep, strategy, device, budget, seed=0, prior=(), n_estimators=100):
        seen.append((sweep.shape, {r["shape"] for r in prior}))
        return real(sweep, strategy, device, budget, seed, prior, n_estimators)

    monkeypatch.setattr(bench, "replay", spy)
    results = bench.run(sweeps[:4], device, [0.5], seeds=1, trees=10, progress=lambda s: None)
    assert len(results) == 4 * len(bench.STRATEGIES)
    assert all(key not in groups for key, groups in seen)
    assert any(groups for _, groups in seen), "guided search starts from the other shapes"


def sweep_rows(sweep):
    """Rows as `kt collect` writes them, carrying the file's real runtimes; the first config failed instead."""
    rows = []
    for i, record in enumerate(sweep.records):
        problem = GemmProblem(record["m"], record["n"], record["k"], dtype="float32")
        config = {
            k: record[k]
            for k in ("block_m", "block_n", "block_k", "group_m", "num_warps", "num_stages", "split_k")
        }
        failed = i == 0
        rows.append(
            {
                "runner": "cuda",
                "family": "gemm",
                "problem": problem.to_dict(),
                "problem_key": problem.key(),
                "config": config,
                "config_key": record["config_key"],
                "status": "compile_error" if failed else "ok",
                "runtime_ms": None if failed else float(sweep.runtime_ms[i]),
            }
        )
    return rows


def test_database_rows_become_sweeps_with_failures_as_missing_values(sweeps):
    sweep = sweeps[0]
    rows = sweep_rows(sweep)
    (rebuilt,) = sweeps_from_rows(rows, min_configs=2)
    assert len(rebuilt) == len(sweep) and np.isnan(rebuilt.runtime_ms).sum() == 1
    assert sweeps_from_rows(rows, min_configs=len(sweep) + 1) == []
    assert sweeps_from_rows([{**r, "runner": "interpret"} for r in rows], min_configs=2) == []
    # PyTorch's own path, candidate zero, in the same template version (an edited database): it has no config
    # fields to replay (a traceback, "record lacks block_m"), and is no config of the space
    zero = {**rows[0], "config": {}, "config_key": "pytorch", "runtime_ms": 0.001, "status": "ok"}
    (with_zero,) = sweeps_from_rows([*rows, zero], min_configs=2)
    assert len(with_zero) == len(sweep) and with_zero.best == rebuilt.best


def test_the_benchmark_refuses_bad_arguments_in_one_line(bench, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--gpperf-tiled", str(TILED), "--fractions", "0,2"])
    assert exit_.value.code == 2 and "--fractions" in capsys.readouterr().err
    assert bench.main(["--data", str(tmp_path / "missing.db")]) == 2
    assert "not found" in capsys.readouterr().err


def test_an_fp16_and_a_bf16_sweep_of_one_size_are_one_shape_and_never_train_each_other(
    bench, device, monkeypatch
):
    # No runtimes needed: only which sweeps may feed which prior is checked (every value is missing).
    def sweep(dtype, layout):
        problem = GemmProblem(256, 512, 128, dtype=dtype, b_layout=layout)
        config = {"block_m": 64, "block_n": 64, "block_k": 32, "group_m": 8, "num_warps": 4, "num_stages": 3}
        records = [{**problem.to_record(), **config, "split_k": s} for s in (1, 2)]
        return Sweep(problem.key(), records, np.full(2, np.nan))

    twins = [sweep("float16", "row"), sweep("bfloat16", "col")]
    assert twins[0].key != twins[1].key and twins[0].shape == twins[1].shape == "gemm 256x512x128"
    priors = []
    monkeypatch.setattr(
        bench, "replay", lambda s, *a, prior=(), **k: priors.append(list(prior)) or SearchTrace()
    )
    bench.run(twins, device, [0.5], seeds=1, trees=2, progress=lambda s: None)
    assert priors and all(p == [] for p in priors)


def test_kt_replay_of_kt_sweeps_replays_each_problem_with_a_prior_from_the_others(
    sweeps, monkeypatch, tmp_path
):
    import kt.autotune.replay as replay_module

    rows = [row for sweep in sweeps[:6] for row in sweep_rows(sweep)]
    monkeypatch.setattr(replay_module, "read_rows", lambda path, field="data": rows)
    path = tmp_path / "sweeps.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n")  # a kt export's header: the rows come from read_rows
    result = replay_module.replay_file(path, "guided", 2, repeats=2, seed=1, min_configs=3)
    assert len(result.spaces) == 6 and len(result.scores) == 12 and all(0 < s <= 1 for s in result.scores)
    assert result.line().endswith("over 2 repeats x 6 problems")
    low, high = min(len(s) for s in sweeps[:6]), max(len(s) for s in sweeps[:6])
    sizes = f"{low} configs" if low == high else f"{low} to {high} configs"
    assert _space_line(result).startswith(f"space: 6 problems of {sizes}: ")  # a tune's rows show few
    assert len(result.rows) == 24 and set(result.spent.values()) == {2} and len(result.spent) == 12
    # without a trace to write (no --csv) no per-evaluation row is kept (~6.5 MB a repeat of a large space)
    bare = replay_module.replay_file(path, "guided", 2, repeats=2, seed=1, min_configs=3, keep_rows=False)
    assert bare.rows == [] and bare.spent == result.spent and bare.scores == result.scores
    with pytest.raises(replay_module.KtError, match="holds no exhaustive sweep"):
        replay_module.replay_file(path, "guided", 2, min_configs=50)
    # a --device that no sweep was measured for was ignored without a word
    with pytest.raises(
        replay_module.KtError, match=r"^device: the sweeps were measured for 'h100', not for 'a100'"
    ):
        replay_module.replay_file(path, "random", 2, repeats=1, min_configs=3, device="a100")
    assert (
        len(replay_module.replay_file(path, "random", 2, repeats=1, min_configs=3, device="h100").scores) == 6
    )
    # sweeps made without a GPU: the refusal said nothing of their rows never being timed
    rows[:] = [
        {**r, "runner": runner, "runtime_ms": None} for r in rows[:6] for runner in ("interpret", "dryrun")
    ]
    with pytest.raises(
        replay_module.KtError,
        match=r"writes there\): its rows were checked, never timed \(6 from Triton's interpreter, 6 from the dry run",
    ):
        replay_module.replay_file(path, "guided", 2, min_configs=3)


def test_a_config_measured_twice_in_one_space_is_refused_naming_both_rows(sweeps, monkeypatch, tmp_path):
    """Two exports joined into one CSV: the last row of a config was kept without a word (its optimum 100
    times slower, and a replay that searched the whole space still scored 1.000 against it)."""
    import kt.autotune.replay as replay_module

    rows = [{**row, "id": i} for i, row in enumerate(r for sweep in sweeps[:2] for r in sweep_rows(sweep))]
    timed = next(i for i, row in enumerate(rows) if row.get("runtime_ms"))
    again = {**rows[timed], "id": 99, "runtime_ms": rows[timed]["runtime_ms"] * 100}
    monkeypatch.setattr(replay_module, "read_rows", lambda path, field="data": [*rows, again])
    path = tmp_path / "sweeps.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(
        replay_module.KtError,
        match=rf"^space: two rows measure config {re.escape(rows[timed]['config_key'])} of problem .* \(row ids "
        rf"{timed} and 99\); a replayed space holds one time per config: keep one of them$",
    ):
        replay_module.replay_file(path, "random", 2, repeats=1, min_configs=3)


def test_sweeps_of_one_problem_on_two_gpus_are_two_spaces_each_with_its_own_gpus_prior(
    sweeps, monkeypatch, tmp_path
):
    """Rows were grouped by problem and target, not GPU: two cards of one target (an A100 40GB and 80GB, or
    --device h100 on an H200) became one space, each config keeping whichever card's row came last. Here the
    second card's rows repeat the first's runtimes for one problem: only the grouping is checked."""
    import kt.autotune.replay as replay_module

    one = [{**row, "device": "GPU one"} for sweep in sweeps[:3] for row in sweep_rows(sweep)]
    two = [{**row, "device": "GPU two"} for row in sweep_rows(sweeps[0])]
    monkeypatch.setattr(replay_module, "read_rows", lambda path, field="data": one + two)
    priors = {}
    real = replay_module.replay

    def spy(sweep, strategy, device, budget, seed=0, prior=(), **options):
        priors[(sweep.gpu, sweep.key)] = len(prior)
        return real(sweep, strategy, device, budget, seed, prior, **options)

    monkeypatch.setattr(replay_module, "replay", spy)
    path = tmp_path / "sweeps.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n")
    result = replay_module.replay_file(path, "guided", 2, repeats=1, min_configs=3)
    assert len(result.spaces) == 4 and sum(name.endswith("(GPU two)") for name in result.spaces) == 1
    assert priors[("GPU two", sweeps[0].key)] == 0, "the other card's sweeps are not its prior"
    assert priors[("GPU one", sweeps[0].key)] > 0


def test_sweeps_for_a_calibrated_profile_need_its_file_and_random_fits_no_forest(
    sweeps, monkeypatch, tmp_path
):
    """Rows tuned with --device gpu.json name the profile's key (rtx4070-<hash>): kt replay read it as a profile
    name or a file (a ProfileError traceback, exit 1). A random replay of a kt CSV fitted a forest on every other
    problem's rows per problem and repeat, which random never reads (318 problems: hours)."""
    import json

    import kt.autotune.replay as replay_module
    from kt.costmodel.forest import ForestModel
    from kt.device import BUILTIN, load_profile

    profile_file = tmp_path / "rtx4070.json"
    profile_file.write_text(
        json.dumps({**BUILTIN["h100"].to_dict(), "name": "rtx4070", "compute_capability": 89})
    )
    key = load_profile(profile_file).key
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**BUILTIN["h100"].to_dict(), "name": "rtx4070", "compute_capability": 86}))
    rows = [{**row, "target": key} for sweep in sweeps[:4] for row in sweep_rows(sweep)]
    monkeypatch.setattr(replay_module, "read_rows", lambda path, field="data": rows)
    path = tmp_path / "sweeps.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(replay_module.KtError, match=rf"device profile '{key}', a calibrated one; give that"):
        replay_module.replay_file(path, "guided", 2, repeats=1, min_configs=3)
    with pytest.raises(replay_module.KtError, match=r"a calibrated one \(--device gives 'rtx4070-"):
        replay_module.replay_file(path, "guided", 2, repeats=1, min_configs=3, device=other)
    guided = replay_module.replay_file(path, "guided", 2, repeats=1, min_configs=3, device=profile_file)
    assert len(guided.scores) == 4

    def no_forest(*args, **kwargs):
        raise AssertionError("a random replay fitted a forest")

    monkeypatch.setattr(ForestModel, "fit", no_forest)
    # nor gathers the other problems' rows (316 problems took 10.7 s to start, Inductor's 4,765 over 5 minutes)
    priors, real = [], replay_module.replay
    monkeypatch.setattr(
        replay_module, "replay", lambda *args, prior=(), **kw: priors.append(len(prior)) or real(*args, **kw)
    )
    random = replay_module.replay_file(path, "random", 2, repeats=2, min_configs=3, device=profile_file)
    assert len(random.scores) == 8 and all(0 < s <= 1 for s in random.scores)
    assert priors == [0] * 8
