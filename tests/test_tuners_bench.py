"""benchmarks/tuners.py: the external baseline optimizers (Kernel Tuner's strategies in its simulation mode,
Optuna's TPE, SMAC3's random forest) replayed on fully measured search spaces with an exact evaluation budget.

What is checked: each spends its budget on distinct valid points of the space, failed points included and
invalid combinations free, with the space's own values; the same seed replays the same run. The real spaces
(Kernel Tuner caches in ../shared/data/kerneltuner) are read where present, else those tests skip; each optimizer
skips where its package is not installed. Small budgets keep every test within a few seconds.
"""

import random
from pathlib import Path

import numpy as np
import pytest
from conftest import benchmark_module

from kt.autotune.spaces import TuningSpace, load_kernel_tuner

DATA = Path(__file__).resolve().parents[2] / "shared/data/kerneltuner"
CONVOLUTION = DATA / "convolution_A100.json.gz"
GEMM = DATA / "gemm_RTX_3090.json.gz"

tuners = benchmark_module("tuners")

# Kernel Tuner strategies that end by their own rule before the budget is spent: simulated annealing's schedule
# and scipy's dual annealing count revisits (and, for dual annealing, invalid points) as steps.
STOPS_EARLY = {"kerneltuner:simulated_annealing", "kerneltuner:dual_annealing"}
# ... and on a space of a few dozen points, the genetic algorithm shrinks its population to 2 and stops after two
# evaluations, and SMAC stops once 16 draws in a row find no combination it has not tried (22 of the toy's 26).
STOPS_EARLY_ON_TOY = STOPS_EARLY | {"kerneltuner:genetic_algorithm", "smac:rf"}

needs_data = pytest.mark.skipif(not CONVOLUTION.is_file(), reason=f"Kernel Tuner spaces not found at {DATA}")


def needs_package(name: str) -> None:
    pytest.importorskip(tuners._PACKAGES[name.split(":")[0]])


@pytest.fixture(scope="module")
def convolution() -> TuningSpace:
    if not CONVOLUTION.is_file():
        pytest.skip(f"Kernel Tuner spaces not found at {DATA}")
    return load_kernel_tuner(CONVOLUTION)


def toy_space() -> TuningSpace:
    """26 valid points of 32 combinations (a * b <= 16), two of which failed on the GPU (a == 8 with c == 1)."""
    points, values = [], []
    for a in (1, 2, 4, 8):
        for b in (1, 2, 4, 8):
            for c in (0, 1):
                if a * b <= 16:
                    points.append((a, b, c))
                    values.append(np.nan if (a, c) == (8, 1) else 1.0 + abs(np.log2(a / b)) + 0.5 * c)
    params = {"a": [1, 2, 4, 8], "b": [1, 2, 4, 8], "c": [0, 1]}
    return TuningSpace(name="toy", params=params, points=points, objective=np.array(values))


def check_trace(space: TuningSpace, trace, budget: int, stops_early: bool) -> None:
    assert len(set(trace.points)) == len(trace.points), "a point evaluated twice"
    if stops_early:
        assert 0 < len(trace.points) <= budget
    else:
        assert len(trace.points) == budget
    for i, value in zip(trace.points, trace.values):
        expected = space.objective[i]
        assert (value is None) if np.isnan(expected) else value == expected
    assert trace.seconds > 0


@needs_data
@pytest.mark.parametrize("name", tuners.ALL_EXTERNAL)
def test_each_optimizer_spends_its_budget_on_distinct_valid_points_and_replays_its_seed(convolution, name):
    needs_package(name)
    first = tuners.trace_external(convolution, name, 10, seed=3)
    check_trace(convolution, first, 10, name in STOPS_EARLY)
    again = tuners.trace_external(convolution, name, 10, seed=3)
    assert again.points == first.points
    if name != "smac:rf":  # (a third SMAC run would take seconds)
        assert tuners.trace_external(convolution, name, 10, seed=4).points != first.points


