"""op.yaml validation: every bad input is one line that names the field and what is allowed."""

import re
import textwrap

import pytest

from kt.errors import SpecError, shown
from kt.spec import DenseShape, Layout, OpSpec, TuneOptions, load_spec, load_specs, parse_spec

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
        # the hint named a value that is refused too ("write 0, not 0.0"; a hundred-digit integer for 1e100)
        ("shape.m", 0.0, "shape.m: must be an integer from 1 to 16777216, got 0.0 (float)"),
        ("shape.m", 1e100, "shape.m: must be an integer from 1 to 16777216, got 1e+100 (float)"),
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


def test_limits_at_their_edges_in_the_words_of_the_field():
    """Each bound at and past its edge: a field's range, and the 128 GiB over all operands (each element at
    its dtype's size, the output counted)."""
    assert parse_spec(mutate("tune.power_cap_w", 2000)).tune.power_cap_w == 2000.0
    with pytest.raises(
        SpecError, match=r"^tune.power_cap_w: must be a number of watts from 1 to 2000, got 2001"
    ):
        parse_spec(mutate("tune.power_cap_w", 2001))
    vector = {"op": "butterfly", "dtype": "float16", "shape": {"batch": 8, "n": 2}}
    assert parse_spec(vector).shape.n == 2
    with pytest.raises(SpecError, match=r"^shape.n: must be an integer from 2 to 16777216, got 1"):
        parse_spec({**vector, "shape": {"batch": 8, "n": 1}})
    sparse = {"op": "blocksparse", "dtype": "float16", "shape": {"batch": 8, "in": 64, "out": 64}}
    seeded = parse_spec({**sparse, "sparsity": {"block": [16, 16], "density": 0.5, "seed": 2**32 - 1}})
    assert seeded.sparsity.seed == 2**32 - 1
    with pytest.raises(
        SpecError, match=r"^sparsity.seed: must be an integer from 0 to 4294967295, got 4294967296"
    ):
        parse_spec({**sparse, "sparsity": {"block": [16, 16], "density": 0.5, "seed": 2**32}})
    banded = {"block": [16, 16], "pattern": "banded"}
    assert parse_spec({**sparse, "sparsity": {**banded, "width": 4}}).sparsity.width == 4  # a 4x4 grid
    with pytest.raises(SpecError, match=r"^sparsity.width: must be an integer from 0 to 4, got 5"):
        parse_spec({**sparse, "sparsity": {**banded, "width": 5}})
    # a pattern's grid of blocks: 2**24 at the edge; past it, refused before its mask is made (a MemoryError
    # traceback at 1x1 blocks of a 2**24-square W)
    edge = {
        **sparse,
        "shape": {"batch": 1, "in": 4096, "out": 4096},
        "sparsity": {"block": [1, 1], "density": 0.5},
    }
    assert parse_spec(edge).sparsity.block == (1, 1)
    past = {
        **edge,
        "shape": {"batch": 1, "in": 1 << 24, "out": 1 << 24},
        "sparsity": {"block": [1, 1], "pattern": "diagonal"},
    }
    with pytest.raises(
        SpecError, match=r"^sparsity.block: \[1, 1\] cuts W \(16777216, 16777216\) into .* at most 16,777,216"
    ):
        parse_spec(past)
    # 3 * 2^34 float32 elements (192 GiB) are refused, as float16 (96 GiB) they are not
    cube = {"m": 1 << 17, "n": 1 << 17, "k": 1 << 17}
    assert parse_spec({**mutate("shape", cube), "dtype": "float16"}).shape.m == 1 << 17
    with pytest.raises(SpecError, match=r"^shape: the operands need 192.0 GiB; kt allows at most 128 GiB"):
        parse_spec({**mutate("shape", cube), "dtype": "float32"})
    # an output of 2^38 float16 elements (512 GiB) from inputs of 2 MiB
    with pytest.raises(SpecError, match=r"^shape: the operands need 512.0 GiB"):
        parse_spec(mutate("shape", {"m": 1 << 19, "n": 1 << 19, "k": 1}))


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
    with pytest.raises(
        SpecError, match=r"describes 2 ops .*: kt.load_spec reads one; kt.load_specs reads them all"
    ):
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


