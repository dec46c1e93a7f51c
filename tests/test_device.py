"""Device profiles: built-ins, matching a GPU by name, calibrated profile files and their errors."""

import dataclasses
import json
import math

import pytest

import kt
from kt.device import (
    BUILTIN,
    H100,
    H200,
    ProfileError,
    get_profile,
    guess_gpu,
    load_profile,
    match_gpu,
    save_profile,
)


def test_builtins_carry_the_datasheet_limits():
    assert (H100.sm_count, H100.smem_per_block, H100.compute_capability) == (132, 232448, 90)
    assert H100.peak("float16") == H100.peak("bfloat16") == 989.4e12
    assert H100.peak("float32", "tf32") == 494.7e12 and H100.peak("float32") == 66.9e12
    assert H200.dram_bandwidth > H100.dram_bandwidth and H200.peak_flops == H100.peak_flops
    assert H100.acc_regs_limit == 128
    assert (
        set(BUILTIN) == {"h100", "h200", "h100-pcie", "h100-nvl", "h200-nvl", "a100"}
        and get_profile() is H100
    )
    assert BUILTIN["h100-pcie"].sm_count == 114 and BUILTIN["h100-pcie"].dram_bandwidth == 2.0e12
    assert BUILTIN["h100-nvl"].peak("float16") < H100.peak("float16")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),  # once taken for the SXM card: 114 SMs, not 132
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA H200 NVL", "h200-nvl"),
        ("NVIDIA GH200 480GB", None),  # a variant with no datasheet here: only a stated guess
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-SXM4-40GB", None),  # less bandwidth than the 80 GB card's datasheet: only a guess
        ("NVIDIA L40S", None),
    ],
)
def test_a_gpu_is_matched_to_its_builtin_profile_by_name(name, expected):
    profile = match_gpu(name)
    assert (profile.name if profile else None) == expected