@pytest.mark.parametrize("name", tuners.ALL_EXTERNAL)
def test_failed_points_count_and_invalid_combinations_do_not(name):
    """A whole toy space as the budget: every valid point once, the two that failed as None, and the six
    combinations outside the space never (a budget beyond the space is the space)."""
    needs_package(name)
    space = toy_space()
    trace = tuners.trace_external(space, name, 100, seed=0)
    check_trace(space, trace, len(space), name in STOPS_EARLY_ON_TOY)
    if name not in STOPS_EARLY_ON_TOY:
        assert sorted(trace.points) == list(range(len(space)))
        assert sum(v is None for v in trace.values) == 2


@needs_data
@pytest.mark.parametrize("path", [CONVOLUTION, GEMM], ids=lambda p: p.name.split(".")[0])
def test_kernel_tuner_sees_exactly_the_valid_points(path):
    pytest.importorskip("kernel_tuner")
    if not path.is_file():
        pytest.skip(f"{path} not found")
    space = load_kernel_tuner(path)
    assert tuners.kernel_tuner_space_size(space) == len(space)
    # the restrictions of the data's README describe the same set (failed points included)
    readme = tuners.KERNEL_TUNER_KERNELS[space.meta["kernel_name"]]["restrictions"]
    assert tuners.kernel_tuner_space_size(space, readme) == len(space)


@needs_data
def test_kernel_tuner_values_are_the_spaces(convolution, tmp_path):
    """Kernel Tuner reads the cache written from the space back as the space: each result's time is the
    space's value, failed points carry an error."""
    kernel_tuner = pytest.importorskip("kernel_tuner")
    cache = tmp_path / "convolution.json"
    tuners.write_kernel_tuner_cache(convolution, cache, "convolution_kernel", [4096, 4096])
    results, _ = kernel_tuner.tune_kernel(
        "convolution_kernel",
        "",
        (4096, 4096),
        [],
        convolution.params,
        restrictions=tuners.kernel_tuner_restriction(convolution),
        cache=str(cache),
        simulation_mode=True,
        strategy="random_sample",
        strategy_options={"max_fevals": 200},
        quiet=True,
    )
    index = {p: i for i, p in enumerate(convolution.points)}
    keys = list(convolution.params)
    failed = 0
    for result in results:
        expected = convolution.objective[index[tuple(result[k] for k in keys)]]
        if np.isnan(expected):
            failed += 1
            assert "__error__" in result
        else:
            assert result["time"] == expected
    assert len(results) == 200 and failed > 0  # 161 of 4,362 failed: about 7 expected


@needs_data
def test_runs_are_quiet_and_leave_the_global_generators_alone(convolution, capfd):
    for name in ("kerneltuner:genetic_algorithm", "kerneltuner:bayes_opt", "optuna:tpe"):
        needs_package(name)
        random.seed(11)
        np.random.seed(11)
        tuners.run_external(convolution, name, 25, seed=0)
        assert random.random() == random.Random(11).random()
        assert np.random.random() == np.random.RandomState(11).random_sample()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_arguments_are_checked():
    space = toy_space()
    with pytest.raises(ValueError, match="unknown external optimizer"):
        tuners.run_external(space, "hyperopt:tpe", 5, 0)
    with pytest.raises(ValueError, match="budget"):
        tuners.run_external(space, "optuna:tpe", 0, 0)


def test_an_optimizer_that_does_not_import_is_named_and_left_out(monkeypatch):
    monkeypatch.setattr(
        tuners, "_import_error", lambda family: "ModuleNotFoundError: no smac" if family == "smac" else None
    )
    assert "smac:rf" not in tuners.available()
    with pytest.raises(tuners.ExternalError, match="smac:rf needs the Python package 'smac'"):
        tuners.run_external(toy_space(), "smac:rf", 5, 0)