def test_a_profile_file_not_named_json_is_taken_as_the_command_line_takes_it(tmp_path):
    """`--device gpu-profile` reads an existing file whatever its name; op.yaml's `device:` refused it as an
    unknown device. A name that is no file is still refused, and an artifact's stored path reads back."""
    (tmp_path / "gpu-profile").write_text("{}")
    spec = load_spec(write(tmp_path, "op: dense\nshape: {m: 1, n: 1, k: 1}\ndevice: gpu-profile\n"))
    assert spec.device == str(tmp_path / "gpu-profile")
    (tmp_path / "gpu-profile").unlink()
    assert parse_spec(spec.to_dict(), check_files=False).device == spec.device
    with pytest.raises(SpecError, match=r"^device: unknown device '.*gpu-profile'; allowed: auto, h100"):
        parse_spec(spec.to_dict())
    with pytest.raises(SpecError, match=r"^device: unknown device 'h300'"):
        parse_spec({**VALID, "device": "h300"}, check_files=False)


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
            "name: ops 1 and 2 of the file are both named 'x'; each needs",
        ),
        (  # a name that is no text, in a file of several ops: a TypeError (one op's was refused in one line)
            "name: 5\nop: dense\nshape: {m: [16, 32], n: 64, k: 64}\n",
            "name: must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit (no spaces or "
            "'/'), got 5 (int); a name is text",
        ),
        (  # a name the file never wrote was blamed without a word on where it came from
            "op: dense\nshape: {m: 4, n: 4, k: 4}\n---\nop: dense\nshape: {m: 4, n: 4, k: 4}\n",
            "are both named 'dense_4x4x4_float16' (the name kt gives an op that has none); each needs",
        ),
    ],
)
def test_several_ops_errors_name_the_entry(tmp_path, text, words):
    from kt.spec import load_specs

    with pytest.raises(SpecError) as raised:
        load_specs(write(tmp_path, text, "bad.yaml"))
    assert words in str(raised.value) and str(raised.value).startswith(str(tmp_path / "bad.yaml"))


def test_a_name_two_ops_share_is_refused_as_the_second_is_built(tmp_path, monkeypatch):
    """Every op of a file was built before any name was compared: 20 large block-sparse ops of one default
    name took ~1 s each (their masks) before the second was refused."""
    import kt.spec as spec_module
    from kt.spec import load_specs

    built = []
    real = spec_module.parse_spec
    monkeypatch.setattr(spec_module, "parse_spec", lambda *a, **k: built.append(1) or real(*a, **k))
    text = (
        "op: blocksparse\nshape: [&s {batch: 1, in: 64, out: 64}"
        + ", *s" * 19
        + "]\nsparsity: {block: [16, 16], density: 0.5}\n"
    )
    with pytest.raises(
        SpecError, match="ops 1 and 2 of the file are both named 'blocksparse_64x64_b1_float16'"
    ):
        load_specs(write(tmp_path, text))
    assert len(built) == 2


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


def _alias_bomb(field, levels=7):
    """A few hundred bytes whose value under `field` is 9**levels strings once its aliases are expanded."""
    lines = ["op: dense", "shape: {m: 64, n: 64, k: 64}", f"{field}:", '  - &a ["lol", "lol", "lol", "lol"]']
    previous = "a"
    for anchor in "bcdefghij"[: levels - 1]:
        lines.append(f"  - &{anchor} [{', '.join(['*' + previous] * 9)}]")
        previous = anchor
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("field", ["dtype", "name", "device", "precision"])
def test_an_alias_bomb_is_quoted_short(tmp_path, field):
    """A 400-byte file made a 39 MB error line (dtype), or gigabytes and a MemoryError (name): every message
    quoted the user's value whole."""
    path = write(tmp_path, _alias_bomb(field), "bomb.yaml")
    assert path.stat().st_size < 600
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {field}: ") and len(message) < 600 and "\n" not in message


