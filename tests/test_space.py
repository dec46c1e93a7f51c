"""The GEMM search space: hardware legality rules on hand-computed cases."""

import dataclasses
import itertools
from dataclasses import replace
from pathlib import Path

import pytest

import kt.codegen
from kt.codegen import FAMILIES, GemmConfig, illegal_reason
from kt.codegen.gemm import AXES, accumulator_registers, built_shared_memory, padded, shared_memory
from kt.codegen.tilesum import launches
from kt.device import H100
from kt.ir import GemmProblem

BIG = GemmProblem(4096, 4096, 4096)


def test_shared_memory_is_stages_times_an_a_and_a_b_tile():
    config = GemmConfig(128, 256, 64, num_stages=3)
    assert shared_memory(BIG, config) == 3 * (128 * 64 + 64 * 256) * 2 == 147456
    assert shared_memory(dataclasses.replace(BIG, dtype="float32"), config) == 294912


def test_configs_over_the_shared_memory_limit_are_dropped():
    assert illegal_reason(BIG, GemmConfig(128, 256, 64, num_warps=8, num_stages=3), H100) is None
    tf32 = dataclasses.replace(
        BIG, dtype="float32", precision="tf32"
    )  # wgmma keeps 3 stages: 288 KiB > 227 KiB
    assert (
        illegal_reason(tf32, GemmConfig(128, 256, 64, num_warps=8, num_stages=3), H100)
        == "shared memory over 227 KiB"
    )
    # 32 rows run mma.sync, whose builds keep stages - 1: 216 KiB of 4 stages' 288 (test_compile_target builds it)
    skinny = GemmConfig(32, 256, 128, num_warps=8, num_stages=4)
    assert shared_memory(BIG, skinny) == 294912 and built_shared_memory(BIG, skinny, H100) == 221184
    assert illegal_reason(BIG, skinny, H100) is None
    assert illegal_reason(BIG, replace(skinny, num_stages=5), H100) == "shared memory over 227 KiB"


def test_accumulators_over_128_registers_per_thread_are_dropped():
    assert accumulator_registers(GemmConfig(256, 256, 32, num_warps=8)) == 256
    assert "accumulator" in illegal_reason(BIG, GemmConfig(256, 256, 32, num_warps=8, num_stages=2), H100)
    assert accumulator_registers(GemmConfig(128, 128, 32, num_warps=4)) == 128
    assert illegal_reason(BIG, GemmConfig(128, 128, 32, num_warps=4, num_stages=2), H100) is None


def test_tiles_larger_than_the_padded_problem_are_dropped():
    assert (padded(1), padded(16), padded(17), padded(100), padded(129)) == (16, 16, 32, 128, 256)
    small = GemmProblem(17, 100, 129)
    assert illegal_reason(small, GemmConfig(32, 128, 128, num_stages=2), H100) is None
    assert (
        illegal_reason(small, GemmConfig(64, 128, 128, num_stages=2), H100)
        == "tile larger than the padded problem"
    )
    # Split 2 ways, each split covers 65 of K: padded to 128, so BLOCK_K 128 still fits; split 4 ways, 33 pads to 64.
    assert illegal_reason(small, GemmConfig(32, 128, 128, num_stages=2, split_k=2), H100) is None
    assert illegal_reason(small, GemmConfig(32, 128, 128, num_stages=2, split_k=4), H100) == (
        "tile larger than the padded problem"
    )
    # 129 of K is 3 tiles of 64: 4 splits would leave one with nothing to do.
    assert (
        illegal_reason(small, GemmConfig(32, 128, 64, num_stages=2, split_k=4), H100)
        == "more K splits than K tiles"
    )


def test_the_space_counts_add_up_and_every_legal_config_is_legal():
    family = FAMILIES["gemm"]
    space = family.space(BIG, H100)
    total = 1
    for values in AXES.values():
        total *= len(values)
    twins = total // len(AXES["split_k"])  # every config without split-K, again as each TMA kernel
    assert space.total == total + 2 * twins == 25200
    tma = [c for c in space.legal if c.tma]
    assert tma and all(c.split_k == 1 and c.num_warps >= 4 for c in tma)
    assert len(space.legal) + sum(space.dropped.values()) == space.total
    assert all(illegal_reason(BIG, c, H100) is None for c in space.legal[::97])
    assert len(space.legal) < space.total


