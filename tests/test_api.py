"""kt's public API: build, reference, random weights, plan and space, on specs given as files, dicts or OpSpecs."""

import time

import pytest
import torch
from conftest import rel_err

import kt

SPEC = {
    "op": "dense",
    "name": "api",
    "dtype": "float32",
    "shape": {"m": 33, "n": 21, "k": 40, "batch": 2},
    "layout": {"b": "col"},
    "tune": {"budget": 5},
}


def test_build_without_a_config_uses_the_top_ranked_legal_one():
    kernel = kt.build(SPEC)
    plan = kt.plan(SPEC)
    assert kernel.config == plan.config(plan.ranked[0])
    a, b = kt.random_args(SPEC, seed=2)
    assert rel_err(kernel(a, b), torch.matmul(a.double(), b.double())) < 1e-5
    assert "BLOCK_M = " in kernel.source and not kernel.measured


def test_build_takes_a_config_mapping_and_names_a_bad_one():
    kernel = kt.build(
        SPEC,
        {
            "block_m": 16,
            "block_n": 16,
            "block_k": 16,
            "group_m": 1,
            "num_warps": 2,
            "num_stages": 2,
            "split_k": 2,
        },
    )
    assert kernel.config.key() == "m16n16k16g1w2s2x2"
    with pytest.raises(kt.SpecError, match="config: block_m: 48 is not allowed"):
        kt.build(SPEC, {"block_m": 48, "block_n": 16, "block_k": 16})


@pytest.mark.parametrize(
    "config, message",
    [
        # 16.0 == 16 and True == 1 passed the allowed-values check: a float tile failed inside Triton
        (
            {"block_m": 16.0, "block_n": 16, "block_k": 16},
            r"^config: block_m: must be an integer, got 16\.0$",
        ),
        (
            {"block_m": 16, "block_n": 16, "block_k": 16, "split_k": True},
            "split_k: must be an integer, got True",
        ),
        # what tune.configs refuses was built without a word
        (
            {"block_m": 64, "block_n": 256, "block_k": 128, "num_stages": 5},
            # by its key, as kt space names it (it listed every field: BLOCK_M=64 BLOCK_N=256 ...)
            r"^config: m64n256k128g8w4s5x1 cannot run gemm\[.*\] on h100: shared memory over "
            r"227 KiB$",
        ),
        (5, r"^config: 5 is not a config; allowed: a GemmConfig, a mapping of its fields, or 'pytorch'$"),
    ],
    ids=["float", "bool", "over-shared-memory", "int"],
)
def test_build_checks_a_written_config_as_tune_configs_does(config, message):
    with pytest.raises(kt.SpecError, match=message):
        kt.build(SPEC, config, device="h100")
    monarch = {"op": "monarch", "dtype": "float32", "shape": {"batch": 16, "n": 64, "nblocks": 4}}
    with pytest.raises(kt.SpecError, match="allowed: a BlockGemmConfig, a mapping"):
        kt.build(monarch, kt.build(SPEC).config)  # another family's config


def test_reference_is_plain_torch_and_random_weights_follow_the_layout():
    (b,) = kt.random_weights(SPEC, seed=1)
    assert b.shape == (2, 40, 21) and b.stride()[-2:] == (1, 40)
    a, b2 = kt.random_args(SPEC, seed=1)
    assert torch.equal(b, b2)
    assert torch.equal(kt.reference(SPEC)(a, b), torch.matmul(a, b))


def test_specs_can_be_paths_dicts_or_opspecs(tmp_path):
    path = tmp_path / "op.yaml"
    path.write_text("op: dense\nshape: {m: 8, n: 8, k: 8}\n")
    from_file = kt.as_spec(path)
    assert kt.as_spec(from_file) is from_file
    assert kt.as_spec(from_file.to_dict()) == from_file
    with pytest.raises(kt.SpecError, match="expected an OpSpec, a mapping or a path"):
        kt.as_spec(42)