def test_a_batch_list_of_odd_values_names_the_entry_without_quoting_it_whole(tmp_path):
    """The names of a batch list's ops (`lr_b8`) were built from each value before it was validated."""
    from kt.spec import load_specs

    bomb = textwrap.indent(_alias_bomb("x").split("\n", 3)[3], "    ")  # the anchors' list, as batch[1]
    text = f"op: lowrank\nname: lr\nshape:\n  dims: [8, 2, 8]\n  batch:\n  - 8\n  -\n{bomb}"
    with pytest.raises(SpecError) as raised:
        load_specs(write(tmp_path, text, "batch.yaml"))
    assert "shape.batch[1]: must be an integer" in str(raised.value) and len(str(raised.value)) < 600


@pytest.mark.parametrize(
    "value, expected",
    [
        ("5e-1", 0.5),  # YAML 1.1 (PyYAML) read these three as text
        ("1e-1", 0.1),
        ("0.5", 0.5),
    ],
)
def test_numbers_are_read_as_yaml_1_2_writes_them(tmp_path, value, expected):
    text = f"op: blocksparse\nshape: {{batch: 8, in: 64, out: 64}}\nsparsity: {{block: [16, 16], density: {value}}}\n"
    assert load_spec(write(tmp_path, text)).sparsity.density == expected
    cap = load_spec(write(tmp_path, "op: dense\nshape: {m: 64, n: 64, k: 64}\ntune: {power_cap_w: 3.5e2}\n"))
    assert cap.tune.power_cap_w == 350.0
    hex_octal = load_spec(write(tmp_path, "op: dense\nshape: {m: 0x40, n: 0o100, k: 1_024}\n"))
    assert (hex_octal.shape.m, hex_octal.shape.n, hex_octal.shape.k) == (64, 64, 1024)


@pytest.mark.parametrize(
    "shape, words",
    [
        ("{m: 0100, n: 64, k: 64}", "0100 has a leading zero, which YAML 1.1 reads as octal"),  # was 64
        ("{m: 010, n: 64, k: 64}", "write 10, or 0o10 for octal"),  # was 8
        ("{m: 08, n: 64, k: 64}", "write 8 ("),
        ("{m: 64, n: 64, k: 1:00}", "shape.k: must be an integer from 1 to 16777216, got '1:00'"),  # was 60
        ("{m: 1e3, n: 64, k: 64}", "shape.m: must be an integer (write 1000, not 1000.0)"),  # was text
        # a prefix with no digit after it was an integer to the reader, then int() failed (a traceback)
        ("{m: 0x_, n: 64, k: 64}", "shape.m: must be an integer from 1 to 16777216, got '0x_'"),
        ("{m: 64, n: 0o_, k: 64}", "shape.n: must be an integer from 1 to 16777216, got '0o_'"),
    ],
)
def test_numbers_that_yaml_1_1_read_otherwise_are_refused(tmp_path, shape, words):
    with pytest.raises(SpecError) as raised:
        load_spec(write(tmp_path, f"op: dense\nshape: {shape}\n"))
    assert words.rstrip(" (") in str(raised.value)
    if words.endswith(" ("):
        assert "0o" not in str(raised.value)  # 08 has no octal reading


def test_what_kt_writes_reads_back_as_text_under_either_yaml():
    """kt's writer resolved as YAML 1.2 alone: yes, on, 0x_ and 1:00 went out bare, which PyYAML's own reader
    (YAML 1.1: an older kt, other tools) took for True, an int (a ValueError for 0x_) and 60."""
    import yaml

    from kt.spec import _StrictLoader, dump_yaml

    data = {
        "a": "yes",
        "b": "on",
        "c": "0x_",
        "d": "1:00",
        "e": "1e3",
        "f": "no",
        "g": "name",
        "h": True,
        "i": 5,
    }
    text = dump_yaml([data])
    assert yaml.safe_load(text) == data and yaml.load(text, Loader=_StrictLoader) == data


def test_only_true_and_false_are_booleans_as_in_yaml_1_2(tmp_path):
    """YAML 1.1 reads yes, no, on and off as booleans: `transposed: yes` was true without a word, and a name
    such as `no` was refused as a boolean. They are text, as YAML 1.2 reads them."""
    spec = "op: monarch\nshape: {batch: 8, n: 64, nblocks: 4}\n"
    assert load_spec(write(tmp_path, spec + "transposed: true\n")).transposed is True
    assert load_spec(write(tmp_path, spec + "transposed: False\n")).transposed is False
    for word in ("yes", "no", "on", "off", "y"):
        with pytest.raises(SpecError, match=rf"^.*transposed: must be true or false, got '{word}' \(str\)$"):
            load_spec(write(tmp_path, spec + f"transposed: {word}\n"))
    assert load_spec(write(tmp_path, spec + "name: no\n")).name == "no"


