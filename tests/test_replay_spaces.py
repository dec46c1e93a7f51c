"""`kt replay` and the guided search on spaces measured whole (kt.autotune.spaces, kt.autotune.replay).

Small Kernel Tuner cache files are written here from a formula over their parameters: they are search
problems for the strategies (a cost to minimise over a discrete space), not timings of anything, and nothing
reports them as such. The real brute-forced spaces (../shared/data/kerneltuner, measured on GPUs) are read where
present: on them the guided search must beat random search over several seeds.
"""

import csv
import gzip
import itertools
import json
import math
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import kt_cli

from kt.autotune.replay import parse_budget, replay_file, replay_space
from kt.autotune.search import GuidedSearch
from kt.autotune.spaces import (
    SpaceError,
    budget_label,
    check_space_file,
    config_features,
    is_enumeration,
    load_kernel_tuner,
)
from kt.costmodel.paramforest import ParamForest
from kt.errors import KtError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kerneltuner"
PARAMS = {"bx": [16, 32, 48, 64, 96, 128], "by": [1, 2, 4, 8], "tile": [1, 2, 3, 4], "mode": ["a", "b"]}


def cost(bx, by, tile, mode):
    """A bowl with its minimum at bx 64, by 4, tile 2, mode b; by 8 with bx over 64 fails."""
    if by == 8 and bx > 64:
        return None
    return (
        (1 + abs(math.log2(bx / 64)))
        * (1 + abs(math.log2(by / 4)))
        * (1 + 0.4 * abs(tile - 2))
        * (1.0 if mode == "b" else 1.3)
    )


def write_cache(path: Path, params=PARAMS, fn=cost, gz=False) -> Path:
    cache = {}
    for values in itertools.product(*params.values()):
        point = dict(zip(params, values))
        value = fn(**point)
        cache[",".join(map(str, values))] = {
            **point,
            "time": "RuntimeFailedConfig" if value is None else value,
        }
    data = {
        "tune_params_keys": list(params),
        "tune_params": params,
        "objective": "time",
        "cache": cache,
        "device_name": "formula",
        "kernel_name": "bowl",
    }
    text = json.dumps(data)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture
def bowl(tmp_path):
    return write_cache(tmp_path / "bowl.json")