def test_plan_and_space_agree():
    plan = kt.plan(SPEC, budget=16, seed=3, measures_time=False)
    space = kt.space(SPEC)
    assert plan.space.legal == space.legal
    # without timing: the model's best, one config per program (group_m orders no tiles on part of this grid)
    assert plan.strategy == "top" and plan.chosen == plan.ranked_programs[:16] != plan.ranked[:16]


def test_guided_plan_first_round_explores_by_seed():
    plan = kt.plan(SPEC, budget=64, seed=3, measures_time=True)
    assert plan.strategy == "guided" and plan.model == "analytic"
    assert len(plan.chosen) == 8, "a first round of 8 (a tenth of the budget, 8 to 10)"
    assert plan.chosen[:4] == plan.ranked[:4], "half the round goes to the best ranked"
    assert not set(plan.chosen[4:]) & set(plan.ranked[:4]), "the rest explores beyond them"
    assert kt.plan(SPEC, budget=64, seed=4, measures_time=True).chosen[4:] != plan.chosen[4:], (
        "the analytic model has no spread: exploration is random and follows the seed"
    )


def test_build_checks_a_config_object_on_its_axes_too():
    """Only a mapping was checked: GemmConfig(-16, 16, 16) built a kernel whose results were 1e34 off, group 0
    gave nan or a ZeroDivisionError, a block of 17 an interpreter error."""
    import dataclasses

    from kt.codegen.gemm import GemmConfig

    for config, words in [
        (GemmConfig(-16, 16, 16), "block_m: -16 is not allowed; allowed: 16, 32"),
        (GemmConfig(16, 16, 16, group_m=0), "group_m: 0 is not allowed; allowed: 1, 4, 8"),
        (GemmConfig(17, 16, 16), "block_m: 17 is not allowed"),
        (GemmConfig("16", 16, 16), "block_m: must be an integer, got '16'"),
    ]:
        with pytest.raises(kt.SpecError, match=f"^config: {words}"):
            kt.build(SPEC, config)
    monarch = {"op": "monarch", "dtype": "float32", "shape": {"batch": 16, "n": 64, "nblocks": 4}}
    legal = kt.space(monarch).legal[0]
    with pytest.raises(kt.SpecError, match="config: group: 0 is not allowed"):
        kt.build(monarch, dataclasses.replace(legal, group=0))
    assert kt.build(monarch, legal).config == legal
    # the fused kernel needs power-of-two blocks of at least 16: a config object asking for it on other blocks
    # built and failed on its first call in Triton ("arange's range must be a power of 2")
    odd = {"op": "monarch", "dtype": "float32", "shape": {"batch": 16, "w1": [2, 6, 3], "w2": [4, 5, 3]}}
    with pytest.raises(
        kt.SpecError, match=r"^config: structure fused=1 is not offered .*; allowed: fused=0$"
    ):
        kt.build(odd, dataclasses.replace(kt.space(odd).legal[0], fused=1))
    np = pytest.importorskip("numpy")
    built = kt.build(
        SPEC, {"block_m": np.int64(16), "block_n": 16, "block_k": 16}
    )  # was "must be an integer"
    assert built.config.block_m == 16 and type(built.config.block_m) is int