@pytest.mark.parametrize(
    "name, words",
    [
        ("4096", "got 4096 (int); a name is text: in YAML, quote it as you wrote it"),
        ("2024_01", "got 202401 (int); a name is text"),  # the underscore is YAML's digit separator
        ("false", "got False (bool); a name is text"),
        ("0100", 'write 100, or 0o100 for octal, or "0100" (quoted) for text such as a name'),
    ],
)
def test_a_name_yaml_reads_as_a_number_or_a_boolean_is_told_to_be_quoted(tmp_path, name, words):
    """The errors said "got 202401 (int)" for a name written 2024_01, or advised 100 for 0100, with no word of
    quoting, which keeps the text (the README allows a name starting with a digit)."""
    with pytest.raises(SpecError) as raised:
        load_spec(write(tmp_path, f"name: {name}\nop: dense\nshape: {{m: 16, n: 16, k: 16}}\n"))
    assert words in str(raised.value)
    quoted = load_spec(write(tmp_path, f'name: "{name}"\nop: dense\nshape: {{m: 16, n: 16, k: 16}}\n'))
    assert quoted.name == name


def test_merge_keys_work_and_a_key_beside_them_overrides(tmp_path):
    from kt.spec import load_specs

    text = "op: dense\nname: g\nshape:\n  - &base {m: 64, n: 32, k: 16}\n  - <<: *base\n    m: 128\n"
    specs = load_specs(write(tmp_path, text))
    assert [(s.shape.m, s.shape.n, s.shape.k) for s in specs] == [(64, 32, 16), (128, 32, 16)]
    with pytest.raises(SpecError, match="key 'm' is given twice"):
        load_specs(write(tmp_path, "op: dense\nshape:\n  <<: {n: 4, k: 4}\n  m: 1\n  m: 2\n"))


@pytest.mark.parametrize("key", ["Op", "OP", "'op '", "ops"])
def test_a_misspelt_op_key_is_named_with_the_fix(tmp_path, key):
    with pytest.raises(SpecError, match=r"unknown key \(did you mean 'op'\?\)"):
        load_spec(write(tmp_path, f"{key}: dense\nshape: {{m: 64, n: 64, k: 64}}\n"))
    text = f"op: sum\nterms:\n  - {{{key}: lowrank, shape: {{batch: 8, dims: [8, 2, 8]}}}}\n  - {{op: lowrank, shape: {{batch: 8, dims: [8, 2, 8]}}}}\n"
    with pytest.raises(SpecError, match=r"terms\[0\]\..+: unknown key \(did you mean 'op'\?\)"):
        load_spec(write(tmp_path, text, "sum.yaml"))


def test_a_name_ending_in_prev_is_refused():
    """artifacts/<name>.prev holds the artifact a new <name> replaced: an op of that name overwrote it."""
    with pytest.raises(SpecError, match=r"name: 'a.prev' ends in '.prev'.* a new 'a' replaces"):
        parse_spec({**VALID, "name": "a.prev"})
    assert parse_spec({**VALID, "name": "a.prev2"}).name == "a.prev2"


def test_a_name_too_long_for_its_suffix_says_so(tmp_path):
    from kt.spec import load_specs

    text = f"op: dense\nname: {'n' * 100}\nshape: [{{m: 64, n: 64, k: 64}}, {{m: 128, n: 64, k: 64}}]\n"
    with pytest.raises(
        SpecError, match=r"and the '_0' kt appends for shape\[0\] pass 100 characters; shorten"
    ):
        load_specs(write(tmp_path, text))
    text = f"op: lowrank\nname: {'n' * 98}\nshape: {{batch: [16, 32], dims: [8, 2, 8]}}\n"
    with pytest.raises(SpecError, match="shorten the name to 96 or fewer"):
        load_specs(write(tmp_path, text))


