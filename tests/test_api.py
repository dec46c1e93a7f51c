"""kt's public API: build, reference, random weights, plan and space, on specs given as files, dicts or OpSpecs."""

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
            r"^config: BLOCK_M=64 BLOCK_N=256 BLOCK_K=128 .* cannot run gemm\[.*\] on h100: shared memory over "
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
    assert plan.strategy == "top" and plan.chosen == plan.ranked[:16], "without timing: the model's best"


def test_guided_plan_first_round_explores_by_seed():
    plan = kt.plan(SPEC, budget=64, seed=3, measures_time=True)
    assert plan.strategy == "guided" and plan.model == "analytic"
    assert len(plan.chosen) == 8, "a first round of 8 (a tenth of the budget, 8 to 10)"
    assert plan.chosen[:4] == plan.ranked[:4], "half the round goes to the best ranked"
    assert not set(plan.chosen[4:]) & set(plan.ranked[:4]), "the rest explores beyond them"
    assert kt.plan(SPEC, budget=64, seed=4, measures_time=True).chosen[4:] != plan.chosen[4:], (
        "the analytic model has no spread: exploration is random and follows the seed"
    )