def test_check_problems_keep_a_ragged_tile_in_every_dimension():
    family = FAMILIES["gemm"]
    config = GemmConfig(64, 32, 16, split_k=4)
    (small,) = family.check_problems(GemmProblem(4100, 4095, 4096, batch=8, b_layout="col"), config)
    assert (small.m, small.n, small.batch, small.b_layout) == (97, 49, 2, "col")
    assert small.m % 64 and small.n % 32 and small.k % 16, "a ragged edge in M, N and K"
    assert -(-small.k // 16) == 2 * 4, "two K steps per split"
    tiny = GemmProblem(5, 3, 2)
    assert family.check_problems(tiny, config) == [tiny]


def test_a_problem_of_whole_tiles_is_also_checked_on_the_unmasked_path():
    family = FAMILIES["gemm"]
    config = GemmConfig(64, 32, 16, split_k=4)
    ragged, whole = family.check_problems(GemmProblem(4096, 4096, 4096), config)
    assert ragged.m % 64 and (whole.m, whole.n, whole.k) == (128, 64, 128)
    assert whole.m % 64 == whole.n % 32 == whole.k % (16 * 4) == 0


def test_config_keys_round_trip_and_bad_values_are_named():
    import pytest

    config = GemmConfig(128, 64, 32, group_m=4, num_warps=8, num_stages=5, split_k=2)
    assert config.key() == "m128n64k32g4w8s5x2"
    assert GemmConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"config.block_m: 48 is not allowed; allowed: 16, 32, 64, 128, 256"):
        GemmConfig.from_dict({**config.to_dict(), "block_m": 48})


def test_the_tma_kernel_is_legal_only_where_tma_and_wgmma_can_run():
    from kt.codegen.gemm import shared_memory, tma_reason

    tma = GemmConfig(128, 128, 64, num_warps=8, num_stages=3, tma=1)
    assert illegal_reason(BIG, tma, H100) is None
    assert tma.key() == "m128n128k64g8w8s3x1t" and GemmConfig.from_dict(tma.to_dict()) == tma
    assert "tma" not in GemmConfig(128, 128, 64).to_dict()  # classic configs keep their records and rows
    assert (
        shared_memory(BIG, tma)
        == shared_memory(BIG, GemmConfig(128, 128, 64, num_stages=3)) + 128 * 128 * 2 + 128
    )
    for problem, words in [
        (GemmProblem(4096, 4096, 4096, dtype="float32"), "float16 and bfloat16 only"),
        (GemmProblem(4096, 4096, 4096, batch=4), "no batch"),
        (GemmProblem(4096, 4095, 4096), "rows not 16-byte aligned"),  # N (B's and C's rows)
        (GemmProblem(4096, 4096, 4099, b_layout="col"), "rows not 16-byte aligned"),  # K (B^T's rows)
        (GemmProblem(4090, 4096, 4096, a_layout="col"), "rows not 16-byte aligned"),  # M (A^T's rows)
    ]:
        assert words in tma_reason(problem, tma), problem
    assert (
        GemmProblem(4097, 4096, 4096).m and tma_reason(GemmProblem(4097, 4096, 4096), tma) is None
    )  # A's rows: K
    assert "four or eight warps" in tma_reason(BIG, GemmConfig(64, 64, 32, num_warps=2, tma=1))
    assert "no split-K" in tma_reason(BIG, GemmConfig(64, 64, 32, split_k=2, tma=1))
    subtiled = GemmConfig(128, 128, 64, num_warps=8, num_stages=3, tma=2)
    assert subtiled.key() == "m128n128k64g8w8s3x1t2" and GemmConfig.from_dict(subtiled.to_dict()) == subtiled
    assert shared_memory(BIG, tma) - shared_memory(BIG, subtiled) == 128 * 128 * 2 // 2  # half the C tile
    assert "BLOCK_N of at least 32" in tma_reason(BIG, GemmConfig(64, 16, 32, num_warps=4, tma=2))
    # before Hopper, tensor descriptors compile to plain loads (no TMA, no wgmma): 7,200 such configs were
    # legal on the A100, each a twin of a classic config, with reasons about a warpgroup's wgmma
    from kt.device import get_profile

    a100 = get_profile("a100")
    assert illegal_reason(BIG, tma, a100) == "TMA kernel: Hopper (sm_90) or newer; a100 is sm_80"
    space = FAMILIES["gemm"].space(BIG, a100)
    assert space.legal and not any(config.tma for config in space.legal)


