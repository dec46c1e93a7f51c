"""Device profiles: built-ins, matching a GPU by name, calibrated profile files and their errors."""

import dataclasses
import json

import pytest

import kt
from kt.device import BUILTIN, H100, H200, ProfileError, get_profile, load_profile, match_gpu, save_profile


def test_builtins_carry_the_datasheet_limits():
    assert (H100.sm_count, H100.smem_per_block, H100.compute_capability) == (132, 232448, 90)
    assert H100.peak("float16") == H100.peak("bfloat16") == 989.4e12
    assert H100.peak("float32", "tf32") == 494.7e12 and H100.peak("float32") == 66.9e12
    assert H200.dram_bandwidth > H100.dram_bandwidth and H200.peak_flops == H100.peak_flops
    assert H100.acc_regs_limit == 128
    assert set(BUILTIN) == {"h100", "h200"} and get_profile() is H100


@pytest.mark.parametrize(
    "name,expected",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_a_gpu_is_matched_to_its_builtin_profile_by_name(name, expected):
    profile = match_gpu(name)
    assert (profile.name if profile else None) == expected


def test_a_saved_profile_loads_back_equal_and_specs_can_name_it(tmp_path):
    mine = dataclasses.replace(
        H100, name="lab-h100", dram_bandwidth=3.0e12, source="calibrated on 2026-11-01"
    )
    path = save_profile(mine, tmp_path / "lab.json")
    assert load_profile(path) == mine
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nshape: {m: 64, n: 64, k: 64}\ndevice: lab.json\n")
    assert kt.resolve_profile(kt.load_spec(spec).device) == mine
    assert kt.plan(spec, budget=2).space.device == mine


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.update(bogus=1), "unknown key 'bogus'"),
        (lambda d: d.pop("sm_count"), "missing key 'sm_count'"),
        (lambda d: d.update(sm_count=-4), "sm_count must be a positive number, got -4"),
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


def test_profile_file_errors(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ProfileError, match="is not valid JSON"):
        load_profile(tmp_path / "broken.json")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    with pytest.raises(ProfileError, match="is not valid JSON"):
        load_profile(tmp_path / "binary.json")
    with pytest.raises(kt.DeviceError, match="unknown device profile 'b200'"):
        kt.resolve_profile("b200")