def test_a_variant_without_a_profile_gets_the_nearest_as_a_stated_guess(monkeypatch, caplog):
    import logging

    import torch

    from kt.autotune import gpuinfo

    assert guess_gpu("NVIDIA GH200 480GB").name == "h200" and guess_gpu("NVIDIA L40S") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpuinfo, "visible_gpu", lambda: gpuinfo.GpuInfo("NVIDIA GH200 480GB", 90))
    with caplog.at_level(logging.WARNING, logger="kt"):
        assert kt.resolve_profile("auto").name == "h200"
    assert any("as a guess" in r.getMessage() and "kt calibrate" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(gpuinfo, "visible_gpu", lambda: gpuinfo.GpuInfo("NVIDIA L40S", 89))
    with pytest.raises(kt.KtError, match="no built-in profile for 'NVIDIA L40S'"):
        kt.resolve_profile("auto")
    # a MIG slice (as torch names it) is a share of the board: it took the whole board's profile, 132 SMs
    for slice_ in (
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
        "NVIDIA H100 NVL MIG 1g.12gb",
        "NVIDIA H200 MIG 3g.71gb",
    ):
        assert match_gpu(slice_) is None and guess_gpu(slice_) is None
        monkeypatch.setattr(gpuinfo, "visible_gpu", lambda name=slice_: gpuinfo.GpuInfo(name, 90))
        with pytest.raises(
            kt.KtError, match=r"no built-in profile for .* \(a MIG slice: a share of the board's"
        ):
            kt.resolve_profile("auto")


def test_a_saved_profile_loads_back_equal_and_specs_can_name_it(tmp_path):
    mine = dataclasses.replace(
        H100, name="lab-h100", dram_bandwidth=3.0e12, source="calibrated on 2026-11-01"
    )
    path = save_profile(mine, tmp_path / "lab.json")
    assert load_profile(path) == mine
    # written as every file kt writes (atomic_write): with the user's umask, not mkstemp's 0600
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nshape: {m: 64, n: 64, k: 64}\ndevice: lab.json\n")
    assert kt.resolve_profile(kt.load_spec(spec).device) == mine
    assert kt.plan(spec, budget=2).space.device == mine


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.update(bogus=1), "unknown key 'bogus'"),
        (lambda d: d.pop("sm_count"), "missing key 'sm_count'"),
        (lambda d: d.update(sm_count=-4), "sm_count must be an integer from 1 to 1e18, got -4"),
        # each of these passed, then failed later: in the cost model's features (a traceback) or in every compile
        (lambda d: d.update(sm_count=1.5), "sm_count must be an integer from 1 to 1e18, got 1.5"),
        (
            lambda d: d.update(dram_bandwidth=math.inf),
            "dram_bandwidth must be a number from 1 to 1e18, got inf",
        ),
        (
            lambda d: d.update(tdp_w=math.nan),
            "tdp_w must be a number from 1 to 1e18 \\(or 0: not known\\), got nan",
        ),
        (lambda d: d.update(tdp_w=-1), "tdp_w must be a number from 1 to 1e18 \\(or 0: not known\\), got -1"),
        # less than a warp, and a register file too small for the threads: accepted, and the occupancy estimate
        # then ran one program per SM; a name with "/" went into the model files' folder path
        (
            lambda d: d.update(max_threads_per_sm=1),
            "max_threads_per_sm must be a multiple of 32 from 1024 to 2048",
        ),
        (
            lambda d: d.update(max_threads_per_sm=1000),
            "max_threads_per_sm must be a multiple of 32 .* got 1000$",
        ),
        (
            lambda d: d.update(regs_per_sm=1),
            r"regs_per_sm must be at least 32 per thread .* \(65536; .* got 1$",
        ),
        (lambda d: d.update(name="../h100"), "name must be a letter or digit, then .* got '../h100'$"),
        (lambda d: d.update(name="lab h100"), "name must be a letter or digit"),
        (lambda d: d["peak_flops"].update(tf32=math.inf), "peak_flops.tf32 must be a number from 1 to 1e18"),
        # a traceback from float32 features (1e40 SMs), and a prediction of inf for every config (1e-300 B/s)
        (lambda d: d.update(sm_count=10**40), "sm_count must be an integer from 1 to 1e18, got 10+$"),
        (
            lambda d: d.update(dram_bandwidth=1e-300),
            "dram_bandwidth must be a number from 1 to 1e18, got 1e-300",
        ),
        (
            lambda d: d["peak_flops"].update(float16=1e308),
            "peak_flops.float16 must be a number from 1 to 1e18",
        ),
        (
            lambda d: d.update(compute_capability=7),
            "compute_capability must be 10 \\* major \\+ minor .* got 7$",
        ),
        (lambda d: d.update(compute_capability=1000), "one of 80, 86, 87, 89, 90: .* got 1000"),
        (lambda d: d.update(compute_capability=100), "one of 80, 86, 87, 89, 90: .*wgmma.*; got 100"),
        (lambda d: d.update(compute_capability=75), "one of 80, 86, 87, 89, 90: .* got 75"),
        # no GPU is sm_85: the profile passed, then ptxas refused every build ("not a recognized processor")
        (lambda d: d.update(compute_capability=85), "one of 80, 86, 87, 89, 90: .* got 85"),
        # legality then spoke of "an accumulator over 0 registers per thread", and made 240 KiB tiles legal
        (lambda d: d.update(max_regs_per_thread=1), "max_regs_per_thread must be from 32 to 255 .* got 1$"),
        (lambda d: d.update(max_regs_per_thread=256), "max_regs_per_thread must be from 32 to 255"),
        # an AMD wavefront's 64 passed: legality then counted half the accumulator registers per thread
        (lambda d: d.update(warp_size=64), "warp_size must be 32 .* got 64$"),
        (
            lambda d: d.update(smem_per_block=245760),
            "smem_per_block .245760. must not exceed smem_per_sm .233472.",
        ),
        (
            lambda d: d["peak_flops"].pop("tf32"),
            "peak_flops must map exactly float16, bfloat16, tf32, float32",
        ),
    ],
)
def test_malformed_profiles_are_refused_with_the_key_named(tmp_path, change, message):
    data = H100.to_dict()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_a_profile_whose_power_limit_is_not_known_loads(tmp_path):
    """`kt calibrate` on a card without a built-in profile whose NVML gives no power limit (an L40S, a MIG
    slice) wrote tdp_w 0.0, which loading then refused ("tdp_w must be a number from 1 to 1e18"): the minutes
    of calibration were lost. 0 means not known, as a profile that leaves tdp_w out already loaded."""
    unknown = dataclasses.replace(H100, name="l40s-lab", tdp_w=0.0, source="calibrated on 2026-12-05")
    assert load_profile(save_profile(unknown, tmp_path / "l40s.json")) == unknown
    data = unknown.to_dict()
    del data["tdp_w"]
    (tmp_path / "bare.json").write_text(json.dumps(data))
    assert load_profile(tmp_path / "bare.json").tdp_w == 0.0
    data["tdp_w"] = False  # not a number, though it equals 0
    (tmp_path / "bool.json").write_text(json.dumps(data))
    with pytest.raises(
        ProfileError, match="tdp_w must be a number from 1 to 1e18 \\(or 0: not known\\), got False"
    ):
        load_profile(tmp_path / "bool.json")