def test_the_tma_kernels_check_problems_are_ragged_and_aligned_so_the_interpreter_runs_its_path():
    family = FAMILIES["gemm"]
    for tile in (16, 32, 64, 128):
        config = GemmConfig(tile, tile, tile, num_warps=4, tma=1)
        small = family.check_problems(GemmProblem(4096, 4096, 4096, b_layout="col"), config)[0]
        for dim in (small.m, small.n, small.k):
            assert dim % tile and dim % 8 == 0, (tile, small)


def test_a_refit_learns_how_the_tma_kernel_differs_from_its_classic_twin():
    """The starting models cannot tell a TMA config from its classic twin (same tiles); measurements can: the
    correction takes `tma` as a feature, and the database reader takes rows with it."""
    from kt.autotune.dataset import _check_config
    from kt.costmodel import AnalyticModel
    from kt.costmodel.correction import CorrectedModel

    family = FAMILIES["gemm"]
    configs = [c for c in family.space(BIG, H100).legal if c.block_k == 64 and c.group_m == 8][:40]
    records = family.records(BIG, configs)
    start = AnalyticModel(H100).predict(records).runtime_s
    for record, predicted in zip(records, start):  # as measured: the TMA twin 30% faster
        record["runtime_ms"] = predicted * 1e3 * (0.7 if record.get("tma") else 1.0)
    assert {r.get("tma", 0) for r in records} == {0, 1}
    corrected = CorrectedModel(AnalyticModel(H100)).fit(records)
    predicted = corrected.predict(records).runtime_s
    twins = [
        (i, j)
        for i, a in enumerate(configs)
        for j, b in enumerate(configs)
        if b.tma and a == replace(b, tma=0)
    ]
    assert twins and all(predicted[j] < predicted[i] for i, j in twins)
    _check_config("gemm", {**GemmConfig(64, 64, 32).to_dict(), "tma": 1}, "row 1")  # accepted
    _check_config("gemm", {**GemmConfig(64, 64, 32).to_dict(), "tma": 2}, "row 1")  # the subtiled one
    with pytest.raises(Exception, match="tma is 3; allowed: an integer from 0 to 2"):
        _check_config("gemm", {**GemmConfig(64, 64, 32).to_dict(), "tma": 3}, "row 1")