def test_paths_that_are_not_paths_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot be read"):
        load_spec(str(tmp_path / ("x" * 5000)))  # was OSError: File name too long
    for value, kind in ((b"op.yaml", "bytes"), (3, "int")):
        with pytest.raises(SpecError, match=f"expected the path of an op.yaml .*got {kind}"):
            load_spec(value)
    with pytest.raises(SpecError, match="got text of several lines") as raised:
        load_spec("op: dense\nshape: {m: 64, n: 64, k: 64}\n")
    assert "\n" not in str(raised.value)
    # a file whose name holds a line break is a file: it was refused as YAML text given for a path
    named = tmp_path / "two\nlines.yaml"
    named.write_text("op: dense\nshape: {m: 64, n: 64, k: 64}\n")
    assert load_spec(str(named)).shape.m == 64
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"# caf\xe9\nop: dense\nshape: {m: 64, n: 64, k: 64}\n")
    with pytest.raises(SpecError, match=r"latin.yaml: is not UTF-8 text \(byte 5 is not\)"):
        load_spec(latin)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfop: dense\nshape: {m: 64, n: 64, k: 64}\n")
    assert load_spec(bom).shape.m == 64


def test_numpy_numbers_are_numbers():
    np = pytest.importorskip("numpy")
    spec = parse_spec({"op": "dense", "shape": {"m": np.int64(64), "n": np.int32(32), "k": 16}})
    assert spec.shape == DenseShape(64, 32, 16) and type(spec.shape.m) is int
    sparse = {"op": "blocksparse", "shape": {"batch": 8, "in": 64, "out": 64}}
    sparse["sparsity"] = {"block": [16, 16], "density": np.float32(0.5)}
    assert parse_spec(sparse).sparsity.density == 0.5
    with pytest.raises(SpecError, match="write 64"):
        parse_spec({"op": "dense", "shape": {"m": np.float64(64.0), "n": 32, "k": 16}})


def test_written_yaml_reads_back_as_it_was(tmp_path):
    """Names such as 1e3 or 0100 are text; YAML 1.2 numbers would read them back as numbers or refuse them."""
    from kt.spec import dump_yaml, load_specs

    specs = [parse_spec({**VALID, "name": name}) for name in ("1e3", "0100", "1_0", "0x1f")]
    path = tmp_path / "back.yaml"
    path.write_text(dump_yaml([spec.to_dict() for spec in specs]))
    assert [s.name for s in load_specs(path)] == ["1e3", "0100", "1_0", "0x1f"]


@pytest.mark.parametrize(
    "text, says",
    [
        ("op: dense\nshape: {m: 8, n: 8, k: 8}\nsparsity: {block: [4, 4], density: 0.5}\n",
         "sparsity: applies to blocksparse, blocksparse_grad ops only (op is dense); allowed: op, name, dtype, "
         "shape, precision, device, tune, layout"),
        ("op: dense\nshape:\n\tm: 8\n", "not valid YAML (line 3, column 1): found character '\\t' that cannot start "
         "any token (YAML indents with spaces, not tabs)"),
    ],
)  # fmt: skip
def test_a_key_of_other_ops_and_a_tab_say_what_is_wrong(tmp_path, text, says):
    """`sparsity:` on a dense op was an "unknown key", read as a typo of a key that exists; a tab gave PyYAML's
    words alone."""
    path = tmp_path / "op.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: {says}"


BIG = "1" + "0" * 5000
HEX = "0x" + "f" * 4000
SPARSE = "op: blocksparse\nshape: {batch: 8, in: 64, out: 64}\n"
DENSE = "op: dense\nshape: {m: 64, n: 64, k: 64}\n"