def test_a_kernel_tuner_cache_reads_as_a_space_with_its_failures(tmp_path, bowl):
    space = load_kernel_tuner(bowl)
    gz = load_kernel_tuner(write_cache(tmp_path / "bowl.json.gz", gz=True))
    assert len(space) == len(gz) == 6 * 4 * 4 * 2 and space.points == gz.points
    assert space.failed.sum() == 2 * 4 * 2, "by 8 with bx 96 or 128 fails"
    assert space.best == 1.0 and space.point(int(np.nanargmin(space.objective))) == {
        "bx": 64,
        "by": 4,
        "tile": 2,
        "mode": "b",
    }
    assert space.score(2.0) == 0.5 and space.score(None) == 0.0
    x = space.features()
    # four encoded parameters, plus the power-of-two divisor of bx (48 and 96 are not powers of two) and of tile
    assert x.shape == (len(space), 6)
    assert set(x[:, 3]) == {0.0, 1.0}, "a categorical parameter is its value's position"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a Kernel Tuner cache file"),
        ('{"cache": {}}', "needs the fields tune_params and cache"),
        ('{"tune_params": {"a": [1]}, "cache": {}}', "holds no configuration"),
        ('{"tune_params": {"a": [1]}, "cache": {"1": {"time": 1.0}}}', "lacks a"),
        (
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "time": "CompilationFailedConfig"}}}',
            "no point of the space has a measured value",
        ),
        # each of these was a Python traceback (AttributeError, TypeError, numpy's ValueError)
        ('{"tune_params": {"a": [1]}, "cache": []}', "cache must map each configuration's key to its record"),
        ('{"tune_params": {"a": [1]}, "cache": {"1": 5}}', "cache entry '1' must be a record"),
        ('{"tune_params": {"a": [1]}, "cache": {"1": null}}', "cache entry '1' must be a record .* got null"),
        ('{"tune_params": ["a"], "cache": {}}', "tune_params must map each parameter's name to the list"),
        ('{"tune_params": {"a": 5}, "cache": {}}', "tune_params must map each parameter's name to the list"),
        ('{"tune_params": {"a": [1]}, "tune_params_keys": ["b"], "cache": {}}', "tune_params_keys must list"),
        (
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": [1, 2], "time": 1.0}}}',
            "cache entry '1': each parameter's value must be a number or text",
        ),
        # a value tune_params does not list: a traceback in the encoding (could not convert 'x', KeyError)
        (
            '{"tune_params": {"a": [1, 2]}, "cache": {"1": {"a": "x", "time": 1.0}}}',
            "cache entry '1': a is 'x', which tune_params does not list \\(allowed: 1, 2\\)",
        ),
        (
            '{"tune_params": {"a": ["p", "q"]}, "cache": {"1": {"a": "zz", "time": 1.0}}}',
            "a is 'zz', which tune_params does not list",
        ),
        ('{"tune_params": {"a": []}, "cache": {}}', "tune_params.a lists no value"),
        (
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "time": 1.0}, "1b": {"a": 1, "time": 2.0}}}',
            "cache entries '1' and '1b' hold the same configuration",
        ),
        # impossible times gave scores of -0.545 and 0.000
        (
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "time": -1.0}}}',
            "time must be a positive number",
        ),
        (
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "time": 0}}}',
            "time must be a positive number",
        ),
        (  # an integer past the float range: float()'s OverflowError, a traceback
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "time": 1' + "0" * 400 + "}}}",
            "time must be a positive number",
        ),
        # another objective: kt compares times (a GFLOP/s objective was minimised, its slowest config the optimum)
        (
            '{"tune_params": {"a": [1]}, "objective": "GFLOP/s", "cache": {"1": {"a": 1, "GFLOP/s": 9.0}}}',
            "lacks time \\(kt replay compares times; this cache was tuned for 'GFLOP/s'\\)",
        ),
        # a parameter listed twice: accepted, and the features read the wrong columns
        (
            '{"tune_params_keys": ["a", "a", "b"], "tune_params": {"a": [1, 2], "b": [10, 20]}, '
            '"cache": {"1,10": {"a": 1, "b": 10, "time": 4.0}}}',
            "^[^ ]*bad.json: tune_params_keys names 'a' twice$",
        ),
        # whole numbers past int64: an OverflowError traceback in the features
        (
            '{"tune_params": {"n": [1, 1e19]}, "cache": {"1": {"n": 1, "time": 2.0}}}',
            "tune_params.n holds 1e\\+19, a whole number past 64 bits",
        ),
        (
            f'{{"tune_params": {{"n": [1, {2**70}]}}, "cache": {{"1": {{"n": 1, "time": 2.0}}}}}}',
            "tune_params.n holds 1180591620717411303424, a whole number past 64 bits",
        ),
        # Infinity: a scikit-learn traceback; NaN never equals itself
        (
            '{"tune_params": {"x": [1.0, Infinity]}, "cache": {"1.0": {"x": 1.0, "time": 2.0}}}',
            "tune_params.x holds inf, not a finite number",
        ),
        ('{"tune_params": {"x": [NaN]}, "cache": {}}', "tune_params.x holds nan, not a finite number"),
        # a key named twice in a JSON object: json kept the last without a word (here the dropped one was the
        # optimum)
        (
            '{"tune_params": {"a": [1, 2]}, "cache": {"1": {"a": 1, "time": 0.5}, "2": {"a": 2, "time": 2.0}, '
            '"1": {"a": 1, "time": 9.0}}}',
            "cache holds the key '1' twice; JSON keeps the last without a word",
        ),
        (
            '{"tune_params": {"a": [1]}, "cache": {}, "cache": {"1": {"a": 1, "time": 1.0}}}',
            "names the field 'cache' twice",
        ),
        ('{"tune_params": {"a": [1], "a": [2]}, "cache": {}}', "tune_params names 'a' twice"),
        (
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "time": 1.0, "time": 2.0}}}',
            "names 'time' twice",
        ),
        # a key that names another configuration: the trace wrote it for this one's time
        (
            '{"tune_params": {"a": [1, 2, 3]}, "cache": {"3": {"a": 1, "time": 0.5}, "1": {"a": 3, "time": 3.0}}}',
            "cache entry '3' holds a=1, whose key is '1' \\(its values joined by ',' in tune_params_keys order\\): "
            "the key names another configuration",
        ),
        (
            '{"tune_params_keys": ["a", "b"], "tune_params": {"a": [1, 2], "b": [1, 2]}, '
            '"cache": {"2,1": {"a": 1, "b": 2, "time": 1.0}}}',
            "cache entry '2,1' holds a=1, b=2, whose key is '1,2'",
        ),
        # the same, the key's number spelt otherwise ("2.0" for 2): it passed
        (
            '{"tune_params_keys": ["a", "b"], "tune_params": {"a": [1, 2], "b": [1, 2]}, '
            '"cache": {"2.0,1": {"a": 1, "b": 1, "time": 1.0}}}',
            "cache entry '2.0,1' holds a=1, b=1, whose key is '1,1'",
        ),
        # an integer past Python's 4,300 digits: json's ValueError, a traceback
        (
            '{"tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "time": 1' + "0" * 5000 + "}}}",
            "not a Kernel Tuner cache file \\(JSON\\): Exceeds the limit \\(4300 digits\\)",
        ),
        # a lone surrogate (JSON's \ud800): `--csv` failed to write the trace after the whole replay
        (
            '{"tune_params": {"a": [1, "\\ud800"]}, "cache": {"1": {"a": 1, "time": 1.0}}}',
            "holds text that is no Unicode \\('\\\\ud800', a lone surrogate\\)",
        ),
        # a time written as text: read as a failed configuration
        (
            '{"tune_params": {"a": [1, 2]}, "cache": {"1": {"a": 1, "time": "0.5"}, "2": {"a": 2, "time": 2.0}}}',
            "cache entry '1': time is the text '0.5'; a time is a number \\(ms\\), and text the name of a failure",
        ),
    ],
)
def test_a_broken_cache_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpaceError, match=message):
        load_kernel_tuner(path)