def tile_order(tiles_m: int, tiles_n: int, group_m: int) -> list[tuple[int, int]]:
    """The output tile (row, column) each program takes: gemm.py.j2's swizzle (checked below), in Python."""
    order = []
    for pid in range(tiles_m * tiles_n):
        per_group = group_m * tiles_n
        first_m = (pid // per_group) * group_m
        rows = min(tiles_m - first_m, group_m)
        t = pid % per_group
        order.append((first_m + t % rows, t // rows))
    return order


def test_two_gemm_configs_run_one_program_exactly_when_their_group_m_gives_one_tile_order():
    """GemmFamily.same_program, against the template's tile order on every grid up to 7x7 (ragged sizes):
    configs differing only in group_m run one program exactly when the order is the same; other fields differ."""
    source = (Path(kt.codegen.__file__).parent / "templates" / "gemm.py.j2").read_text()
    for line in (
        "tiles_per_group = GROUP_M * tiles_n",
        "first_m = (pid // tiles_per_group) * GROUP_M",
        "rows = tl.minimum(tiles_m - first_m, GROUP_M)",
        "t = pid % tiles_per_group",
        "pid_m = first_m + t % rows",
        "pid_n = t // rows",
        "first_m = (tile // tiles_per_group) * GROUP_M",  # the persistent TMA kernel: the same swizzle
    ):
        assert line in source, line
    family, groups = FAMILIES["gemm"], (1, 2, 4, 8, 16)
    for tiles_m, tiles_n in itertools.product(range(1, 8), range(1, 8)):
        problem = GemmProblem(16 * tiles_m - 3, 32 * tiles_n - 5, 64)
        configs = [GemmConfig(16, 32, 32, group_m=g, tma=1) for g in groups]
        for a, b in itertools.combinations(configs, 2):
            same = family.same_program(problem, a) == family.same_program(problem, b)
            orders = tile_order(tiles_m, tiles_n, a.group_m) == tile_order(tiles_m, tiles_n, b.group_m)
            assert same == orders, (tiles_m, tiles_n, a.group_m, b.group_m)
    problem = GemmProblem(40, 24, 32)  # one tile: every group_m alike, nothing else
    base = GemmConfig(64, 32, 32, group_m=8)
    assert family.same_program(problem, replace(base, group_m=1)) == family.same_program(problem, base)
    for change in ({"num_warps": 8}, {"num_stages": 4}, {"block_k": 16}, {"split_k": 2}, {"tma": 1}):
        assert family.same_program(problem, replace(base, **change)) != family.same_program(problem, base)


@pytest.mark.parametrize(
    "spec",
    [
        {
            "op": "blocksparse",
            "shape": {"batch": 40, "in": 256, "out": 192},
            "sparsity": {"block": [32, 32], "density": 0.5},
        },
        {"op": "lowrank", "shape": {"batch": 40, "dims": [256, 16, 192]}},
        # f1 @ f2 first, of more rows (112) than x has (64)
        {"op": "lowrank", "shape": {"batch": 64, "dims": [112, 1024, 112]}},
    ],
    ids=["blocksparse", "lowrank", "lowrank-weights-first"],
)
def test_tile_sum_configs_said_to_run_one_program_order_every_launchs_tiles_alike(spec):
    """TileSumFamily.same_program: configs of one class give each launch the same tile order (tilesum.py.j2's
    swizzle, whatever its column tiles), and the class is every config's but group_m."""
    source = (Path(kt.codegen.__file__).parent / "templates" / "tilesum.py.j2").read_text()
    for line in ("tiles_per_group = GROUP_M * tiles_n", "pid_m = first_m + t % rows", "pid_n = t // rows"):
        assert line in source, line
    plan = kt.plan({"dtype": "float16", **spec}, budget=1, measures_time=True, model="analytic")
    family, problem = FAMILIES[plan.problem.family], plan.problem
    classes: dict = {}
    for config in plan.space.legal:
        classes.setdefault(family.same_program(problem, config), []).append(config)
    assert any(len(members) > 1 for members in classes.values())  # the premise: twins exist here
    for members in classes.values():
        assert len({replace(c, group_m=1) for c in members}) == 1
        for launch in launches(problem, members[0]):
            tiles_m = -(-launch.m // members[0].block_m)
            for tiles_n in range(1, 5):
                assert len({tuple(tile_order(tiles_m, tiles_n, c.group_m)) for c in members}) == 1


def test_a_block_sparse_step_is_no_deeper_than_a_padded_block():
    """A BSR launch steps through one stored block's columns at a time: a block_k past the padded block width
    only masks (block_k 128 on 16-wide blocks did 8 times the dots' work), yet legality let block_k grow to
    the blocks' mean depth, and the cost model priced it as fewer full steps (block_k 32 as fast as 16). A sum
    with a dense term keeps the deeper steps its dense launches use."""
    import kt

    sparse = {"op": "blocksparse", "name": "b", "dtype": "float16", "shape": {"batch": 256, "in": 512, "out": 512},
              "sparsity": {"block": [16, 16], "density": 0.25, "seed": 0}}  # fmt: skip
    assert {c.block_k for c in kt.space(sparse, "h100").legal} == {16}
    narrow = {**sparse, "shape": {"batch": 256, "in": 480, "out": 512},
              "sparsity": {"block": [32, 24], "density": 0.25, "seed": 0}}  # fmt: skip
    assert {c.block_k for c in kt.space(narrow, "h100").legal} == {16, 32}  # 24 pads to 32
    mixed = {"op": "sum", "name": "s", "dtype": "float16", "terms": [
        {"op": "blocksparse", "shape": {"batch": 256, "in": 512, "out": 512},
         "sparsity": {"block": [16, 16], "density": 0.25, "seed": 0}},
        {"op": "lowrank", "shape": {"batch": 256, "dims": [512, 64, 512]}},
    ]}  # fmt: skip
    assert max(c.block_k for c in kt.space(mixed, "h100").legal) > 16


@pytest.mark.parametrize("nblocks", [3, 4])
def test_a_block_gemm_group_past_every_block_is_dropped(nblocks):
    """GROUP blocks per program, masked past the last (blockgemm.py.j2's `live`): once one program takes every
    block, a larger GROUP only adds masked iterations. The bound was the block count padded to at least 16, so
    a Monarch of 4 blocks kept GROUP 8 and 16 (108 of its 288 configs at n = 64)."""
    import kt

    spec = {
        "op": "monarch",
        "dtype": "float16",
        "shape": {"batch": 64, "n": 16 * nblocks, "nblocks": nblocks},
    }
    legal = kt.space(spec, "h100").legal
    cover = 1 << (nblocks - 1).bit_length()
    assert {c.group for c in legal} == {g for g in (1, 2, 4, 8, 16) if g <= cover}


def test_the_fused_monarch_has_one_config_per_rows_and_warps():
    """monarch_fused_kernel has no loop, so NUM_STAGES pipelines nothing: its configs of 2, 3 and 4 stages built
    the same sm_90 PTX, yet each was a config of the space (a guided first round measured two of them)."""
    import kt

    spec = {"op": "monarch", "dtype": "float16", "shape": {"batch": 64, "n": 64, "nblocks": 4}}
    fused = [c for c in kt.space(spec, "h100").legal if c.fused]
    assert fused and {(c.block_n, c.block_k, c.group, c.num_stages) for c in fused} == {(16, 16, 1, 2)}
    assert len({(c.block_b, c.num_warps) for c in fused}) == len(fused)
    with pytest.raises(kt.SpecError, match=r"unused by the fused kernel \(it takes .* 2 stages\)"):
        kt.build(spec, {**fused[0].to_dict(), "num_stages": 3})  # written by hand: checked as tune.configs


def test_a_structure_choice_is_lowered_once_for_the_space_and_its_records(monkeypatch):
    """Lowering builds index tables over every feature: legality, the cost model's records and `kt show` each
    lowered every structure choice again (a butterfly over n = 2**16 took seconds per pass)."""
    import kt
    import kt.codegen.blockgemm as blockgemm

    calls = []
    real = blockgemm.lower
    monkeypatch.setattr(blockgemm, "lower", lambda linear_map: calls.append(1) or real(linear_map))
    if hasattr(blockgemm, "_lowered"):
        blockgemm._lowered.cache_clear()
    kt.codegen.gemm._SPACES.clear()  # a space an earlier test made for this op is kept in the process
    spec = {"op": "butterfly", "dtype": "float16", "shape": {"batch": 64, "n": 1024}}
    plan = kt.plan(spec, budget=4, model="analytic")
    structures = {tuple(sorted(c.structure().items())) for c in plan.space.legal}
    assert len(calls) == len(structures) == 8  # levels 1 to 8, each once


def test_a_space_is_made_once_per_process_for_its_problem_device_and_triton(monkeypatch):
    """kt.nn planned every layer's space anew: a model of 24 blocks of one width judged the 25,200 GEMM configs
    24 times (a third of a second each). A space is now made once per family, problem, device profile and
    Triton version in a process; any of them changed makes another."""
    import kt
    import kt.codegen.gemm as gemm
    from kt.autotune.tune import tuning_space
    from kt.device import A100

    made = []
    real = gemm.SearchSpace.of
    monkeypatch.setattr(gemm.SearchSpace, "of", lambda *a: made.append(a[0]) or real(*a))
    monkeypatch.setattr(gemm, "_SPACES", type(gemm._SPACES)())
    spec = {"op": "dense", "dtype": "float16", "shape": {"m": 1000, "n": 1032, "k": 1000}}
    first = kt.space(spec, "h100")
    assert kt.space(spec, "h100") is first and len(made) == 1
    problem = first.problem
    assert tuning_space(problem, H100) is first and len(made) == 1  # the tuner's and kt.nn's way in
    assert kt.space(spec, "a100").legal != first.legal and len(made) == 2
    monkeypatch.setattr(gemm, "triton_version", lambda: (3, 6))  # its compiler decides which builds spill
    older = kt.space(spec, "h100")
    assert len(made) == 3 and older is not first
    assert tuning_space(problem, A100) is not None and len(made) == 4
    butterfly = {"op": "butterfly", "dtype": "float16", "shape": {"batch": 64, "n": 256}}
    assert kt.space(butterfly, "h100") is kt.space(butterfly, "h100") and len(made) == 5


def test_the_spaces_kept_are_bounded_by_what_they_hold_the_oldest_going_first(monkeypatch):
    """A process keeps its spaces while they hold no more than SPACES_BYTES: a GEMM space's configs are the
    family's own objects, shared (a reference each), a block-sparse problem carries its layout."""
    import kt
    import kt.codegen.gemm as gemm

    monkeypatch.setattr(gemm, "_SPACES", type(gemm._SPACES)())
    dense = [
        {"op": "dense", "dtype": "float16", "shape": {"m": 1000 + i, "n": 512, "k": 512}} for i in range(6)
    ]
    spaces = [kt.space(spec, "h100") for spec in dense[:2]]
    a, b = spaces
    shared = set(map(id, a.legal)) & set(map(id, b.legal))
    assert len(shared) > len(a.legal) // 2  # the same config objects, not copies
    sizes = [size for _, size in gemm._SPACES.values()]
    assert all(8 * len(s.legal) < size < 8 * len(s.legal) + 8192 for s, size in zip(spaces, sizes))
    monkeypatch.setattr(gemm, "SPACES_BYTES", sum(sizes) * 2)  # about four such spaces
    for spec in dense[2:]:
        kt.space(spec, "h100")
    kept = [space.problem.m for space, _ in gemm._SPACES.values()]
    assert kept == [1002, 1003, 1004, 1005]  # the oldest two went
    assert sum(size for _, size in gemm._SPACES.values()) <= gemm.SPACES_BYTES
    made = []
    real = gemm.SearchSpace.of
    monkeypatch.setattr(gemm.SearchSpace, "of", lambda *a: made.append(a[0]) or real(*a))
    kt.space(dense[3], "h100")  # kept: the latest now
    assert not made and [s.problem.m for s, _ in gemm._SPACES.values()][-1] == 1003
    # a block-sparse problem's layout counts: a 2048 x 2048 grid of blocks is a megabyte of hex
    sparse = {
        "op": "blocksparse",
        "dtype": "float16",
        "shape": {"batch": 16, "in": 32768, "out": 32768},
        "sparsity": {"block": [16, 16], "density": 0.5, "seed": 1},
    }
    space = kt.space(sparse, "h100")
    size = gemm._SPACES[next(reversed(gemm._SPACES))][1]
    assert size > len(space.problem.layout) > 2048 * 2048 // 4 - 1
    assert list(gemm._SPACES.values())[-1][0] is space  # kept alone though over the bound: the latest is kept


@pytest.mark.parametrize("device", ["h100", "a100"])
def test_judging_each_group_m_class_once_gives_every_configs_own_answer(device):
    """GemmFamily.judged judges one config of each group_m class (legality never reads group_m): its answers
    are those of `illegal_reason` on every config, for aligned and unaligned rows, column-major operands,
    float32 ieee and tf32, batches, tiny and skinny problems."""
    from kt.device import get_profile

    profile = get_profile(device)
    family = FAMILIES["gemm"]
    problems = [
        GemmProblem(1000, 1024, 768),
        GemmProblem(5, 72, 40, dtype="float32", precision="tf32", a_layout="col"),
        GemmProblem(4096, 4096, 4096, dtype="bfloat16", b_layout="col"),
        GemmProblem(33, 1000, 1000, dtype="float32"),
        GemmProblem(1, 4096, 11008, batch=3),
        GemmProblem(8192, 16, 8192, dtype="float32", precision="tf32"),
    ]
    for problem in problems:
        fast = list(family.judged(problem, profile))
        slow = [(config, illegal_reason(problem, config, profile)) for config in family.all_configs()]
        assert fast == slow, problem
        assert len({reason for _, reason in fast}) > 2  # several rules at work