@needs_data
def test_the_side_by_side_benchmark_writes_each_run_and_resumes_from_its_csv(tmp_path, capsys):
    bench = benchmark_module("search_vs_tuners")
    out = tmp_path / "runs.csv"
    args = ["--spaces", "convolution_A100", "--budgets", "12", "--repeats", "2", "--csv", str(out)]
    args += ["--strategies", "kt guided,kt random,forest loop (issue 15)", "--markdown"]
    assert bench.main(args) == 0
    rows = bench.read_done(out)
    assert len(rows) == 6 and {r["strategy"] for r in rows} == {
        "kt guided",
        "kt random",
        "forest loop (issue 15)",
    }
    assert all(0 < float(r["score"]) <= 1 and r["evals"] == "12" for r in rows)
    table = capsys.readouterr().out
    assert "**convolution_A100**" in table and "| kt guided | " in table
    assert bench.main(args) == 0 and len(bench.read_done(out)) == 6, (
        "a rerun skips the runs already in the CSV"
    )
    twice = tmp_path / "twice.csv"  # a budget or strategy named twice ran (and counted) every repeat twice
    args = ["--spaces", "convolution_A100", "--budgets", "12,12", "--repeats", "2", "--csv", str(twice)]
    assert (
        bench.main([*args, "--strategies", "kt random,kt random"]) == 0 and len(bench.read_done(twice)) == 2
    )
    # a run killed before its first row (its header was not yet written out): an empty file, which every later
    # run refused as "not this script's CSV"
    empty = tmp_path / "empty.csv"
    empty.touch()
    args = ["--spaces", "convolution_A100", "--budgets", "12", "--repeats", "1", "--csv", str(empty)]
    assert bench.main([*args, "--strategies", "kt random"]) == 0 and len(bench.read_done(empty)) == 1
    # a row cut inside its last cell (every column there) was read as a finished run, its time cut short
    whole = empty.read_bytes()
    empty.write_bytes(whole[: -len(b"\r\n") - 2])
    assert bench.read_done(empty) == []
    assert bench.main([*args, "--strategies", "kt random"]) == 0
    (row,) = bench.read_done(empty)
    assert empty.read_bytes().count(b"\r\n") == 2 and len(row["seconds"]) > 4


def test_the_verdicts_say_ahead_level_or_behind_from_each_cells_interval():
    bench = benchmark_module("search_vs_tuners")
    rng = np.random.default_rng(0)

    def runs(space, strategy, label, mean, n=40):
        return [
            {"space": space, "strategy": strategy, "budget_label": label, "score": float(s)}
            for s in np.clip(rng.normal(mean, 0.05, n), 0, 1)
        ]

    rows = (
        runs("a", "kt guided", "25", 0.90) + runs("a", "kt random", "25", 0.70) + runs("a", "tpe", "25", 0.80)
    )
    rows += runs("a", "kt guided", "100", 0.90) + runs("a", "tpe", "100", 0.90)
    rows += runs("b", "kt guided", "25", 0.60) + runs("b", "tpe", "25", 0.80)
    table = bench.verdicts(rows, ["25", "100"])
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.splitlines()}
    assert "| tpe |" in lines[("a", "25")] and lines[("a", "25")].endswith("| ahead |"), "the best rival"
    assert lines[("a", "100")].endswith("| level |")
    assert lines[("b", "25")].endswith("| behind |")
    assert ("b", "100") not in lines, "a cell kt guided did not run is left out"
    assert table.splitlines()[-1] == "ahead: 1, level: 1, behind: 1"