def test_a_cache_nested_too_deeply_is_one_clear_error(tmp_path):
    """JSON arrays nested past Python's recursion limit: a RecursionError traceback, exit 1."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(
        SpaceError, match=r"deep.json: not a Kernel Tuner cache file \(JSON nested too deeply"
    ):
        load_kernel_tuner(path)


def test_a_gzip_cache_damaged_inside_its_compressed_data_is_one_clear_error(tmp_path):
    """Bytes flipped inside the deflate stream raised zlib.error, which the reader did not catch (a traceback,
    exit 1); a cut-off file (EOFError) and a non-gzip one (OSError) were already one line."""
    data = bytearray(write_cache(tmp_path / "bowl.json.gz", gz=True).read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"x" * 64
    path = tmp_path / "damaged.json.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(SpaceError, match="damaged.json.gz: not a Kernel Tuner cache file .JSON.: Error -3"):
        load_kernel_tuner(path)


def test_a_cache_tuned_for_another_objective_replays_its_times(tmp_path):
    path = tmp_path / "gflops.json"
    cache = {str(a): {"a": a, "time": float(a), "GFLOP/s": 100.0 / a} for a in (1, 2, 4)}
    path.write_text(json.dumps({"tune_params": {"a": [1, 2, 4]}, "objective": "GFLOP/s", "cache": cache}))
    space = load_kernel_tuner(path)
    assert list(space.objective) == [1.0, 2.0, 4.0] and space.best == 1.0


@pytest.mark.parametrize(
    "objective,failed",
    [
        (["time"], {"__error__": "CompilationFailedConfig"}),  # Kernel Tuner 1.4 and later
        (["GFLOP/s"], {"__error__": "RuntimeFailedConfig"}),
        ("GFLOP/s", {"GFLOP/s": "CompilationFailedConfig"}),  # before 1.4, a cache tuned for GFLOP/s
        ("time", {"time": 1e20}),  # before 0.4.2: a failure's time was 1e20 ms
    ],
)
def test_a_failed_entry_of_every_kernel_tuner_version_reads_as_a_failure(tmp_path, objective, failed):
    """Kernel Tuner writes a failure in the objective's own field only for a cache tuned for time, up to 1.3.3;
    a cache tuned for GFLOP/s held the failure there and no time, and from 1.4 a failure is `__error__` with no
    time (and `objective` a list): one failed point made kt refuse the whole cache ("lacks time"). Before 0.4.2
    a failure was a time of 1e20, which kt took for a measured time."""
    path = tmp_path / "cache.json"
    cache = {str(a): {"a": a, "time": float(a), "GFLOP/s": 100.0 / a} for a in (1, 2, 4)}
    cache["3"] = {"a": 3, **failed}
    path.write_text(json.dumps({"tune_params": {"a": [1, 2, 3, 4]}, "objective": objective, "cache": cache}))
    space = load_kernel_tuner(path)
    assert [p[0] for p in space.points] == [1, 2, 4, 3] and list(space.failed) == [False, False, False, True]
    assert space.best == 1.0


def test_a_cache_kernel_tuner_left_open_reads_as_kernel_tuner_reads_it(tmp_path):
    """Kernel Tuner appends `"key": {...},` entries and closes the file as a run ends: one interrupted is read by
    dropping the last comma and closing it (kt said it was not a Kernel Tuner cache file)."""
    closed = write_cache(tmp_path / "closed.json")
    data = json.loads(closed.read_text())
    data = {
        **{k: v for k, v in data.items() if k != "cache"},
        "cache": data["cache"],
    }  # last, as Kernel Tuner has it
    text = json.dumps(data, indent=1).rstrip()
    assert text.endswith("}\n}")
    opened = tmp_path / "open.json"
    opened.write_text(text[: -len("}\n}")].rstrip() + ",\n")
    assert load_kernel_tuner(opened).points == load_kernel_tuner(closed).points
    opened.write_text(text[:-1] + "x")  # not closed, but not a cache either: the JSON's own error
    with pytest.raises(SpaceError, match="not a Kernel Tuner cache file"):
        load_kernel_tuner(opened)


def test_config_features_encode_kt_configs_like_any_space():
    x = config_features(
        [{"block_m": 64, "num_warps": 4}, {"block_m": 48, "num_warps": 4}, {"block_m": 128, "num_warps": 8}]
    )
    assert x.shape == (3, 3), "block_m and num_warps, plus block_m's power-of-two divisor (48 is not one)"
    assert list(x[:, 2]) == [6.0, 4.0, 7.0]


def test_a_parameter_numbered_0_to_k_gets_one_indicator_column_per_method(tmp_path):
    params = {"method": [2, 0, 1], "bx": [32, 64], "flag": [0, 1], "tile": [1, 2, 3]}
    space = load_kernel_tuner(write_cache(tmp_path / "methods.json", params, lambda **point: 1.0))
    x = space.features()
    # four encoded parameters, tile's power-of-two divisor (3 is odd), then method 0, 1 and 2's indicators; the
    # flag (two values) and tile (1 to 3, sizes) get none
    assert x.shape == (len(space), 4 + 1 + 3)
    methods = np.array([p[0] for p in space.points])
    for k in range(3):
        assert np.array_equal(x[:, 5 + k], (methods == k).astype(float)), f"column of method {k}"
    assert is_enumeration([0, 1, 2]) and is_enumeration([3.0, 1.0, 0.0, 2.0])
    assert (
        not is_enumeration([0, 1]) and not is_enumeration([1, 2, 3]) and not is_enumeration(["a", "b", "c"])
    )


@pytest.mark.parametrize("strategy", ["guided", "random", "top", "exhaustive"])
def test_a_replay_spends_exactly_its_budget_on_distinct_points_and_counts_failures(bowl, strategy):
    space = load_kernel_tuner(bowl)
    budget = 40
    trace = replay_space(space, strategy, budget, seed=3)
    assert len(trace.measured) == len(set(trace.measured)) == budget
    for index, value in zip(trace.measured, trace.values):
        expected = space.objective[index]
        assert (value is None and np.isnan(expected)) or value == expected


def test_guided_learns_which_configs_fail_and_stops_proposing_them(tmp_path):
    params = {"a": list(range(1, 41)), "b": [1, 2, 3, 4, 5]}

    def fails_above_half(a, b):
        return None if a > 20 else (1 + abs(a - 13)) * (1 + abs(b - 2))

    space = load_kernel_tuner(write_cache(tmp_path / "half.json", params, fails_above_half))
    failed_after_start = []
    for seed in range(4):
        trace = replay_space(space, "guided", 60, seed=seed)
        start = GuidedSearch().plan(60)[0]
        failed_after_start.append(sum(v is None for v in trace.values[start + 10 :]) / (60 - start - 10))
    assert np.mean(failed_after_start) < 0.15, "half the space fails; once learned, few proposals do"


def test_guided_beats_random_on_the_bowl_over_seeds(bowl):
    space = load_kernel_tuner(bowl)
    guided = [space.score(replay_space(space, "guided", 16, seed=s).best_after(16)) for s in range(6)]
    random = [space.score(replay_space(space, "random", 16, seed=s).best_after(16)) for s in range(6)]
    assert np.mean(guided) > np.mean(random) and np.mean(guided) > 0.9


def test_the_parameter_forest_learns_on_top_of_an_offset_and_predicts_failures():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 4, size=(200, 2))
    start = np.log(1 + x[:, 0])  # what a starting model believes
    truth = start + 0.5 * (x[:, 1] > 2)  # where it is wrong: the second parameter
    objective = np.exp(truth)
    objective[x[:, 0] > 3.5] = np.nan  # these fail
    model = ParamForest(seed=0).fit(x[:150], objective[:150], start[:150])
    prediction = model.predict(x[150:], start[150:])
    ran = np.isfinite(objective[150:])
    assert np.abs(np.log(prediction.runtime_s[ran]) - truth[150:][ran]).mean() < 0.1
    assert prediction.fail_prob[~ran].mean() > 0.7 and prediction.fail_prob[ran].mean() < 0.2
    assert "failed" in model.describe()


def test_the_parameter_forest_needs_three_points_that_ran():
    """Failed points do not count: a bug letting fewer than three points that ran through fits trees on one
    or two values, whose spread is no uncertainty the search could explore with."""
    x = np.arange(10, dtype=np.float64).reshape(5, 2)
    two = np.array([1.0, 2.0, np.nan, np.nan, np.nan])
    with pytest.raises(ValueError, match="at least 3 points that ran, got 2"):
        ParamForest(seed=0).fit(x, two)
    three = np.array([1.0, 2.0, 4.0, np.nan, np.nan])
    model = ParamForest(seed=0).fit(x, three)
    assert model.rows == 3 and model.failed_rows == 2


@pytest.mark.parametrize(
    "text, parsed", [("100", (100, None)), ("5%", (None, Fraction(1, 20))), (" 7 ", (7, None))]
)
def test_budgets_are_counts_or_percentages(text, parsed):
    assert parse_budget(text) == parsed


def test_a_percentage_budget_is_rounded_up_exactly(tmp_path):
    """7% as a float, 0.07, times 100 points is 7.000000000000001: its ceiling gave 8 evaluations."""
    line = {"a": list(range(100)), "b": [1]}
    space = write_cache(tmp_path / "line.json", line, lambda a, b: 1.0 + abs(a - 50))
    for percent, evaluations in (("7%", 7), ("14%", 14), ("55%", 55), ("7.5%", 8)):
        assert replay_file(space, "random", percent, repeats=2).evaluations == 2 * evaluations, percent


# int() and float() took these, and the last line echoed them as given
@pytest.mark.parametrize(
    "text",
    # and past Python's 4,300 digits (int() raised) or a float's range (the guided search's divisions did)
    ["0", "-3", "abc", "0%", "150%", "2.5", "2.5e1%", "1_0", "+10", "\uff11\uff10", "1e2", ".5%", "5.%",
     "1" * 4301, "1" + "0" * 309, "0." + "0" * 4300 + "1%"],
)  # fmt: skip
def test_a_bad_budget_names_the_field_and_the_allowed_values(text):
    with pytest.raises(
        KtError, match="budget: .* integer >= 1.* percentage of the space above 0% and at most 100%"
    ):
        parse_budget(text)


@pytest.mark.parametrize(
    "text, label", [("007", 7), (" 25 ", 25), ("025.50%", "25.5%"), ("100.0%", "100%"), ("0.5%", "0.5%")]
)
def test_a_budget_is_written_back_in_one_form(bowl, text, label):
    assert budget_label(text) == label
    if text == "025.50%":
        result = replay_file(bowl, "random", text, repeats=1)
        assert result.budget == "25.5%" and result.line().startswith("random budget 25.5%: ")
        assert {row["budget"] for row in result.rows} == {"25.5%"} and len(result.rows) == math.ceil(
            0.255 * 192
        )


def test_replay_file_repeats_with_consecutive_seeds_and_writes_its_trace(bowl):
    result = replay_file(bowl, "guided", "10%", repeats=3, seed=5)
    assert result.budget == "10%" and len(result.scores) == 3 and result.repeats == 3
    assert {r["seed"] for r in result.rows} == {5, 6, 7}
    assert len(result.rows) == 3 * math.ceil(0.1 * 192)
    assert result.line().startswith("guided budget 10%: mean score ")
    assert result.line().endswith(", over 3 repeats")
    assert 0 < result.p10 <= result.mean <= 1


def test_the_largest_seed_the_cli_takes_runs_every_repeat(bowl):
    """Repeat r's rounds add to the seed; scikit-learn refused a random_state past 2**32 - 1 (a traceback from
    `kt replay --seed 4294967295`, which the option allows)."""
    result = replay_file(bowl, "guided", 12, repeats=2, seed=2**32 - 1)
    assert len(result.scores) == 2 and 0 < result.mean <= 1


def test_kt_replay_prints_the_score_line_last_and_writes_the_trace(bowl, tmp_path):
    trace = tmp_path / "trace.csv"
    done = kt_cli(
        "replay",
        str(bowl),
        "--strategy",
        "guided",
        "--budget",
        "20",
        "--repeats",
        "3",
        "--csv",
        str(trace),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("guided budget 20: mean score ") and last.endswith("over 3 repeats")
    assert "decision time:" in done.stdout
    with trace.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and {r["repeat"] for r in rows} == {"0", "1", "2"}
    best = [float(r["best"]) for r in rows if r["repeat"] == "0" and r["best"]]
    assert best == sorted(best, reverse=True), "the best so far never gets worse"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "budget: '0' is not a count"),
        (["--budget", "5", "--strategy", "annealing"], "Invalid value for '--strategy'"),
        (["--budget", "5", "--csv", "/nonexistent/dir/t.csv"], "csv: the folder"),
        # no model ranks a foreign space: these took the file's first points, the same for every seed
        (["--budget", "5", "--strategy", "top"], "strategy: top goes in a cost model's order"),
        (
            ["--budget", "50%", "--strategy", "exhaustive"],
            "or exhaustive with the whole space (--budget 100% or",
        ),
        # a foreign space reads no device profile: --device was ignored without a word
        (
            ["--budget", "5", "--device", "a100"],
            "device: a Kernel Tuner cache is searched on its own parameters",
        ),
    ],
)
def test_kt_replay_refuses_bad_input_in_one_line_with_exit_2(bowl, args, message):
    done = kt_cli("replay", str(bowl), *args)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_kt_replay_reads_an_upper_case_name_says_when_the_budget_is_the_whole_space_and_counts_one_repeat(
    tmp_path,
):
    space = write_cache(tmp_path / "BOWL.JSON.GZ", gz=True)
    done = kt_cli(
        "replay", str(space), "--strategy", "exhaustive", "--budget", "500", "--repeats", "1", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("space: BOWL (192 configs; ")
    assert lines[-2] == "note: budget 500 covers every point of BOWL (192): a search there measured them all"
    assert lines[-1] == "exhaustive budget 500: mean score 1.000, p10 1.000, over 1 repeat"
    # guided stops early there: "measured them all" was said of it too
    done = kt_cli(
        "replay", str(space), "--strategy", "guided", "--budget", "500", "--repeats", "2", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    note = re.fullmatch(
        r"note: budget 500 covers every point of BOWL \(192\): a search there could measure them all \(guided "
        r"stopped after as few as (\d+), expecting nothing left to beat its best\)",
        done.stdout.strip().splitlines()[-2],
    )
    assert note and int(note[1]) < 192, done.stdout
    whole = replay_file(space, "exhaustive", "100%", repeats=1)
    assert whole.evaluations == 192 and whole.scores == [1.0]
    assert replay_file(space, "exhaustive", "99.9%", repeats=1).evaluations == 192  # rounds up to the whole


def test_kt_replay_refuses_a_file_that_is_no_space(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    done = kt_cli("replay", str(other), "--budget", "5")
    assert done.returncode == 2 and "neither a Kernel Tuner cache" in done.stderr
    done = kt_cli("replay", str(tmp_path / "missing.json"), "--budget", "5")
    assert done.returncode == 2 and "not found" in done.stderr


@pytest.mark.parametrize("budget", ["192", "100%"])
def test_kt_replay_says_guided_stopped_short_at_a_budget_of_the_whole_space(bowl, budget):
    """The note was printed only for a count over the space's size: at a budget of the space (or 100%) guided
    stopped short of it without a word."""
    done = kt_cli(
        "replay", str(bowl), "--strategy", "guided", "--budget", budget, "--repeats", "2", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    note = re.fullmatch(
        rf"note: budget {budget} covers every point of bowl \(192\): a search there could measure them all "
        r"\(guided stopped after as few as (\d+), expecting nothing left to beat its best\)",
        done.stdout.strip().splitlines()[-2],
    )
    assert note and int(note[1]) < 192, done.stdout
    # exhaustive spends the whole space there: nothing to say
    done = kt_cli(
        "replay", str(bowl), "--strategy", "exhaustive", "--budget", budget, "--repeats", "1", "--quiet"
    )
    assert done.returncode == 0 and "note:" not in done.stdout, done.stdout


def test_a_trace_names_each_point_by_its_own_cache_key(tmp_path):
    """The trace's config joined a point's values in tune_params order; these keys join them in the records'
    order (y, x), so "2,1" named the point the file keys "1,2", with another point's time."""
    path = tmp_path / "order.json"
    cache = {f"{y},{x}": {"y": y, "x": x, "time": float(1 + x + 3 * y)} for x in (1, 2) for y in (1, 2)}
    cache["first"] = {"y": 3, "x": 1, "time": 20.0}  # a key that reads as no configuration: a name, kept
    path.write_text(json.dumps({"tune_params": {"x": [1, 2], "y": [1, 2, 3]}, "cache": cache}))
    trace = tmp_path / "trace.csv"
    result = replay_file(path, "exhaustive", "100%", repeats=1)
    assert {row["config"]: row["value"] for row in result.rows} == {
        key: record["time"] for key, record in cache.items()
    }
    done = kt_cli(
        "replay", str(path), "--strategy", "random", "--budget", "3", "--repeats", "1", "--csv", str(trace)
    )
    assert done.returncode == 0, done.stderr
    with trace.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(float(r["value"]) == cache[r["config"]]["time"] for r in rows)


