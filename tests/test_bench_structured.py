"""benchmarks/structured_vs_torch.py without a GPU: its butterfly case is timed twice, with the dense blocks cached
(back-to-back calls on the same twiddles) and rebuilt before every call (as in training, where the twiddles change
every step). Here both runs are checked to compute the op, and the uncached one to rebuild its blocks every call.
Nothing is timed."""

import pytest
from conftest import benchmark_module

import kt
from kt.autotune.checking import relative_error

SPEC = {"op": "butterfly", "dtype": "float32", "shape": {"batch": 3, "n": 16}}


def blocks_in_cache(kernel):
    return [entry[2] for entry in kernel.module._BLOCKS_CACHE.values()]


def test_the_butterfly_is_timed_with_its_blocks_cached_and_rebuilt_every_call():
    bench = benchmark_module("structured_vs_torch")
    spec = kt.parse_spec(SPEC)
    kernel = kt.build(spec, device="h100")
    args = kt.random_args(spec, seed=0, device="cpu")
    expected = kt.reference(spec)(*args)
    runs = bench.kt_runs(spec, kernel, args)
    assert set(runs) == {"kt", "kt uncached"}

    for run in runs.values():
        assert relative_error(run(), expected) < 1e-5

    runs["kt"]()
    cached = blocks_in_cache(kernel)
    runs["kt"]()
    assert [id(b) for b in blocks_in_cache(kernel)] == [id(b) for b in cached]  # the same blocks, not rebuilt

    runs["kt uncached"]()
    first = blocks_in_cache(kernel)
    runs["kt uncached"]()
    second = blocks_in_cache(kernel)
    assert first and second and not {id(b) for b in first} & {id(b) for b in second}  # rebuilt every call


def test_only_the_butterfly_gets_an_uncached_run():
    bench = benchmark_module("structured_vs_torch")
    ops = {kt.parse_spec(case.spec).op for case in bench.cases()}
    assert ops == {"monarch", "butterfly", "fft"}
    spec = kt.parse_spec({"op": "monarch", "dtype": "float32", "shape": {"batch": 3, "n": 16, "nblocks": 4}})
    kernel = kt.build(spec, device="h100")
    assert set(bench.kt_runs(spec, kernel, kt.random_args(spec, seed=0, device="cpu"))) == {"kt"}


def test_the_probe_checks_every_named_config_through_the_dry_run(tmp_path):
    """benchmarks/structured_probe.py --smoke: each config of a case rendered and checked (24 rows, nothing
    timed), its legality under today's rules beside it."""
    import csv

    probe = benchmark_module("structured_probe")
    assert probe.cfg("b16n32k32g16w4s3-s32") == probe.BlockGemmConfig(16, 32, 32, 16, 4, 3, split=32)
    out = tmp_path / "probe.csv"
    assert probe.main(["--smoke", "--only", "n=1024", "--workers", "1", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    _, keys = probe.CASES["fft fp16 n=1024 rows=1000"]
    assert [r["config"] for r in rows] == [*keys, "pytorch"]
    assert not any(r["runtime_ms"] for r in rows)
    assert all(float(r["wall_s"]) > 0 for r in rows if r["config"] != "pytorch"), "the build-and-check time"
    # a config legal today builds and checks; one the rules now refuse may fail to build (that is the probe's point)
    assert all(r["status"] == "ok" for r in rows if r["legal"] == "yes"), rows
    assert {r["status"].split(":")[0] for r in rows} <= {"ok", "out_of_resources"}, rows


def test_the_layout_probe_checks_both_layouts_agree_in_the_interpreter(tmp_path):
    """benchmarks/layout_probe.py --smoke: the same kernel on x and out stored row-major and feature-major gives
    the same values, and matches PyTorch's path (nothing timed)."""
    import csv

    probe = benchmark_module("layout_probe")
    out = tmp_path / "layout.csv"
    assert probe.main(["--smoke", "--only", "n=1024", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["config"] for r in rows] == probe.CASES["fft fp16 n=1024 rows=1000"][2]
    assert all(float(r["rel_err_layouts"]) == 0 and float(r["rel_err_pytorch"]) < 2e-3 for r in rows), rows
    assert all(r["out_in_place"] == "True" for r in rows), "a feature-major out is written, not copied into"
    assert not any("ms" in key for key in rows[0])


def test_the_layout_probe_shows_row_major_stores_scalar_and_feature_major_ones_whole(tmp_path):
    """benchmarks/layout_probe.py --ptx: Monarch's last launch stores y through a strided map; row-major, its
    sm_90 build stores 2-byte scalars, feature-major 16-byte vectors, and with feature-major ends (`-fm`) so do
    the kernel's launches on row-major x and y (the evidence BENCHMARKS.md cites)."""
    import csv

    from kt.autotune.compile import target_compiler_available

    if not target_compiler_available():
        pytest.skip("needs Triton's NVIDIA backend (ptxas)")
    probe = benchmark_module("layout_probe")
    out = tmp_path / "ptx.csv"
    assert probe.main(["--ptx", "--only", "monarch", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    last = {(r["config"], r["layout"]): r["global_ops"] for r in rows if r["launch"] == "1"}
    copies = {r["config"]: r["global_ops"] for r in rows if r["launch"] == "2" and r["layout"] == "row-major"}
    configs = probe.CASES["monarch n=4096 nb=64"][2]
    assert any(c.endswith("-fm") for c in configs) and any(not c.endswith("-fm") for c in configs)
    for config in configs:
        # feature-major ends: from row-major x and y too, the last stage stores whole vectors, and its copy
        # into y (a third launch) loads and stores them
        scalar = not config.endswith("-fm")
        assert ("st.global.b16" in last[config, "row-major"]) == scalar, last
        assert "st.global.v4.b32" in last[config, "feature-major"], last
        assert "st.global.b16" not in last[config, "feature-major"], last
        assert (config in copies) == (not scalar), copies
        assert scalar or "b16" not in copies[config] and "st.global.v4.b32" in copies[config], copies


def test_the_layout_probe_shows_padded_intermediates_move_vectors_at_a_row_count_not_a_multiple_of_16(
    tmp_path,
):
    """benchmarks/layout_probe.py --ptx on the 1000-row FFT: intermediates' rows are padded to 1008, so the
    second launch reads the first's output with cp.async alone (1000-row intermediates were read and written
    with 2-byte scalars); with feature-major ends no launch moves a scalar from row-major x to row-major y."""
    import csv

    from kt.autotune.compile import target_compiler_available

    if not target_compiler_available():
        pytest.skip("needs Triton's NVIDIA backend (ptxas)")
    probe = benchmark_module("layout_probe")
    out = tmp_path / "ptx.csv"
    assert probe.main(["--ptx", "--only", "rows=1000", "--csv", str(out)]) == 0
    rows = [r for r in csv.DictReader(out.read_text().splitlines()) if r["layout"] == "row-major"]
    plain, ends = probe.CASES["fft fp16 n=1024 rows=1000"][2]
    ops = {(r["config"], int(r["launch"])): r["global_ops"] for r in rows}
    # plain: launch 0 reads x through its strided map (scalars) and writes the intermediate in vectors;
    # launch 1 reads it in vectors and writes y through its strided map (scalars)
    assert "ld.global.b16" in ops[plain, 0] and "st.global.b16" not in ops[plain, 0], ops
    assert "ld.global" not in ops[plain, 1] and "cp.async" in ops[plain, 1], ops
    launches = [ops[key] for key in ops if key[0] == ends]
    assert len(launches) == 6, ops  # two stages, two planes copied in, two out
    assert not any(".b16" in launch for launch in launches), ops
