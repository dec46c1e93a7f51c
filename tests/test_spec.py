"""op.yaml validation: every bad input is one line that names the field and what is allowed."""

import textwrap

import pytest

from kt.errors import SpecError
from kt.spec import DenseShape, Layout, OpSpec, TuneOptions, load_spec, parse_spec

VALID = {
    "op": "dense",
    "name": "gemm_4096",
    "dtype": "float16",
    "shape": {"m": 4096, "n": 4096, "k": 4096},
    "layout": {"a": "row", "b": "col"},
    "tune": {"budget": 64, "objective": "time", "seed": 0},
}


def write(tmp_path, text, name="op.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_issue_example_parses_to_the_documented_values(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """
        op: dense
        name: gemm_4096          # optional, names the artifact
        dtype: float16           # float16 | bfloat16 | float32
        shape: {m: 4096, n: 4096, k: 4096}   # optional batch: N
        layout: {a: row, b: col} # optional; col = stored transposed; kernels take any strides
        tune: {budget: 64, objective: time, seed: 0}   # objective: time | energy | edp
    """,
        )
    )
    assert spec == OpSpec(
        "dense",
        "gemm_4096",
        "float16",
        DenseShape(4096, 4096, 4096),
        Layout("row", "col"),
        "ieee",
        "auto",
        TuneOptions(64, "time", 0),
    )
    assert spec.source.endswith("op.yaml")


def test_defaults_fill_everything_optional():
    spec = parse_spec({"op": "dense", "shape": {"m": 3, "n": 5, "k": 7, "batch": 2}})
    assert (spec.dtype, spec.layout, spec.tune, spec.device) == ("float16", Layout(), TuneOptions(), "auto")
    assert spec.name == "dense_3x5x7_b2_float16"


def test_to_dict_round_trips_and_signature_ignores_name_and_tuning():
    spec = parse_spec(VALID)
    assert parse_spec(spec.to_dict()) == spec
    renamed = spec.replace(name="other", tune={"budget": 3})
    assert renamed.signature() == spec.signature() and renamed != spec


def mutate(path, value):
    data = {
        **VALID,
        "shape": dict(VALID["shape"]),
        "tune": dict(VALID["tune"]),
        "layout": dict(VALID["layout"]),
    }
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("op", "conv2d", "op: 'conv2d' (str) is not supported; allowed: dense"),
        ("op", KeyError, "op: is required; allowed: dense"),
        (
            "dtype",
            "float8",
            "dtype: 'float8' (str) is not supported (did you mean 'float32'?); allowed: float16, bfloat16, float32",
        ),
        ("shape.m", -3, "shape.m: must be an integer from 1 to 16777216, got -3"),
        ("shape.m", 0, "shape.m: must be an integer from 1 to 16777216, got 0"),
        ("shape.n", "4096", "shape.n: must be an integer from 1 to 16777216, got '4096' (str)"),
        ("shape.k", 64.0, "shape.k: must be an integer (write 64, not 64.0)"),
        ("shape.k", True, "shape.k: must be an integer from 1 to 16777216, got True (bool)"),
        ("shape.k", KeyError, "shape.k: is required"),
        ("shape.batch", 70000, "shape.batch: must be an integer from 1 to 65535, got 70000"),
        ("shape.mm", 3, "shape.mm: unknown key (did you mean 'm'?); allowed: m, n, k, batch"),
        ("shape", [4096, 4096], "shape: must be a mapping, got [4096, 4096] (list)"),
        ("shape.m", 1 << 24, "shape: the operands need"),
        (
            "layout.b",
            "column",
            "layout.b: 'column' (str) is not supported (did you mean 'col'?); allowed: row, col",
        ),
        (
            "tune.objective",
            "power",
            "tune.objective: 'power' (str) is not supported; allowed: time, energy, edp",
        ),
        ("tune.budget", 0, "tune.budget: must be an integer from 1 to 100000, got 0"),
        ("tune.seed", -1, "tune.seed: must be an integer from 0 to 4294967295, got -1"),
        ("tune.iters", 5, "tune.iters: unknown key; allowed: budget, objective, seed, power_cap_w"),
        ("tune.power_cap_w", 0, "tune.power_cap_w: must be a number of watts from 1 to 2000, got 0"),
        (
            "tune.power_cap_w",
            "300W",
            "tune.power_cap_w: must be a number of watts from 1 to 2000, got '300W'",
        ),
        ("name", "my kernel", "name: must be 1-100 letters, digits"),
        ("name", "../escape", "name: must be 1-100 letters, digits"),
        ("name", "_private", "starting with a letter or digit"),
        ("precision", "tf32", "precision: applies to float32 only (dtype is float16)"),
        (
            "device",
            "l40s",
            "device: unknown device 'l40s'; allowed: auto, h100, h200, h100-pcie, h100-nvl, h200-nvl, a100 or a "
            "profile .json",
        ),
        ("device", "missing.json", "missing.json' not found (make one with `kt calibrate --out`)"),
        ("shap", 1, "shap: unknown key (did you mean 'shape'?)"),
    ],
)
def test_each_bad_field_gets_one_line_naming_it(path, value, message):
    with pytest.raises(SpecError) as info:
        parse_spec(mutate(path, value))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_power_cap_is_kept_in_watts():
    assert parse_spec(mutate("tune.power_cap_w", 450)).tune.power_cap_w == 450.0
    assert parse_spec(mutate("tune.power_cap_w", None)).tune.power_cap_w is None


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+\): expected"):
        load_spec(write(tmp_path, "op: dense\nshape: {m: 1, n: 2\n", "bad.yaml"))
    with pytest.raises(SpecError, match="key 'm' is given twice"):
        load_spec(write(tmp_path, "op: dense\nshape: {m: 1, m: 2, n: 2, k: 3}\n", "dup.yaml"))
    with pytest.raises(SpecError, match="two.yaml: document 2: shape: is required"):
        load_spec(write(tmp_path, "op: dense\nshape: {m: 1, n: 2, k: 3}\n---\nop: dense\n", "two.yaml"))
    two = "op: dense\nshape: {m: 1, n: 2, k: 3}\n---\nop: dense\nshape: {m: 4, n: 2, k: 3}\n"
    with pytest.raises(SpecError, match=r"describes 2 ops .* `kt tune` and kt.load_specs\(\) read them all"):
        load_spec(write(tmp_path, two, "two.yaml"))
    with pytest.raises(SpecError, match="empty.yaml: is empty"):
        load_spec(write(tmp_path, "# nothing\n", "empty.yaml"))
    with pytest.raises(SpecError, match="the top level must be a mapping, got"):
        load_spec(write(tmp_path, "- op: dense\n", "list.yaml"))
    with pytest.raises(SpecError, match=r"shape.m: must be an integer .*got 0"):
        load_spec(write(tmp_path, "op: dense\nshape: {m: 0, n: 1, k: 1}\n", "zero.yaml"))


def test_a_device_profile_path_is_relative_to_the_spec(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.json").write_text("{}")
    spec = load_spec(write(tmp_path, "op: dense\nshape: {m: 1, n: 1, k: 1}\ndevice: profiles/mine.json\n"))
    assert spec.device == str(tmp_path / "profiles" / "mine.json")


def test_yaml_oddities_are_one_line_errors(tmp_path):
    with pytest.raises(SpecError, match="a key must be a plain value, got list"):
        load_spec(write(tmp_path, "op: dense\nshape: {m: 1, n: 1, k: 1, [a]: 1}\n", "listkey.yaml"))
    with pytest.raises(SpecError, match="nested too deeply|not valid YAML"):
        load_spec(write(tmp_path, "op: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml"))
    with pytest.raises(SpecError, match="name: must be 1-100 letters"):
        parse_spec({**VALID, "name": "abc\n"})


def test_a_profile_path_is_stored_absolute_and_may_be_absent_when_reading_back(tmp_path):
    (tmp_path / "gpu.json").write_text("{}")
    spec = load_spec(write(tmp_path, "op: dense\nshape: {m: 1, n: 1, k: 1}\ndevice: gpu.json\n"))
    assert spec.device == str(tmp_path / "gpu.json")
    assert spec.replace(name="other").device == spec.device
    (tmp_path / "gpu.json").unlink()
    with pytest.raises(SpecError, match="not found"):
        parse_spec(spec.to_dict())
    assert parse_spec(spec.to_dict(), check_files=False).device == spec.device


def test_a_file_of_several_ops_gives_one_spec_each_named_apart(tmp_path):
    from kt.spec import load_specs, parse_specs

    text = (
        "name: g\nop: dense\nshape: {m: [16, 40], n: 48, k: 32}\n---\n"
        "op: monarch\nshape: [{batch: 64, n: 256, nblocks: 16}, {batch: 8, n: 64, nblocks: 4}]\n---\n"
        "name: l\nop: lowrank\nshape: {batch: [16, 64], dims: [64, 8, 64]}\n"
    )
    specs = load_specs(write(tmp_path, text, "many.yaml"))
    assert [s.name for s in specs] == [
        "g_m16",
        "g_m40",
        "monarch_16x16x16_16x16x16_b64_float16",
        "monarch_4x16x16_4x16x16_b8_float16",
        "l_b16",
        "l_b64",
    ]
    assert [s.shape.m for s in specs[:2]] == [16, 40] and [s.shape.batch for s in specs[4:]] == [16, 64]
    assert all(s.source == str(tmp_path / "many.yaml") for s in specs)
    named = parse_specs({"name": "m", "op": "monarch", "shape": [{"batch": 8, "n": 64, "nblocks": 4}] * 2})
    assert [s.name for s in named] == ["m_0", "m_1"]
    assert parse_specs({"op": "dense", "shape": {"m": 1, "n": 2, "k": 3}})[0] == parse_spec(
        {"op": "dense", "shape": {"m": 1, "n": 2, "k": 3}}
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("op: dense\nshape: {m: [16, 0], n: 4, k: 4}\n", "shape.m[1]: must be an integer from 1"),
        (
            "op: monarch\nshape: [{batch: 8, n: 64, nblocks: 4}, {batch: 8, n: 60, nblocks: 8}]\n",
            "shape[1].nblocks",
        ),
        ("op: monarch\nshape: []\n", "shape: is an empty list"),
        ("op: lowrank\nshape: {batch: [], dims: [4, 2, 4]}\n", "shape.batch: is an empty list"),
        (
            "name: x\nop: dense\nshape: {m: 4, n: 4, k: 4}\n---\nname: x\nop: dense\nshape: {m: 8, n: 4, k: 4}\n",
            "name: ops 1 and 2 of the file are both named 'x'",
        ),
    ],
)
def test_several_ops_errors_name_the_entry(tmp_path, text, words):
    from kt.spec import load_specs

    with pytest.raises(SpecError) as raised:
        load_specs(write(tmp_path, text, "bad.yaml"))
    assert words in str(raised.value) and str(raised.value).startswith(str(tmp_path / "bad.yaml"))


def test_the_dtype_table_without_torch_agrees_with_torch():
    """kt.dtypes keeps names and sizes as plain data (spec checks load no torch): they must be torch's."""
    import torch

    from kt.dtypes import DTYPES, ITEMSIZE, SHORT_NAMES, dtype_name, torch_dtype

    assert set(ITEMSIZE) == set(SHORT_NAMES) == {*DTYPES, "complex64"}
    for name, size in ITEMSIZE.items():
        assert torch_dtype(name) is getattr(torch, name) and torch_dtype(name).itemsize == size
    assert [dtype_name(torch_dtype(name)) for name in DTYPES] == list(DTYPES)
    assert dtype_name(torch.half) == "float16"
    for bad in (torch.complex64, torch.float64, torch.int8, "float16"):
        with pytest.raises(KeyError, match="is not one of kt's dtypes"):
            dtype_name(bad)
    with pytest.raises(KeyError):
        torch_dtype("float64")