def test_a_space_that_is_no_regular_file_is_refused_not_read_forever(tmp_path):
    """A pipe named .json was opened and read, and kt replay waited for a writer forever."""
    fifo = tmp_path / "space.json"
    os.mkfifo(fifo)
    with pytest.raises(SpaceError, match=r"^space: '.*space.json' is not a regular file \(a device, a pipe"):
        check_space_file(fifo)
    with pytest.raises(SpaceError, match="is not a regular file"):
        load_kernel_tuner(fifo)
    done = kt_cli("replay", str(fifo), "--budget", "5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a regular file" in done.stderr


def test_a_kt_database_whose_sweeps_all_failed_says_so(monkeypatch, tmp_path):
    """Problems swept with every config failed were said to be no exhaustive sweep (a problem with 20 or more
    configs measured), which they are."""
    import kt.autotune.replay as replay_module
    from kt.autotune.database import CSV_COLUMNS
    from kt.ir.problems import GemmProblem

    rows = []
    for m, statuses in ((64, ["compile_error"] * 3), (128, ["compile_error", "timeout", "timeout"])):
        problem = GemmProblem(m, 64, 32, dtype="float16")
        for block, status in zip((16, 32, 64), statuses):
            rows.append(
                {
                    "runner": "cuda",
                    "family": "gemm",
                    "problem": problem.to_dict(),
                    "problem_key": problem.key(),
                    "config": {"block_m": block},
                    "config_key": f"bm{block}",
                    "status": status,
                    "runtime_ms": None,
                }
            )
    monkeypatch.setattr(replay_module, "read_rows", lambda path, field="data": rows)
    path = tmp_path / "sweeps.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(
        KtError,
        match=r"^space: '.*sweeps.csv' holds 2 problems swept \(3 or more GEMM configs measured on a GPU\) but "
        r"none of them has a config that passed \(4 compile_error, 2 timeout\)",
    ):
        replay_file(path, "random", 2, min_configs=3)
    with pytest.raises(KtError, match="holds no exhaustive sweep"):  # too few configs: no sweep indeed
        replay_file(path, "random", 2, min_configs=4)