def test_profile_file_errors(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ProfileError, match="is not valid JSON"):
        load_profile(tmp_path / "broken.json")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    with pytest.raises(ProfileError, match="is not valid JSON"):
        load_profile(tmp_path / "binary.json")
    # a key given twice: json keeps the last value (sm_count 132, then 1 loaded as 1), without a word
    data = json.dumps(dataclasses.asdict(dataclasses.replace(H100, name="dup")))
    (tmp_path / "dup.json").write_text(data[:-1] + ', "sm_count": 1}')
    with pytest.raises(ProfileError, match=r"dup.json': 'sm_count' is given twice; give it once$"):
        load_profile(tmp_path / "dup.json")
    # auto named among the allowed, as op.yaml's device's error names it (the command line's left it out)
    with pytest.raises(kt.DeviceError, match="unknown device profile 'b200'; allowed: auto, h100, h200, "):
        kt.resolve_profile("b200")
    # past 4,300 digits, and nested past the recursion limit: tracebacks
    (tmp_path / "bigint.json").write_text(data.replace('"sm_count": 132', '"sm_count": ' + "9" * 5000))
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    for name in ("bigint.json", "deep.json"):
        with pytest.raises(ProfileError, match=rf"{name}' is not valid JSON"):
            load_profile(tmp_path / name)
    with pytest.raises(ProfileError, match="'/dev/null' is not a regular file"):  # it was "not found"
        load_profile("/dev/null")
    # a folder, or nothing (Path("") is "."), was "not found": both exist
    (tmp_path / "profiles.json").mkdir()
    for name, words in (
        (tmp_path, "is a folder; give h100"),
        ("", "'' is empty"),
        (tmp_path / "profiles.json", "is a folder"),
    ):
        with pytest.raises(ProfileError, match=words):
            get_profile(name)
    with pytest.raises(
        kt.SpecError, match="device: profile file .* is a folder; give the profile .json file in it"
    ):
        kt.parse_spec(
            {"op": "dense", "shape": {"m": 1, "n": 1, "k": 1}, "device": str(tmp_path / "profiles.json")}
        )