def test_the_held_out_sets_are_named_and_a_wrong_space_is_one_clear_error(tmp_path, capsys):
    bench = benchmark_module("search_vs_tuners")
    assert not set(bench.HELD_OUT) & set(bench.LATER_HELD_OUT), "the two held-out sets share no space"
    assert not set(bench.SPACES) & (set(bench.HELD_OUT) | set(bench.LATER_HELD_OUT))
    out = tmp_path / "runs.csv"
    with pytest.raises(SystemExit) as stop:
        bench.main(["--later", "--budgets", "5", "--csv", str(out)])
    assert stop.value.code == 2 and "--later needs --held-out HUB" in capsys.readouterr().err
    assert not out.exists(), "a rejected command line writes no CSV"
    with pytest.raises(SystemExit) as stop:
        bench.main(["--held-out", str(tmp_path), "--later", "--spaces", "gemm_RTX_Titan"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--spaces: gemm_RTX_Titan not among dedispersion_A4000" in err


def test_the_overall_table_averages_cell_means_and_counts_each_strategys_best_spaces():
    bench = benchmark_module("search_vs_tuners")

    def runs(space, strategy, label, *scores):
        return [
            {
                "space": space,
                "strategy": strategy,
                "budget_label": label,
                "score": s,
                "evals": 25,
                "seconds": 0.0,
            }
            for s in scores
        ]

    rows = runs("a", "kt guided", "25", 0.9, 0.7) + runs("a", "tpe", "25", 0.6, 0.6)
    rows += runs("b", "kt guided", "25", 0.5) + runs("b", "tpe", "25", 0.7)
    rows += runs("c", "kt guided", "25", 1.0) + runs("c", "tpe", "25", 1.0)
    table = {line.split("|")[1].strip(): line for line in bench.overall(rows, ["25"]).splitlines()[2:]}
    assert table["kt guided"] == "| kt guided | 25 | 0.767 | 0.500 (b) | 2 of 3 spaces |", (
        "ties count for both"
    )
    assert table["tpe"] == "| tpe | 25 | 0.767 | 0.600 (a) | 2 of 3 spaces |"
    rows += runs("d", "kt guided", "25", 0.8)
    table = {line.split("|")[1].strip(): line for line in bench.overall(rows, ["25"]).splitlines()[2:]}
    assert table["kt guided"] == "| kt guided | 25 | 0.775 | 0.500 (b) | 3 of 4 spaces |"
    assert table["tpe"].endswith("| 2 of 4 spaces (of 3 run) |"), "tpe did not run on d"


def test_against_pairs_kt_guided_on_space_budget_and_seed_and_ignores_the_rest(tmp_path, capsys):
    bench = benchmark_module("search_vs_tuners")

    def row(space, label, repeat, score, strategy="kt guided"):
        return {"space": space, "strategy": strategy, "budget_label": label, "repeat": repeat, "score": score}

    before = [row("a", "25", r, 0.5 + 0.1 * r) for r in range(4)] + [row("b", "25", 0, 0.9)]
    before += [row("a", "25", 0, 0.0, strategy="kt random")]  # another strategy is not paired
    after = [row("a", "25", r, 0.6 + 0.1 * r) for r in range(4)] + [row("b", "25", 0, 0.8)]
    after += [row("a", "25", 9, 0.1), row("a", "100", 0, 1.0)]  # no seed or budget to pair with
    table = bench.paired(after, before, ["25", "100"]).splitlines()
    assert len(table) == 3, "the 100 budget has nothing to pair"
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells[:4] == [
        "25",
        "5",
        f"{(0.6 + 0.7 + 0.8 + 0.9 + 0.8) / 5:.3f}",
        f"{(0.5 + 0.6 + 0.7 + 0.8 + 0.9) / 5:.3f}",
    ]
    diffs = np.array([0.1, 0.1, 0.1, 0.1, -0.1])
    assert cells[4] == f"{diffs.mean():+.3f} +- {diffs.std(ddof=1) / np.sqrt(5):.3f}"
    assert cells[5] == "a +0.100, b -0.100"
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0", "--against", str(tmp_path / "missing.csv")])
    assert "--against: " in capsys.readouterr().err


def test_kts_decision_time_counts_the_encoding_of_the_space(convolution):
    """kt's runs were timed after `space.features()`, made once per space outside the timer, while Kernel
    Tuner's runs count building their space: each kt run now counts that encoding too."""
    bench = benchmark_module("search_vs_tuners")
    features = convolution.features()
    _, plain = bench.run_one(convolution, "kt random", 5, 0, features)
    _, counted = bench.run_one(convolution, "kt random", 5, 0, features, features_s=30.0)
    assert plain < 30.0 <= counted