@pytest.mark.parametrize(
    "signal_name, code, line",
    [("SIGINT", 130, "kt: interrupted\n"), ("SIGTERM", 143, "kt: terminated (SIGTERM)\n")],
)
def test_an_interrupted_replay_says_one_line_and_no_blank_one(bowl, signal_name, code, line):
    """click wrote a line break (to end a terminal's ^C echo) before kt's line: off a terminal, and after
    SIGTERM, a blank line. Here the signal arrives while the replay runs."""
    script = (
        "import os, signal, sys, time\n"
        # a process started with SIGINT ignored (nohup, `cmd &` in a script) would drop the signal
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import kt.autotune.replay as replay\n"
        "def stop(*args, **kwargs):\n"
        f"    os.kill(os.getpid(), signal.{signal_name})\n"
        "    time.sleep(30)\n"
        "replay.replay_file = stop\n"
        "from kt.cli import main\n"
        f"sys.argv = ['kt', 'replay', {str(bowl)!r}, '--budget', '5', '--quiet']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == code and done.stderr == line, done.stderr[-2000:]


@pytest.mark.skipif(
    not (DATA / "convolution_A100.json.gz").is_file(), reason=f"no Kernel Tuner spaces at {DATA}"
)
def test_on_a_real_brute_forced_gpu_space_guided_beats_random_over_seeds():
    """convolution_A100: 4,362 configs timed on an A100, 161 of which failed on the GPU."""
    space = load_kernel_tuner(DATA / "convolution_A100.json.gz")
    x = space.features()
    guided = [
        space.score(replay_space(space, "guided", 40, seed=s, features=x).best_after(40)) for s in range(5)
    ]
    random = [
        space.score(replay_space(space, "random", 40, seed=s, features=x).best_after(40)) for s in range(5)
    ]
    assert np.mean(guided) > np.mean(random) + 0.05, (guided, random)


def test_sweeps_that_differ_only_in_layout_precision_or_target_have_their_own_names():
    """Problems that differ in layout were one name in a replay's trace, so (space, repeat, evaluation) named
    several evaluations at once and a mean recomputed from the trace came out wrong."""
    from kt.autotune.replay import Sweep, _unique
    from kt.ir.problems import GemmProblem

    def sweep(target=None, **fields):
        problem = GemmProblem(64, 32, 16, **fields)
        return Sweep(problem.key(), [problem.to_record()], np.ones(1), target=target)

    labels = [
        sweep(dtype="float16", b_layout="col").label,
        sweep(dtype="float16").label,
        sweep(dtype="float32", precision="tf32").label,
        sweep(target="h100", dtype="float16").label,
    ]
    assert labels == [
        "64x32x16 float16 a:row b:col",
        "64x32x16 float16 a:row b:row",
        "64x32x16 float32 tf32 a:row b:row",
        "64x32x16 float16 a:row b:row on h100",
    ]
    assert _unique(["a", "b", "a", "a"]) == ["a", "b", "a #2", "a #3"]


def test_a_repeat_whose_budget_found_nothing_that_ran_scores_zero(tmp_path):
    """Most of this space fails: a random repeat of budget 1 that lands on a failure found no kernel, and scores
    0 (not 1, as if it had found the optimum), in the mean and in its trace row alike."""
    params = {"a": list(range(1, 21))}
    space = write_cache(tmp_path / "mostly_failing.json", params, lambda a: 1.0 if a == 1 else None)
    result = replay_file(space, "random", 1, repeats=12, seed=0)
    assert len(result.scores) == len(result.rows) == 12
    for score, row in zip(result.scores, result.rows):
        assert score == row["score"] == (1.0 if row["value"] == 1.0 else 0.0), row
    assert 0.0 in result.scores and result.mean < 0.5


def test_a_kernel_tuner_cache_named_db_is_told_to_be_named_json(tmp_path):
    """kt replay said of a Kernel Tuner cache named .db that it is 'a Kernel Tuner cache, which `kt replay`
    replays': the command it was running. It reads caches by their name."""
    cache = write_cache(tmp_path / "space.json")
    renamed = cache.rename(tmp_path / "space.db")
    done = kt_cli("replay", str(renamed), "--budget", "5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (
        "it is a Kernel Tuner cache: name it .json (or .json.gz, gzipped) for kt replay to read it"
        in done.stderr
    )