@pytest.mark.parametrize(
    "options, words",
    [
        ({"seed": "s"}, "seed: must be an integer from 0 to 4294967295, got 's'"),  # stored as every crash
        ({"seed": -1}, "seed: must be an integer from 0"),
        ({"timeout_s": float("nan")}, "timeout_s: must be a number of seconds in \\(0, 86400\\], got nan"),
        ({"timeout_s": 0}, "timeout_s: must be a number of seconds"),  # stored every candidate as timed out
        ({"timeout_s": float("inf")}, "timeout_s: "),  # an OverflowError deep in the pool
        ({"workers": 0}, "workers: must be an integer from 1 to 64, got 0"),  # silently the default
        ({"workers": "2"}, "workers: must be an integer"),
        ({"deadline": "soon"}, "deadline: must be a time.monotonic\\(\\) value"),
        ({"deadline": 0.0}, "deadline: 0 has passed .* it is a time.monotonic\\(\\) value"),
        ({"model": 3}, "model: expected a model file's path, 'analytic' or a cost model, got int"),
        ({"db": 5}, "db: expected a database file's path, got int"),
        ({"budget": 10**9}, "budget: must be an integer from 1 to 100000"),
        # an AttributeError deep in kt (a Ray address of 3, a runner of "x")
        ({"ray": 3}, "ray: must be 'local', 'auto' or an address \\(text\\), got int"),
        ({"runner": "x"}, "runner: must be a kt.autotune.runners.Runner"),
        (
            {"timing": 5},
            "timing: must be a kt.autotune.timing.TimingSettings or None, got int",
        ),  # after workers
        ({"device": ""}, None),  # "" was the spec's device (kt.resolve_profile refuses it)
    ],
)
def test_tune_refuses_a_bad_option_before_anything_is_stored(tmp_path, options, words):
    db = tmp_path / "t.db"
    error = (kt.SpecError, "") if words else (kt.DeviceError, "device: '' is empty")
    with pytest.raises(error[0], match=words or error[1]):
        kt.tune(SPEC, **{"db": db, "progress": False, "budget": 1, **options})
    assert not db.exists() or options.get("db") is not None  # nothing written


def test_api_arguments_taken_by_truthiness_or_passed_over_are_refused(tmp_path):
    """check_files="no" was true; source=5 hid the spec's own error behind a TypeError; device="" was the
    spec's device; compile_check with a config was passed over; fit and eval took any seed (-1 as 2**32 - 1,
    "x" failing inside the forest) and any number of folds; saving to "." raised pathlib's ValueError."""
    with pytest.raises(kt.SpecError, match="check_files: must be True or False, got 'no'"):
        kt.parse_spec(SPEC, check_files="no")
    with pytest.raises(kt.SpecError, match="source: must be text"):
        kt.parse_spec({"op": "dense"}, source=5)
    for call in (
        lambda: kt.plan(SPEC, device=""),
        lambda: kt.build(SPEC, device=""),
        lambda: kt.space(SPEC, ""),
    ):
        with pytest.raises(kt.DeviceError, match="device: '' is empty"):
            call()
    with pytest.raises(
        kt.SpecError, match="compile_check: checks the ranking's configs when no config is given"
    ):
        kt.build(SPEC, {"block_m": 16, "block_n": 16, "block_k": 16}, compile_check=True)
    data = tmp_path / "none.csv"
    with pytest.raises(kt.SpecError, match="seed: must be an integer from 0"):
        kt.fit_model(data, tmp_path / "m.skops", seed=-1)
    with pytest.raises(kt.SpecError, match="seed: must be an integer from 0"):
        kt.evaluate_model(data, seed="x")
    with pytest.raises(kt.ModelError, match="folds: must be an integer from 2 to 100, got 1000000000"):
        kt.evaluate_model(data, folds=10**9)
    # a plain KtError, not the ValueError the other arguments' are; pathlib's TypeError naming no argument
    with pytest.raises(ValueError, match="strategy: 'nosuch' is not supported; allowed: guided"):
        kt.plan(SPEC, strategy="nosuch")
    for call, name in (
        (lambda: kt.fit_model(None, tmp_path / "m.skops"), "data"),
        (lambda: kt.fit_model(data, None), "out"),
        (lambda: kt.evaluate_model(None), "data"),
        (lambda: kt.inspect(None), "path"),
        (lambda: kt.inspect(data, db=5), "db"),
    ):
        with pytest.raises(kt.SpecError, match=f"^{name}: expected a path"):
            call()
    # ValueErrors too (a bare KtError escaped `except ValueError`): another suffix, or the data file itself
    data.write_text("id\n")
    for out, words in ((tmp_path / "m.txt", "must end in .skops"), (data, "is --data itself")):
        with pytest.raises(ValueError, match=f"^out: .*{words}"):
            kt.fit_model(data, out)
    result = kt.tune(SPEC, db=tmp_path / "t.db", progress=False, budget=1)
    for where in (".", "/"):
        with pytest.raises(kt.ArtifactError, match=f"'{where}' names no artifact folder of its own"):
            result.save(where)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"concurrent": "x"}, "concurrent: must be an integer from 1 to 64"),  # a TypeError inside
        ({"on_done": 3}, "on_done: must be a function or None, got int"),  # raised after the first op's tune
    ],
)
def test_tune_of_several_ops_refuses_a_bad_option_before_any_is_tuned(tmp_path, options, words):
    db = tmp_path / "t.db"
    with pytest.raises(kt.SpecError, match=words):
        kt.tune([SPEC, SPEC], **{"db": db, "progress": False, "budget": 1, **options})
    assert not db.exists()