@pytest.mark.parametrize(
    "text, words",
    [
        # past Python's 4,300 digits int() and repr() raise ValueError: a traceback, naming no field
        (
            f"op: dense\nshape: {{m: 1, n: 1, k: {BIG}}}\n",
            "line 2, column 24): a number of 5,001 digits is larger",
        ),
        (
            f"op: dense\nshape: {{m: {HEX}, n: 1, k: 1}}\n",
            "a number of 4,002 digits is larger than any field takes",
        ),
        (f"op: dense\nname: a\nshape: {{m: [{HEX}], n: 1, k: 1}}\n", "a number of 4,002 digits"),
        # pathlib's "File name too long" with the whole path, naming no field
        (SPARSE + f"sparsity: {{block: [8, 8], mask: {'a' * 300}.npy}}\n", "sparsity.mask: '"),
        (SPARSE + f"sparsity: {{block: [8, 8], density: 0.5, prune: {'a' * 300}.pt}}\n", "sparsity.prune: '"),
        # the range named an upper bound that the next check refused
        ("op: fft\nshape: {batch: 1, n: 0}\n", "shape.n: must be an integer from 2 to 1048576, got 0"),
        ("op: fft\nshape: {batch: 1, n: 16777216}\n", "shape.n: must be an integer from 2 to 1048576, got"),
        # tune.space and tune.configs named a range of 0 to 2**20 that the axis's own values then refused
        (
            DENSE + "tune: {space: {block_m: [-1]}}\n",
            "tune.space.block_m: -1 is not a value of this axis; allowed: 16,",
        ),
        (
            DENSE + "tune: {space: {blockm: [-1]}}\n",
            "tune.space.blockm: the gemm family has no axis 'blockm'",
        ),
        (
            DENSE + "tune: {configs: [{block_m: 64, block_n: 64, block_k: 64, tma: 2000000}]}\n",
            "tune.configs[0]: tma: 2000000 is not allowed; allowed: 0, 1, 2",
        ),
        # a sum has no shape to write; a batch list's entry is named
        (
            "op: sum\nterms:\n" + " - {op: lowrank, shape: {batch: 1048576, dims: [8192, 1, 8192]}}\n" * 2,
            "terms: the operands need 160.0 GiB",
        ),
        (
            "op: monarch\nname: x\nshape: {batch: [4, 16777216], n: 4096, nblocks: 1}\n",
            "shape.batch[1]: the operands need",
        ),
        ("op: monarch\nshape: {batch: 4, n: 4099, nblocks: 2}\n", "must divide n=4099, got 2 (e.g. 1, 4099)"),
        (
            SPARSE + "sparsity: {block: [8, 8], density: 0.5, width: 2}\n",
            "width: applies to the banded pattern only",
        ),
        (
            SPARSE + "sparsity: {block: [8, 8], pattern: banded, seed: 2}\n",
            "seed: applies to random (density)",
        ),
        (
            SPARSE,
            "sparsity: is required: {block: [bo, bi]} with one of density (and seed), pattern, mask, prune or",
        ),
        (
            "op: dense\nshape: {m: 09, n: 64, k: 64}\n",
            "09 has a leading zero, which YAML 1.1 reads as text and",
        ),
        # an explicit tag's value its constructor cannot read raised ValueError, IndexError, AttributeError or
        # KeyError: a traceback (kt's own !!int built its message with int() of the text)
        ('op: dense\nshape: {m: !!int "0x_", n: 4, k: 4}\n', "(line 2, column 12): '0x_' is not an integer"),
        ('op: dense\nshape: {m: !!int "0b101", n: 4, k: 4}\n', "'0b101' is not an integer (!!int)"),
        ('op: dense\nshape: {m: !!float "", n: 4, k: 4}\n', "'' cannot be read as !!float"),
        ('op: dense\nshape: {m: !!timestamp "x", n: 4, k: 4}\n', "'x' cannot be read as !!timestamp"),
        (
            'op: butterfly\ntransposed: !!bool "maybe"\nshape: {batch: 4, n: 8}\n',
            "'maybe' cannot be read as !!bool",
        ),
        # a key with a line break is quoted in the field's path (the error came on two lines)
        ('op: dense\nshape: {m: 4, n: 4, k: 4, "a\\nb": 1}\n', "shape.'a\\nb': unknown key"),
        (DENSE + 'tune: {space: {"blk\\nm": [16]}}\n', "tune.space.'blk\\nm': the gemm family has no axis"),
        (DENSE + 'tune: {configs: [{"blk\\nm": x}]}\n', "tune.configs[0].'blk\\nm': must be an integer"),
        (
            DENSE + 'tune: {space: {"": [16]}}\n',
            "tune.space: axis names must be non-empty strings, got an empty",
        ),
        # a sum's batch list: the sum takes no shape (it named shape.batch[0]); a bad name as written
        (
            "op: sum\nterms:\n"
            + " - {op: lowrank, shape: {batch: 4, dims: [8, 2, 8]}}\n" * 2
            + "shape: {batch: [4, 8]}\n",
            "op.yaml: shape: applies to dense,",
        ),
        ('op: dense\nname: "g g"\nshape: {m: [4, 8], n: 4, k: 4}\n', "got 'g g' (str)"),
        # an empty document counts: the bad op is the file's third (it said document 2)
        ("---\n" + DENSE + "---\n---\nop: dense\nshape: {m: 8, n: 4}\n", "document 3: shape.k: is required"),
    ],
)
def test_what_an_audit_of_the_reader_found_is_one_line_naming_the_field(tmp_path, text, words):
    with pytest.raises(SpecError) as raised:
        load_specs(write(tmp_path, text))
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert len(str(raised.value)) < 400