def test_a_profile_that_would_not_load_back_is_refused_before_minutes_of_calibration(tmp_path):
    """`kt calibrate --name "lab h100"` measured for minutes, then wrote a profile that every command refused."""
    from click.testing import CliRunner

    from kt.cli import main

    result = CliRunner().invoke(main, ["calibrate", "--out", str(tmp_path / "p.json"), "--name", "lab h100"])
    assert result.exit_code == 2 and "Invalid value for '--name': must be a letter or digit" in result.stderr
    with pytest.raises(ProfileError, match="name must be a letter or digit"):
        save_profile(dataclasses.replace(H100, name="lab h100"), tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


def test_a_device_too_long_for_a_file_name_inline_json_or_a_profile_object_is_handled_in_one_line(tmp_path):
    """A device string past the file system's name limit raised a bare OSError ("File name too long") from
    kt.space and printed it under the CLI naming no field; inline JSON (README's --device NAME|JSON) was taken
    for a file name; a DeviceProfile made in code was refused the same way; --device AUTO was unknown."""
    import subprocess
    import sys

    spec = {"op": "dense", "shape": {"m": 16, "n": 16, "k": 16}}
    with pytest.raises(
        kt.DeviceError, match=r"^device: 'yyy.*' is no profile \(File name too long\); allowed: auto, h100"
    ):
        kt.space(spec, device="y" * 300)
    with pytest.raises(kt.SpecError, match=r"^device: 'zzz.*' is no profile file \(File name too long\)$"):
        kt.space({**spec, "device": "z" * 300 + ".json"})
    with pytest.raises(
        kt.DeviceError, match="^device: a profile is read from a .json file, not from the command"
    ):
        kt.space(spec, device='{"name": "a100"}')
    assert kt.space(spec, device=BUILTIN["a100"]).device == BUILTIN["a100"]
    braced = tmp_path / "{lab}.json"  # a real file whose name starts with a brace is no inline JSON
    save_profile(BUILTIN["a100"], braced)
    assert get_profile(str(braced)) == BUILTIN["a100"]
    from kt.autotune.inspection import _profile

    assert _profile("AUTO") is None and _profile("auto") is None  # "AUTO" took h100 without a GPU
    op = tmp_path / "op.yaml"
    op.write_text("op: dense\nshape: {m: 16, n: 16, k: 16}\n")
    done = subprocess.run(
        [sys.executable, "-m", "kt.cli", "space", str(op), "--device", "x" * 300 + ".json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        done.returncode == 2
        and done.stderr.startswith("kt: error: device: 'xxx")
        and done.stderr.count("\n") == 1
    )
    done = subprocess.run(
        [sys.executable, "-m", "kt.cli", "space", str(op), "--device", "AUTO"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_one_profile_has_one_key_whatever_its_numbers_spelling_and_home_paths_and_objects_are_read_as_files(
    tmp_path, monkeypatch
):
    """700 and 700.0 are one profile, but its key (the rows' target, its model file's name) hashed them apart:
    a profile pretty-printed by jq (which writes 3350000000000.0 as 3350000000000) was another device, its
    configs measured again. `--device=~/gpu.json` was not found; a profile object made in code was not checked
    (0 SMs gave NaN predictions); one named "H100" showed as "H100" though it is not the built-in."""
    profile = dataclasses.replace(H100, name="lab")
    path = save_profile(profile, tmp_path / "lab.json")
    data = json.loads(path.read_text())
    whole = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in data.items()}
    whole["peak_flops"] = {k: int(v) for k, v in data["peak_flops"].items()}
    (tmp_path / "jq.json").write_text(json.dumps(whole))
    assert load_profile(tmp_path / "jq.json").key == load_profile(path).key == profile.key
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_profile("~/lab.json") == profile
    with pytest.raises(ProfileError, match="sm_count must be an integer"):
        get_profile(dataclasses.replace(H100, name="x", sm_count=0))
    upper = dataclasses.replace(BUILTIN["a100"], name="H100")
    assert upper.label == upper.key != "H100"


def test_a_calibrated_profile_with_a_built_in_name_shows_its_key_and_odd_limits_show_in_bytes():
    """An A100 profile named h100 showed as "h100" in every heading ("TMA kernel: ...; h100 is sm_80"); a limit
    of 100000 bytes read "shared memory over 97 KiB"."""
    from kt.codegen.gemm import GemmConfig, illegal_reason
    from kt.ir.problems import GemmProblem

    renamed = dataclasses.replace(BUILTIN["a100"], name="h100")
    assert renamed.label == renamed.key != "h100" and BUILTIN["h100"].label == "h100"
    problem = GemmProblem(m=256, n=256, k=256, dtype="float16")
    tma = GemmConfig(64, 64, 32, 8, 4, 3, 1, 1)
    assert illegal_reason(problem, tma, renamed).endswith(f"; {renamed.key} is sm_80")
    small = dataclasses.replace(BUILTIN["h100"], smem_per_block=100000)
    big = GemmConfig(256, 256, 128, 8, 8, 5, 1, 0)
    assert illegal_reason(problem, big, small) == "shared memory over 100000 bytes"