def test_tune_refuses_a_deadline_of_now_it_leaves_no_time(tmp_path):
    """The deadline check's boundary: a deadline that is the current time (or a moment ago) has passed, not
    only one long past."""
    db = tmp_path / "t.db"
    with pytest.raises(kt.SpecError, match="deadline: .* has passed"):
        kt.tune(SPEC, db=db, progress=False, budget=1, deadline=time.monotonic())
    assert not db.exists()


def test_a_deadline_that_passes_before_anything_is_checked_says_so(tmp_path):
    """A tune whose deadline passed before the first config came back said "none of the 0 candidates passed
    (nothing measured)", as if every config had failed (the H200's `kt bench` at 3 minutes, 2026-12-04, whose
    last quick tunes started with a few seconds left). It names the deadline."""
    db = tmp_path / "t.db"
    with pytest.raises(
        kt.KtError, match=r"^deadline: it passed before any of the \d+ legal configs was checked"
    ):
        kt.tune(SPEC, db=db, progress=False, budget=1, deadline=time.monotonic() + 0.05)


def test_plan_and_random_args_name_a_bad_seed_or_device():
    with pytest.raises(kt.SpecError, match="seed: must be an integer"):
        kt.plan(SPEC, seed="x")  # numpy's SeedSequence TypeError
    with pytest.raises(kt.SpecError, match="model: expected a model file's path"):
        kt.plan(SPEC, model=5)
    # read as --model reads them: "" was the folder '.', and ANALYTIC a missing file naming no other choice
    with pytest.raises(kt.ModelError, match=r"^model: an empty path; give a model file .*, or analytic$"):
        kt.plan(SPEC, model="")
    with pytest.raises(
        kt.ModelError, match=r"^model: 'none.skops' not found; give a model file .*, or analytic$"
    ):
        kt.plan(SPEC, model="none.skops")
    assert kt.plan(SPEC, model="ANALYTIC", budget=1).model == "analytic"
    with pytest.raises(kt.SpecError, match="seed: must be an integer"):
        kt.random_args(SPEC, seed=1.5)
    with pytest.raises(kt.KtError, match="device: 'bogus' is not a torch device"):
        kt.random_args(SPEC, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(kt.DeviceError, match="device: cuda asked for, but this machine has no CUDA GPU"):
            kt.random_weights(SPEC, device="cuda")
    with pytest.raises(kt.ArtifactError, match="expected an artifact folder's path .* got NoneType"):
        kt.load(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default without a GPU")
def test_plan_without_a_gpu_plans_what_a_tune_here_would_do():
    """kt.plan's default is whether this machine can time: without a GPU a tune checks the model's top
    configs, and a plan that assumed timing showed a guided first round no tune here would measure."""
    plan = kt.plan(SPEC, budget=16, seed=3)
    assert plan.strategy == "top" and plan.chosen == plan.ranked_programs[:16]


def test_api_options_refuse_meta_devices_non_booleans_and_an_empty_objective(tmp_path):
    """From an API fuzz: random_args(device="meta") failed in torch's words; measures_time="no" and
    retry_failed="no" counted as true by their truthiness; objective="" fell back to the spec's."""
    with pytest.raises(kt.KtError, match="^device: meta is not supported; allowed: cpu, cuda, cuda:N$"):
        kt.random_args(SPEC, device="meta")  # (a plain ValueError passed `except kt.KtError`)
    with pytest.raises(kt.SpecError, match="measures_time: must be True or False, got 'no' .str."):
        kt.plan(SPEC, measures_time="no")
    with pytest.raises(kt.SpecError, match="objective: '' is not supported"):
        kt.plan(SPEC, objective="")
    with pytest.raises(kt.SpecError, match="objective: '' is not supported"):
        kt.tune(SPEC, db=tmp_path / "t.db", progress=False, budget=1, objective="")
    for name in ("retry_failed", "baseline", "progress"):
        with pytest.raises(kt.SpecError, match=f"{name}: must be True or False, got 1 .int."):
            kt.tune(SPEC, db=tmp_path / "t.db", budget=1, **{"progress": False, name: 1})
    assert not (tmp_path / "t.db").exists()


def test_result_objects_compare_print_short_and_take_checked_arguments(tmp_path):
    """From a pass over the API's results: Plan == Plan raised numpy's "truth value of an array is ambiguous";
    a collect Session printed 33 kB and an InspectResult 134 kB; kt.collect passed an unknown or doubled
    keyword to run_session ("got multiple values for keyword argument 'strategy'"); load(verify="no") verified,
    build(compile_check=5) was taken, table(top=-1) dropped the last row; kt.tune(3) said "expected an OpSpec"
    without naming the argument."""
    plan = kt.plan(SPEC, budget=2)
    assert plan == plan and (plan == kt.plan(SPEC, budget=2)) is False and plan in [plan]
    assert len(repr(plan.prediction)) < 100 and repr(plan.prediction).startswith(
        f"Prediction({len(plan.prediction)} configs"
    )
    session = kt.collect(SPEC, sample=1, backend="interpret", db=tmp_path / "c.db", progress=False)
    assert repr(session).startswith("Session(") and "1 row, 1 new, database " in repr(session)
    assert len(repr(session)) < 300
    with pytest.raises(
        TypeError, match=r"^kt.collect\(\) got an unexpected keyword argument 'timeout'; beside sample"
    ):
        kt.collect(SPEC, sample=1, backend="interpret", timeout=5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'strategy'"):
        kt.collect(SPEC, sample=1, backend="interpret", strategy="top")
    result = kt.tune(SPEC, budget=1, db=tmp_path / "t.db", progress=False)
    for top in (-1, 0, "2"):
        with pytest.raises(kt.SpecError, match="^top: must be an integer from 1"):
            result.table(top)
    artifact = result.save(tmp_path / "art")
    with pytest.raises(kt.SpecError, match="^verify: must be True or False, got 'no'"):
        kt.load(artifact, verify="no")
    with pytest.raises(kt.SpecError, match="^compile_check: must be True or False, got 5"):
        kt.build(SPEC, compile_check=5)
    with pytest.raises(kt.SpecError, match="^spec: expected an OpSpec, a mapping or a path"):
        kt.tune(3)


def test_a_plan_says_what_its_ranking_cannot_apply_without_predicted_power():
    """kt predict noted that energy and a power cap apply only to measured configs; kt.plan said nothing, and a
    tune's first line named the objective only."""
    plan = kt.plan(SPEC, budget=2, objective="energy", power_cap_w=300, model="analytic")
    assert plan.unapplied == (
        "the ranking is by predicted time; energy and the power cap apply only to measured configs"
    )
    assert kt.plan(SPEC, budget=2, power_cap_w=300, model="analytic").unapplied.endswith(
        "; the power cap applies only to measured configs"
    )
    assert kt.plan(SPEC, budget=2, model="analytic").unapplied is None


def test_plan_names_an_unsupported_objective_as_a_spec_error():
    """An unknown objective is the caller's mistake in one line (SpecError), as op.yaml's tune.objective."""
    with pytest.raises(kt.SpecError, match="objective: 'speed' is not supported; allowed: time, energy, edp"):
        kt.plan(SPEC, objective="speed")


def test_a_built_kernel_is_generated_and_unmeasured_and_says_its_config():
    """kt.build's kernel is a generated one: `pytorch` false, `measured` false, and its repr names the config
    (a `pytorch` test that read any kernel but a "generated" one as PyTorch's made repr fail on it)."""
    kernel = kt.build(SPEC)
    assert not kernel.pytorch and not kernel.measured
    assert kernel.config.key() in repr(kernel) and "PyTorch" not in repr(kernel)
    baseline = kt.build(SPEC, "pytorch")
    assert baseline.pytorch and not baseline.measured and "PyTorch: " in repr(baseline)


def test_collect_checks_its_sample_and_never_runs_pytorchs_path(tmp_path):
    """kt.collect gathers the cost model's data: the sampled configs of the space, and not candidate zero (a
    collect that ran PyTorch's path spent a worker's time on a row no model trains on)."""
    from kt.autotune.database import Database

    spec = {"op": "dense", "name": "sweep", "dtype": "float32", "shape": {"m": 20, "n": 16, "k": 24}}
    kt.collect(spec, sample=2, backend="interpret", db=tmp_path / "c.db", progress=False)
    with Database(tmp_path / "c.db", readonly=True) as db:
        rows = db.find()
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), [r["message"] for r in rows]
    assert "pytorch" not in {r["config_key"] for r in rows}
    # named as the argument is (it said `budget:`, which collect has not), with tune.budget's range
    with pytest.raises(kt.SpecError, match="^sample: must be an integer from 1 to 100000, got 100001$"):
        kt.collect(spec, sample=100_001, backend="interpret", db=tmp_path / "c.db", progress=False)


def test_an_unknown_keyword_of_kt_tune_is_named_with_the_ones_it_takes():
    """kt.tune(spec, timeout=0.5) raised "run_session() got an unexpected keyword argument 'timeout'": an
    internal function's name, and not the option's (timeout_s)."""
    with pytest.raises(
        TypeError, match=r"^kt.tune\(\) got an unexpected keyword argument 'timeout'; .*timeout_s"
    ):
        kt.tune(SPEC, timeout=0.5)
    with pytest.raises(TypeError, match=r"'foo'; .* concurrent, .*on_done"):
        kt.tune([SPEC], foo=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusals of a machine without a GPU")
def test_the_python_api_names_its_arguments_where_the_command_line_names_its_flags(tmp_path):
    """Errors through kt.tune told a Python caller to "use --backend interpret" or "drop --gpus": flags of a
    command nobody ran. Each names the keyword argument there, and the flag on kt's command line."""
    import subprocess
    import sys

    from kt.errors import DeviceError

    with pytest.raises(DeviceError, match=r"^backend: cuda needs a CUDA GPU .*; use backend='interpret'$"):
        kt.tune(SPEC, backend="cuda", db=tmp_path / "t.db")
    with pytest.raises(DeviceError, match=r"^gpus: with ray, Ray chooses each GPU actor's GPU; drop gpus$"):
        kt.tune(SPEC, gpus=[0], ray="local", db=tmp_path / "t.db")
    with pytest.raises(
        DeviceError, match=r"^gpus: the interpret backend measures on no GPU; gpus needs backend='cuda'$"
    ):
        kt.tune(SPEC, gpus=[0], backend="interpret", db=tmp_path / "t.db")
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: w\ndtype: float32\nshape: {m: 32, n: 32, k: 32}\n")
    for flags, says in [
        (["--backend", "cuda"], "kt: error: backend: cuda needs a CUDA GPU and this machine has none; use "
         "--backend interpret"),
        (["--gpus", "0", "--backend", "interpret"], "kt: error: --gpus: the interpret backend measures on no "
         "GPU; --gpus needs --backend cuda"),
    ]:  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "kt", "tune", str(spec), "--db", str(tmp_path / "t.db"), *flags],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.strip() == says, done.stderr


def test_api_arguments_of_the_wrong_form_are_named_in_one_line(tmp_path):
    """A config mapping missing fields gave the dataclass's "__init__() missing 2 required positional arguments",
    a list as strategy "unhashable type: 'list'", kt.load(None) named no argument, and kt.collect without a GPU
    spoke of backend="interpret" and --backend interpret at once."""
    with pytest.raises(
        kt.SpecError, match=r"^config: missing block_n, block_k \(a gemm config has block_m, "
    ):
        kt.build(SPEC, config={"block_m": 16})
    with pytest.raises(kt.SpecError, match=r"^strategy: \['guided'\] is not supported; allowed: guided, "):
        kt.plan(SPEC, strategy=["guided"])
    with pytest.raises(kt.ArtifactError, match=r"^path: expected an artifact folder's path"):
        kt.load(None)
    if not torch.cuda.is_available():
        with pytest.raises(kt.DeviceError, match=r"has none \(backend='interpret' checks correctness only"):
            kt.collect(SPEC, db=tmp_path / "t.db")


def test_an_opspec_made_otherwise_than_by_parse_spec_is_checked_and_replace_renames_a_default_name(tmp_path):
    """An audit of the API: an OpSpec made with dataclasses.replace (or OpSpec(...)) skipped every check (m=-4
    built a kernel, float64 was a KeyError deep in kt); `spec.replace(shape=...)` kept the old shape's default
    name; a numpy array as a config, and a model or device of another type in kt.evaluate_model and kt.inspect,
    raised numpy's, pathlib's or an AttributeError."""
    import dataclasses

    import numpy as np

    from kt.spec import DenseShape

    spec = kt.parse_spec({"op": "dense", "shape": {"m": 16, "n": 16, "k": 16}})
    with pytest.raises(kt.SpecError, match="shape.m: must be an integer from 1 to"):
        kt.build(dataclasses.replace(spec, shape=DenseShape(-4, 16, 16)))
    with pytest.raises(kt.SpecError, match="dtype: 'float64' .str. is not supported"):
        kt.space(dataclasses.replace(spec, dtype="float64"))
    assert kt.as_spec(spec) is spec
    # a tune.space set in code as a mapping (a bare ValueError as it was checked again)
    mapped = dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, space={"block_m": [16]}))
    assert {c.block_m for c in kt.space(mapped).legal} == {16}
    renamed = spec.replace(shape={"m": 48, "n": 32, "k": 16}, dtype="float32")
    assert renamed.name == "dense_48x32x16_float32"
    assert spec.replace(name="mine").replace(dtype="float32").name == "mine"  # a name given is kept
    with pytest.raises(kt.SpecError, match="config"):
        kt.build(spec, np.array([16, 16, 16]))
    data = tmp_path / "none.csv"
    data.write_text("")
    for call in (lambda: kt.evaluate_model(data, model=3), lambda: kt.inspect(data, model=3)):
        with pytest.raises(kt.SpecError, match="^model: expected a path .a str or os.PathLike., got int$"):
            call()
    with pytest.raises(kt.DeviceError, match="got int"):
        kt.inspect(data, device=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the target of a tune that names none, without a GPU")
def test_device_auto_names_no_target_so_a_model_files_device_is_the_target():
    """`--device auto` is the default, yet it counted as naming a target: without a GPU it resolved to h100 and
    refused the A100 model that the same command took without the flag."""
    from pathlib import Path

    import kt.costmodel.models as models

    a100 = Path(models.__file__).parent / "a100.skops"
    spec = {"op": "dense", "shape": {"m": 32, "n": 32, "k": 32}}
    assert kt.plan(spec, model=a100, budget=1).space.device.name == "a100"
    for device in ("auto", "AUTO"):
        assert kt.plan(spec, model=a100, budget=1, device=device).space.device.name == "a100"