def test_a_name_written_as_a_date_is_text_as_in_yaml_1_2(tmp_path):
    """PyYAML's YAML 1.1 reads 2024-01-01 as a date: the name was refused as one, with no hint."""
    assert load_spec(write(tmp_path, "name: 2024-01-01\n" + DENSE)).name == "2024-01-01"


def test_an_integer_too_large_to_print_is_quoted_by_its_bits():
    assert shown(16**4000) == "<an integer of 16,001 bits>" and shown(12345) == "12345"
    with pytest.raises(
        SpecError, match=r"^shape.m: must be an integer from 1 to 16777216, got <an integer of"
    ):
        parse_spec({"op": "dense", "shape": {"m": 16**4000, "n": 1, "k": 1}})
    configs = [{"block_b": 16, "block_n": 16, "block_k": 16, "levels": 16**4000}]
    with pytest.raises(SpecError, match=r"^tune.configs\[0\].levels: <an integer of 16,001 bits> is larger"):
        parse_spec({"op": "butterfly", "shape": {"batch": 64, "n": 256}, "tune": {"configs": configs}})


def test_an_alias_bomb_of_bad_configs_or_axes_is_refused_at_the_first_one(tmp_path):
    """Every config and axis was converted before any name was checked: one bad config (1,000 fields) aliased
    10,000 times took ~17 s and 745 MB to be refused; each is now checked as it is read. A float past 64 bits
    was told to be written as an integer that was then refused too."""
    import time

    fields = ", ".join(f"f{i}: {i}" for i in range(1000))
    configs = "[&c {" + fields + "}" + ", *c" * 9999 + "]"
    values = "&v [" + ", ".join(str(i) for i in range(10000)) + "]"
    space = "{a0: " + values + ", " + ", ".join(f"a{i}: *v" for i in range(1, 1000)) + "}"
    for tune, message in (
        ("{configs: " + configs + "}", "tune.configs[0]: unknown key 'f0'"),
        ("{space: " + space + "}", "tune.space.a0: the gemm family has no axis 'a0'"),
    ):
        path = write(tmp_path, f"op: dense\nshape: {{m: 64, n: 64, k: 64}}\ntune: {tune}\n")
        start = time.perf_counter()
        with pytest.raises(SpecError, match=re.escape(message)):
            load_spec(path)
        assert time.perf_counter() - start < 8, "refused at the first bad entry"  # 14-17 s before, ~0.5 s now
    good = "{block_m: 64, block_n: 64, block_k: 32, num_warps: 4, num_stages: 3}"
    path = write(
        tmp_path, f"op: dense\nshape: {{m: 64, n: 64, k: 64}}\ntune: {{configs: [{good}, {{block_m: 7}}]}}\n"
    )
    with pytest.raises(SpecError, match=re.escape("tune.configs[1]")):
        load_spec(path)  # the index of the config in the list, checked one by one
    path = write(tmp_path, "op: dense\nshape: {m: 64, n: 64, k: 64}\ntune: {space: {block_m: [1e20]}}\n")
    with pytest.raises(SpecError, match=r"tune.space.block_m\[0\]: 1e\+20 is larger than any value it takes"):
        load_spec(path)
