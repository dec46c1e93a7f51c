"""The search space in the user's hands (issue 17): op.yaml's `tune.space` restricts axes, `tune.configs` lists
exactly the configs to tune; both checked against the op's family, with one clear error per mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import kt
from kt.codegen.restrict import NOT_LISTED, OUTSIDE_SPACE
from kt.errors import SpecError


def spec_with(tune: dict, op: dict | None = None):
    base = op or {"op": "dense", "dtype": "float16", "shape": {"m": 512, "n": 512, "k": 512}}
    return kt.parse_spec({"name": "user", **base, "tune": tune})


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MONARCH = {"op": "monarch", "dtype": "float16", "shape": {"batch": 64, "n": 256, "nblocks": 16}}
MONARCH_CONFIG = {"block_b": 16, "block_n": 16, "block_k": 16, "group": 1, "num_warps": 4, "num_stages": 2}
LISTED = [
    {"block_m": 128, "block_n": 128, "block_k": 64, "num_warps": 8, "num_stages": 3},
    {"block_m": 64, "block_n": 64, "block_k": 32},  # group_m, warps, stages, split_k: the config's defaults
]


def test_space_keeps_only_the_given_values_and_counts_the_rest():
    full = kt.space(spec_with({}))
    restricted = kt.space(spec_with({"space": {"block_m": [64, 128], "num_stages": [3, 4], "block_k": 64}}))
    assert 0 < len(restricted.legal) < len(full.legal)
    assert {c.block_m for c in restricted.legal} == {64, 128}
    assert {c.num_stages for c in restricted.legal} == {3, 4} and {c.block_k for c in restricted.legal} == {
        64
    }
    expected = [
        c for c in full.legal if c.block_m in (64, 128) and c.num_stages in (3, 4) and c.block_k == 64
    ]
    assert list(restricted.legal) == expected
    assert restricted.dropped[OUTSIDE_SPACE] == len(full.legal) - len(expected)
    assert restricted.total == full.total


def test_space_may_restrict_a_structure_choice():
    restricted = kt.space(spec_with({"space": {"fused": [0], "group": [1]}}, MONARCH))
    assert restricted.legal and {(c.fused, c.group) for c in restricted.legal} == {(0, 1)}


@pytest.mark.parametrize(
    "tune, field, words",
    [
        ({"space": {"blok_m": [64]}}, "tune.space.blok_m", "no axis 'blok_m'; allowed: block_m, block_n"),
        (
            {"space": {"block_m": [48]}},
            "tune.space.block_m",
            "48 is not a value of this axis; allowed: 16, 32",
        ),
        ({"space": {"levels": [2]}}, "tune.space.levels", "no axis 'levels'"),
        (
            {"space": {"block_m": [256], "block_n": [256], "block_k": [128], "num_stages": [5]}},
            "tune.space",
            "leaves none of the",
        ),
        (  # every value legal alone: the listing of legal values blamed none
            {"space": {"block_m": [256], "block_n": [256], "num_warps": [2]}},
            "tune.space",
            "the values asked for are each legal, but no legal config has them together; legal values: ",
        ),
        ({"configs": [{"block_n": 64}]}, "tune.configs[0]", "missing block_m, block_k (a gemm config has"),
        (
            {"configs": [{"block_m": 64, "block_n": 64, "block_k": 32, "tile": 2}]},
            "tune.configs[0]",
            "unknown",
        ),
        (
            {"configs": [LISTED[0], {**LISTED[1], "num_warps": 3}]},
            "tune.configs[1]",
            "num_warps: 3 is not allowed",
        ),
        (
            {"configs": [{"block_m": 256, "block_n": 256, "block_k": 128, "num_stages": 5}]},
            "tune.configs[0]",
            "m256n256k128g8w4s5x1 cannot run gemm[m=512 n=512 k=512 f16 a:row b:row] on h100: shared memory over",
        ),
    ],
)
def test_family_level_mistakes_are_one_line_errors_naming_the_field(tune, field, words):
    with pytest.raises(SpecError) as raised:
        kt.space(spec_with(tune, MONARCH if "levels" in json.dumps(tune) else None))
    assert raised.value.field == field and words in raised.value.reason
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("extra", [{"fused": 2}, {"fused": 7}, {"fused": 1, "levels": 3, "split": 7}])
def test_a_listed_monarch_config_is_the_config_written_not_one_of_its_key(extra):
    """Listed configs were looked up by key, and a block-GEMM config's key is `-fused` for any fused value and
    leaves levels and split out: `fused: 2` (or another family's levels) was taken for the legal fused=1 config,
    tuned in its place, where kt.build refused the same mapping."""
    config = {**MONARCH_CONFIG, **extra}
    with pytest.raises(SpecError, match=r"tune.configs\[0\]: .* cannot run monarch"):
        kt.space(
            spec_with({"configs": [config]}, {**MONARCH, "shape": {"batch": 1024, "n": 256, "nblocks": 16}})
        )


def test_a_space_of_values_some_of_which_no_legal_config_has_does_not_call_them_each_legal():
    """ "the values asked for are each legal" was said as soon as one value of each axis was: of `tma: [0, 1]`
    on an A100, whose legal values it then listed as tma 0 alone."""
    spec = spec_with({"space": {"tma": [0, 1], "block_m": [256], "block_n": [256], "num_warps": [2]}})
    with pytest.raises(SpecError, match="leaves none of the") as raised:
        kt.space(spec, device="a100")
    assert "each legal" not in str(raised.value) and "tma 0;" in str(raised.value)


def test_a_listed_structured_config_the_op_does_not_offer_says_why():
    config = {**MONARCH_CONFIG, "fused": 1}
    transposed = {**MONARCH, "transposed": True}  # runs the forward map only fused: offers fused 0 alone
    with pytest.raises(SpecError, match=r"tune.configs\[0\]: .*fused=1 is not offered"):
        kt.space(spec_with({"configs": [config]}, transposed))


@pytest.mark.parametrize(
    "op, field",
    [
        ({"op": "fft", "shape": {"batch": 64, "n": 64}}, r"split \(allowed for fft\[.*\]: 2, 4, 8, 16, 32\)"),
        (
            {"op": "butterfly", "shape": {"batch": 64, "n": 64}},
            r"levels \(allowed for butterfly\[.*\]: 1, 2,",
        ),
    ],
)
def test_a_listed_config_without_its_structure_field_is_said_to_miss_it(op, field):
    """Left out, the field's default 0 was refused as "structure split=0 is not offered", a value never
    written; kt space lists it as a field with no default. kt.build's mapping likewise."""
    tiles = {"block_b": 16, "block_n": 16, "block_k": 16}
    spec = spec_with({"configs": [tiles]}, {**op, "dtype": "float16"})
    with pytest.raises(SpecError, match=rf"^tune.configs\[0\]: missing {field}"):
        kt.space(spec)
    with pytest.raises(SpecError, match=rf"^config: missing {field}"):
        kt.build(spec_with({}, {**op, "dtype": "float16"}), tiles)


@pytest.mark.parametrize(
    "op, structure",
    [
        ({"op": "butterfly", "shape": {"batch": 64, "n": 256}}, {"levels": 2}),
        ({"op": "fft", "shape": {"batch": 64, "n": 256}}, {"split": 16}),
        ({"op": "butterfly", "shape": {"batch": 64, "n": 256}}, {"levels": 2, "split": 4}),
    ],
)
def test_a_listed_config_with_another_familys_structure_axis_is_refused_naming_it(op, structure):
    """`fused: 1` (a Monarch's axis) in a butterfly's or an FFT's listed config passed the structure check, which
    compared only the axes the op offers, and the fused kernel's rule then read Monarch factors: AttributeError
    "'ButterflyProblem' object has no attribute 'w1'"."""
    extra = {} if "split" in structure and "levels" in structure else {"fused": 1}
    config = {"block_b": 16, "block_n": 16, "block_k": 16, **structure, **extra}
    spec = {**op, "dtype": "float16", "device": "h100", "tune": {"configs": [config]}}
    foreign = "split=4" if not extra else "fused=1"
    with pytest.raises(
        SpecError, match=rf"^tune.configs\[0\]: .*: structure .*{foreign} is not offered for .*; allowed: "
    ):
        kt.space(kt.parse_spec(spec))
    del config[foreign.split("=")[0]]
    assert len(kt.space(kt.parse_spec(spec)).legal) == 1


@pytest.mark.parametrize(
    "tune, words",
    [
        ({"space": {}}, "tune.space: must name at least one axis"),
        ({"space": {"block_m": []}}, "tune.space.block_m: must be a non-empty list of integers"),
        ({"space": {"block_m": [True]}}, "tune.space.block_m[0]: must be an integer"),
        ({"space": {"block_m": [64.0]}}, "tune.space.block_m[0]: must be an integer (write 64"),
        ({"space": [64]}, "tune.space: must be a mapping"),
        ({"configs": []}, "tune.configs: must be a non-empty list"),
        ({"configs": [{}]}, "tune.configs[0]: must name the config's fields"),
        ({"configs": [{"block_m": "64"}]}, "tune.configs[0].block_m: must be an integer"),
        (
            {"space": {"block_m": [64]}, "configs": [LISTED[0]]},
            "tune: give space (axes to restrict) or configs",
        ),
    ],
)
def test_malformed_space_and_configs_are_refused_when_the_file_is_read(tune, words):
    with pytest.raises(SpecError) as raised:
        spec_with(tune)
    assert words in str(raised.value)


def test_space_and_configs_round_trip_and_stay_out_of_the_signature():
    for tune in ({"space": {"block_m": [64, 128], "num_stages": [3]}}, {"configs": LISTED}):
        spec = spec_with(tune)
        again = kt.parse_spec(spec.to_dict())
        assert again == spec and again.tune.to_dict() == spec.tune.to_dict()
        assert spec.signature() == spec_with({}).signature()
    assert "space" not in spec_with({}).to_dict()["tune"] and "configs" not in spec_with({}).to_dict()["tune"]


def test_a_config_listed_twice_is_kept_once_and_the_rest_counted_as_not_listed():
    """The not-listed count is the legal configs left out: a bug counting the list's entries instead of its
    distinct configs undercounts by one for each repeat, and the space's counts no longer add up."""
    full = kt.space(spec_with({}))
    listed = kt.space(spec_with({"configs": [LISTED[0], LISTED[1], LISTED[0]]}))
    assert [c.key() for c in listed.legal] == ["m128n128k64g8w8s3x1", "m64n64k32g8w4s3x1"]
    assert listed.dropped[NOT_LISTED] == len(full.legal) - 2
    assert len(listed.legal) + sum(listed.dropped.values()) == len(full.legal) + sum(full.dropped.values())


def test_configs_tune_exactly_those_whatever_the_budget(tmp_path):
    spec = kt.parse_spec(
        {
            "name": "listed",
            "op": "dense",
            "dtype": "float16",
            "shape": {"m": 96, "n": 80, "k": 64},
            "tune": {"budget": 7, "configs": LISTED[1:] + [{"block_m": 32, "block_n": 32, "block_k": 32}]},
        }
    )
    result = kt.tune(spec, backend="interpret", db=tmp_path / "t.db", progress=False, baseline=False)
    assert {r["config_key"] for r in result.rows} == {"m64n64k32g8w4s3x1", "m32n32k32g8w4s3x1"}
    assert result.plan.budget == 2 and len(result.plan.space.legal) == 2
    assert result.plan.space.dropped[NOT_LISTED] > 1000
    assert any(
        "tune.configs lists 2 distinct configs: all are checked (budget 7 ignored)"
        in n  # (interpreted: not timed)
        for n in result.notes
    )
    meta = json.loads((result.save(tmp_path / "art") / "meta.json").read_text())
    assert (
        meta["tuning"]["checked"] == 2 and meta["tuning"]["timed"] == 0 and "measured" not in meta["tuning"]
    )
    assert meta["spec"]["tune"]["configs"][0] == LISTED[1]


@pytest.mark.parametrize("measures_time", [False, True])
def test_listed_configs_are_all_measured_when_the_budget_is_their_count_group_m_twins_included(measures_time):
    """With `budget` equal to the number listed, the usual budget rules ran: of two listed configs that differ
    only in a group_m that orders no tiles, one was left out, and on a GPU the budget was sized down (8 listed,
    7 measured); with any other budget all were."""
    twins = [{"block_m": 64, "block_n": 64, "block_k": 64, "group_m": g} for g in (8, 1)]
    listed = [*twins, {"block_m": 32, "block_n": 32, "block_k": 32}]
    spec = {"op": "dense", "dtype": "float16", "shape": {"m": 64, "n": 64, "k": 64}}
    plan = kt.plan({**spec, "tune": {"budget": 3, "configs": listed}}, measures_time=measures_time)
    assert plan.budget == 3 and sorted(plan.chosen) == [0, 1, 2], (plan.chosen, plan.budget_note)
    configs = [
        {"block_m": b, "block_n": 128, "block_k": 64, "group_m": g} for b in (64, 128) for g in (1, 4, 8)
    ]
    configs += [
        {"block_m": 128, "block_n": 256, "block_k": 64, "num_warps": 8},
        {"block_m": 256, "block_n": 128, "block_k": 64, "num_warps": 8},
    ]
    big = {"op": "dense", "dtype": "float16", "shape": {"m": 4096, "n": 4096, "k": 4096}}
    plan = kt.plan({**big, "tune": {"budget": 8, "configs": configs}}, measures_time=measures_time)
    assert plan.budget == 8 and len(plan.chosen) == 8 and plan.budget_note is None, plan.budget_note


def test_a_listed_config_that_cannot_run_is_refused_before_the_model_loads_or_the_database_opens(
    tmp_path, monkeypatch
):
    from test_tune_loop import StandInRunner  # starts no workers

    import kt.autotune.tune as tune_module

    def must_not(*args, **kwargs):
        raise AssertionError("the cost model was loaded before the listed configs were checked")

    monkeypatch.setattr(
        tune_module, "make_runner", lambda backend, profile, **options: StandInRunner(profile)
    )
    monkeypatch.setattr(tune_module, "resolve_model", must_not)
    bad = {"block_m": 256, "block_n": 256, "block_k": 128, "num_stages": 5}
    with pytest.raises(SpecError, match=r"tune.configs\[0\]: .* cannot run gemm\[m=512 n=512 k=512"):
        kt.tune(spec_with({"configs": [bad]}), db=tmp_path / "t.db", progress=False)
    assert not (tmp_path / "t.db").exists()
    with pytest.raises(SpecError, match=r"tune.configs\[0\]: .* cannot run gemm"):
        kt.plan(spec_with({"configs": [bad]}))  # kt predict, kt space: no model before the space is sound


def test_a_space_with_a_restriction_on_a_device_no_config_runs_on_says_so(tmp_path):
    """kt.space blamed tune.space ("leaves none of the 0 legal configs ... legal values: block_m ") where no
    config could run at all, as kt space on the command line says."""
    from kt.device import BUILTIN

    tiny = {**BUILTIN["h100"].to_dict(), "name": "tiny", "smem_per_block": 16, "smem_per_sm": 16}
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    spec = spec_with({"space": {"block_m": [64]}}, {"op": "dense", "shape": {"m": 64, "n": 64, "k": 64}})
    with pytest.raises(kt.KtError, match=r"^no config of the gemm family can run gemm\[.*\] on tiny: "):
        kt.space(spec, device=str(tmp_path / "tiny.json"))


def test_build_ranks_within_the_users_space():
    spec = spec_with({"space": {"block_m": [32], "num_warps": [2]}})
    kernel = kt.build(spec)
    assert kernel.config.block_m == 32 and kernel.config.num_warps == 2


def test_cli_refuses_a_bad_axis_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "op.yaml"
    path.write_text(
        "name: x\nop: dense\ndtype: float16\nshape: {m: 64, n: 64, k: 64}\ntune:\n  space: {blok_m: [64]}\n"
    )
    for command in (["space"], ["tune", "--db", str(tmp_path / "t.db"), "--out", str(tmp_path / "art")]):
        done = subprocess.run(
            [sys.executable, "-m", "kt.cli", *command[:1], str(path), *command[1:]],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"kt: error: {path}: tune.space.blok_m: the gemm family has no axis 'blok_m'; allowed: block_m, "
            "block_n, block_k, group_m, num_warps, num_stages, split_k, tma"
        ]
    assert not (tmp_path / "art").exists()


GRAD = {
    "op": "blocksparse_grad",
    "dtype": "float16",
    "shape": {"batch": 64, "in": 128, "out": 96},
    "sparsity": {"block": [32, 32], "density": 0.5},
}


EXTRA = {"monarch-transposed": {**MONARCH, "transposed": True}, "blocksparse_grad": GRAD}


@pytest.mark.parametrize("op", [*sorted(p.stem for p in EXAMPLES.glob("*.yaml")), *EXTRA])
def test_the_axes_a_spec_is_checked_against_are_its_familys(op):
    """kt.axes (read with the spec, before torch) names every axis the family offers the built problem, with the
    same schedule values, and every field of its config with the values the config takes, so a spec it lets
    through is judged by the family alone on the structure's values and on legality."""
    from dataclasses import MISSING, fields

    from kt.axes import CONFIG_FIELDS, FLAG_AXES, GEMM_STRUCTURE_AXES, OP_AXES, REQUIRED
    from kt.codegen import family_for
    from kt.codegen.restrict import user_axes
    from kt.ir import op_from_spec

    spec = kt.parse_spec(EXTRA[op]) if op in EXTRA else kt.load_spec(EXAMPLES / f"{op}.yaml")
    (node,) = op_from_spec(spec).kernel_graph().kernels
    family = family_for(node.problem)
    name, axes, structure = OP_AXES[spec.op]
    offered = user_axes(family, node.problem)
    flags = [flag for flag in FLAG_AXES if flag in CONFIG_FIELDS[name]]  # feature-major ends
    assert family.name == name and list(offered) == [*axes, *flags, *([structure] if structure else [])]
    assert all(offered[axis] == values for axis, values in axes.items())
    if name == "gemm":
        assert offered["tma"] == GEMM_STRUCTURE_AXES["tma"]
    if flags:
        assert name in ("monarch", "butterfly", "fft") and offered["ends"] == (0, 1)
    config_fields = CONFIG_FIELDS[name]
    assert list(config_fields) == [f.name for f in fields(family.config_type)]
    assert list(config_fields)[:REQUIRED] == [
        f.name for f in fields(family.config_type) if f.default is MISSING
    ]
    tile = dict(zip(config_fields, (64, 64, 64)))
    for field, allowed in config_fields.items():  # the config refuses what kt.axes refuses, and only that
        off = max(allowed) + 1 if allowed else -1
        with pytest.raises(ValueError, match=f"config.{field}: "):
            family.config_type.from_dict({**tile, field: off})
        for value in allowed or (0, 5):
            family.config_type.from_dict({**tile, field: value})


def test_a_structure_value_the_problem_does_not_offer_is_refused_by_the_family():
    butterfly = {"op": "butterfly", "dtype": "float16", "shape": {"batch": 64, "n": 64}}
    spec = spec_with(
        {"space": {"levels": [9]}}, butterfly
    )  # the name is the family's: read without complaint
    with pytest.raises(SpecError) as raised:
        kt.space(spec)
    assert (
        raised.value.field == "tune.space.levels"
        and "9 is not a value of this axis; allowed: 1, 2" in str(raised.value)
    )


def test_a_budget_over_the_legal_space_is_planned_as_what_the_search_can_spend():
    """meta.json's tuning.budget recorded 20 (or the spec's 64 under exhaustive) where 12 configs were legal."""
    spec = spec_with({"space": {"block_m": [64], "block_n": [64], "block_k": [64], "num_stages": [3]}})
    legal = len(kt.space(spec).legal)
    for strategy in ("top", "exhaustive", "guided"):
        plan = kt.plan(spec, budget=legal + 20, strategy=strategy, measures_time=False)
        assert plan.budget == legal and len(plan.chosen) == legal, (strategy, plan.budget, legal)


def test_tune_space_names_feature_major_ends_like_an_axis():
    """`ends` (feature-major ends, a block-GEMM config field beside the axes) can be kept or left out with
    tune.space, like a GEMM's `tma`; a value off it, or the field on a family without it, is refused."""
    fft = {"op": "fft", "dtype": "float16", "shape": {"batch": 40, "n": 64}}
    only = kt.space(spec_with({"space": {"ends": [1]}}, fft))
    assert only.legal and all(c.ends == 1 and c.key().endswith("-fm") for c in only.legal)
    without = kt.space(spec_with({"space": {"ends": [0]}}, fft))
    assert without.legal and not any(c.ends for c in without.legal)
    # the two halves of the whole space (strided ends refuse more launches over several blocks than
    # feature-major ones: `several_blocks_reason`)
    whole = kt.space(spec_with({}, fft))
    assert {c.key() for c in whole.legal} == {c.key() for c in only.legal} | {c.key() for c in without.legal}
    with pytest.raises(SpecError) as raised:
        spec_with({"space": {"ends": [2]}}, fft)
    assert raised.value.field == "tune.space.ends" and "allowed: 0, 1" in raised.value.reason
    with pytest.raises(SpecError) as raised:
        spec_with({"space": {"ends": [1]}})  # a dense op has no such field
    assert raised.value.field == "tune.space.ends"


def test_listed_configs_set_the_workers_and_a_numpy_value_is_one_axis_value(monkeypatch, tmp_path):
    """With `tune.configs` the budget is ignored (every listed config is measured), but the workers were counted
    from it: 9 listed configs at budget 1 started 2 workers, one at budget 64 up to 8. And one numpy integer as
    an axis's value was refused as "no list", where a list of them and a plain int are taken."""
    import numpy as np

    import kt
    import kt.autotune.tune as tune

    seen = {}

    class Stop(Exception):
        pass

    def runner(backend, profile, **options):
        seen.update(options)
        raise Stop

    monkeypatch.setattr(tune, "make_runner", runner)
    monkeypatch.setattr(tune, "default_workers", lambda: 8)
    configs = [{"block_m": b, "block_n": n, "block_k": 32} for b in (16, 32, 64) for n in (16, 32, 64)]
    for budget, listed, workers in ((1, configs, 8), (64, configs[:1], 2)):
        spec = kt.parse_spec(
            {"op": "dense", "device": "h100", "shape": {"m": 256, "n": 256, "k": 256},
             "tune": {"budget": budget, "configs": listed}}
        )  # fmt: skip
        with pytest.raises(Stop):
            kt.tune(spec, backend="interpret", db=tmp_path / "t.db", progress=False)
        assert seen["workers"] == workers, (budget, len(listed), seen["workers"])
    base = {"op": "dense", "device": "h100", "shape": {"m": 256, "n": 256, "k": 256}}
    spec = kt.parse_spec({**base, "tune": {"space": {"block_m": np.int64(64)}}})
    assert dict(spec.tune.space)["block_m"] == (64,)
