"""`kt tune --from-model`: every nn.Linear and kt.nn layer a model runs, as ops at their batch buckets (issue 18)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import kt_cli, quiet_tune_options
from torch import nn

import kt.nn as knn
from kt.errors import KtError
from kt.nn.discover import load_factory, model_ops

ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        block = nn.Linear(32, 32)
        self.seq = nn.Sequential(
            nn.Linear(24, 32),
            nn.ReLU(),
            block,
            block,  # the same module twice: one op
            nn.Linear(32, 32),  # another module with the same math: tuned once, listed with the first
            knn.MonarchLinear(32, 48, 4),
        )
        self.side = nn.Linear(24, 4).double()  # float64: not a kt dtype

    def forward(self, x):
        self.side(x.double())
        return self.seq(x)


def plain(name: str) -> str:
    """An op's name without the six hex digits of its spec (`_name`)."""
    return re.sub(r"_[0-9a-f]{6}(-\d+)?$", lambda m: m.group(1) or "", name)


def test_the_example_trains_the_model_its_factory_gives_kt_tune_from_model():
    """main() drew the teacher before the student, so the student's block-sparse layer kept other blocks than
    example_model()'s: the artifact `kt tune --from-model` made for it was never selected."""
    model, _, _ = load_factory(f"{ROOT / 'examples' / 'structurize_mlp.py'}:example_model")
    example = sys.modules["kt_model_structurize_mlp"]
    student, _, _ = example.student_and_teacher(64, 32)
    ours, theirs = model.state_dict(), student.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_two_models_of_one_factory_name_give_their_ops_their_own_names():
    """Ops were named after the factory and the module alone: two models whose factories were both
    `example_model` (the README's name) tuned into one folder replaced each other's artifacts, and kt.nn then
    passed the first model's over. The same op keeps its name from run to run."""
    first = model_ops(nn.Sequential(nn.Linear(24, 32)), torch.randn(8, 24), name_prefix="example_model")
    second = model_ops(nn.Sequential(nn.Linear(24, 48)), torch.randn(8, 24), name_prefix="example_model")
    again = model_ops(nn.Sequential(nn.Linear(24, 32)), torch.randn(8, 24), name_prefix="example_model")
    assert plain(first.specs[0].name) == plain(second.specs[0].name) == "example_model.0_b16"
    assert first.specs[0].name != second.specs[0].name and first.specs[0].name == again.specs[0].name


def test_model_ops_finds_each_linear_and_kt_layer_at_its_bucket_once():
    torch.manual_seed(0)
    found = model_ops(Net(), torch.randn(5, 3, 24))  # 15 rows: bucket 16
    assert [plain(s.name) for s in found.specs] == ["seq.0_b16", "seq.2_b16", "seq.5_b16"]
    dense, square, monarch = found.specs
    assert (dense.op, dense.shape.m, dense.shape.n, dense.shape.k) == ("dense", 16, 32, 24)
    assert (dense.layout.a, dense.layout.b) == ("row", "col")  # F.linear multiplies by W^T
    assert found.modules[found.specs[1].name] == ["seq.2", "seq.4"]
    assert monarch.op == "monarch" and monarch.shape.batch == 16
    assert found.skipped == [("side", "torch.float64 is not a kt dtype (float16, bfloat16, float32)")]


def test_a_dense_layer_counts_all_leading_dims_and_names_never_clash():
    """A DenseLinear fed (batch, seq, features) was tuned at the bucket of seq alone (its kernel then never
    selected), and fed a 1-D input it failed with IndexError; two modules whose names differ only in a character
    kt replaces ("a b", "a_b") gave one artifact name, so the second tune replaced the first."""
    dense = knn.DenseLinear(32, 32)
    found = model_ops(dense, torch.randn(4, 8, 32))  # 32 rows
    assert [(plain(s.name), s.shape.m) for s in found.specs] == [("model_b32", 32)]
    found = model_ops(dense, torch.randn(32))  # one row
    assert [(plain(s.name), s.shape.m) for s in found.specs] == [("model_b16", 16)]
    inner = nn.Module()
    inner.add_module("a b", nn.Linear(16, 32))
    inner.add_module("a_b", nn.Linear(16, 64))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return getattr(self.inner, "a b")(x).sum() + self.inner.a_b(x).sum()

    found = model_ops(Two(), torch.randn(8, 16))
    assert [plain(s.name) for s in found.specs] == ["inner.a_b_b16", "inner.a_b_b16"]  # apart by their hash
    assert len(set(found.modules)) == 2 and sorted(found.modules.values()) == [["inner.a b"], ["inner.a_b"]]
    # an empty batch is named as what is wrong, and a model that fails on its input is one line
    assert model_ops(Two(), torch.randn(0, 16)).skipped[0] == (
        "inner.a b",
        "its example input has no rows (an empty batch)",
    )
    with pytest.raises(
        KtError, match="the model failed on its example input: RuntimeError: mat1 and mat2"
    ) as e:
        model_ops(Two(), torch.randn(8, 17))
    # and where: an exception without a message said "AttributeError: " and no more
    assert re.search(
        r"\(at modules/linear\.py:\d+: return F\.linear\(input, self\.weight, self\.bias\)\)$", str(e.value)
    )

    class Silent(nn.Module):
        def forward(self, x):
            raise AttributeError

    with pytest.raises(KtError) as e:
        model_ops(Silent(), torch.randn(8, 16))
    assert re.fullmatch(
        r"--from-model: the model failed on its example input: AttributeError \(at tests/test_from_model\.py:\d+: "
        r"raise AttributeError\)",
        str(e.value),
    ), str(e.value)


def test_a_factory_is_loaded_from_a_file_or_a_module_and_bad_ones_are_one_line_errors(tmp_path):
    model, args, kwargs = load_factory(f"{ROOT / 'examples' / 'structurize_mlp.py'}:example_model")
    assert isinstance(model, nn.Module) and args[0].shape == (48, 32) and kwargs == {}
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "import torch\n"
        "def factory():\n    return 3\n"
        "def not_a_module():\n    return 42, torch.zeros(2)\n"
        "def raises():\n    raise ValueError('no model today')\n"
    )
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    (tmp_path / "models.txt").write_text("def f():\n    pass\n")
    for target, words in [
        ("nothing", "must be MODULE:FACTORY"),
        (f"{tmp_path / 'missing.py'}:f", "not found"),
        ("no_such_module_anywhere:f", "cannot import"),
        # the file's own functions are listed (a typo named none)
        (f"{ROOT / 'examples' / 'structurize_mlp.py'}:nope", "has no function 'nope'; its functions: "),
        (
            f"{wrong}:torch",
            "'torch' in '.*wrong.py' is not callable \\(module\\); FACTORY must be a function",
        ),
        # a folder or a file of another kind was read as a module name ("cannot import '/tmp/...'")
        (f"{tmp_path}:f", "is a folder; give path/to/file.py:FACTORY or package.module:FACTORY"),
        (f"{tmp_path / 'models.txt'}:f", "is not a .py file; give path/to/file.py:FACTORY"),
        (f"{tmp_path / 'nowhere'}:f", "nowhere' not found; give path/to/file.py:FACTORY"),
        (f"{wrong}:factory", "must return \\(model, example_input\\), model an nn.Module; got int$"),
        # each of these was a traceback (exit 1), or named the tuple where its first item was wrong
        (
            f"{wrong}:not_a_module",
            "must return \\(model, example_input\\), model an nn.Module; got \\(int, Tensor\\)",
        ),
        (f"{wrong}:raises", "raises\\(\\) raised ValueError: no model today$"),
        (f"{broken}:f", "broken.py' failed to load: SyntaxError: "),
    ]:
        with pytest.raises(KtError, match=words):
            load_factory(target)


def test_kt_tune_from_model_tunes_every_op_of_the_example_and_prints_a_summary(tmp_path):
    done = kt_cli(
        "tune",
        "--from-model",
        str(ROOT / "examples" / "structurize_mlp.py") + ":example_model",
        "--budget",
        "1",
        *quiet_tune_options(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "example_model: 5 ops to tune" in done.stdout and "5 ops" in done.stdout
    assert "structurize_mlp.py:example_model: 5 ops, tuned" in done.stdout  # it said "None: 5 ops"
    made = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert [plain(name) for name in made] == [f"example_model.{i}_b64" for i in (0, 2, 4, 6, 8)]
    ops = [json.loads((tmp_path / "art" / name / "meta.json").read_text())["op"] for name in made]
    assert ops == ["dense", "lowrank", "blocksparse", "monarch", "dense"]
    assert done.stdout.count("checked") >= 5  # CPU: every op checked, none timed
    # the two dense ops are plain nn.Linear layers, which kt.nn never used: the tune said nothing of it
    assert "note: 2 plain nn.Linear layers (0, 8): torch runs them and reads no artifact" in " ".join(
        done.stdout.split()
    )


def test_kt_tune_without_ops_is_a_usage_error():
    done = kt_cli("tune")
    assert done.returncode == 2
    assert "give OP_YAML files or folders, or --from-model FILE.py:FACTORY" in done.stderr


def test_rows_add_buckets_the_example_does_not_reach(tmp_path, monkeypatch):
    """A generation's decode steps run one row per sequence, which a prompt-sized example never reaches: its ops
    were tuned at the prompt's bucket alone, and kt.nn ran the decode steps on the cost model's pick."""
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), knn.MonarchLinear(32, 48, 4))
    example = torch.randn(2, 50, 24)  # 100 rows: bucket 128
    names = [plain(s.name) for s in model_ops(model, example, extra_rows=(1, 3, 100, 5000)).specs]
    # 1 and 3 share bucket 16, 100 is the example's own: once each
    assert names == ["0_b128", "0_b16", "0_b8192", "2_b128", "2_b16", "2_b8192"], names
    summaries = [s.summary() for s in model_ops(model, example, extra_rows=(1,)).specs]
    assert summaries == [
        "dense 128x32x24 float32 (a: row, b: col)",
        "dense 16x32x24 float32 (a: row, b: col)",
        "monarch 128 rows, 32 -> 48 (w1 4x8x8, w2 4x12x8) float32",
        "monarch 16 rows, 32 -> 48 (w1 4x8x8, w2 4x12x8) float32",
    ]
    from click.testing import CliRunner

    from kt.cli import main

    (tmp_path / "mdl.py").write_text(
        "import torch\n\ndef f():\n    return torch.nn.Linear(16, 8), torch.randn(4, 16)\n"
    )
    for rows, said in [
        ("0", "'0' is no row count: give integers from 1 to 16,777,216 separated by commas, e.g. 1,8,64"),
        ("1,x", "'x' is no row count"),
        ("\u00b2", "'\u00b2' is no row count"),  # a digit to str.isdigit, not to int()
        ("16777217", "'16777217' is no row count"),
    ]:
        done = CliRunner().invoke(main, ["tune", "--from-model", f"{tmp_path / 'mdl.py'}:f", "--rows", rows])
        assert done.exit_code == 2 and said in " ".join(done.output.split()), done.output
        assert "Traceback" not in done.output
    (tmp_path / "d.yaml").write_text("name: d\nop: dense\nshape: {m: 16, n: 16, k: 16}\n")
    done = CliRunner().invoke(main, ["tune", str(tmp_path / "d.yaml"), "--rows", "1"])
    assert (
        done.exit_code == 2
        and "--rows adds row counts to --from-model's ops; an OP_YAML gives its own batch" in done.output
    )


def test_op_yaml_files_and_a_model_tune_together(tmp_path):
    """OP_YAML beside --from-model failed with a TypeError sorting the ops' sources (a model's ops have none);
    a factory named like an emoji code (`:factory:`) was printed as one."""
    (tmp_path / "d.yaml").write_text("name: d\nop: dense\nshape: {m: 16, n: 16, k: 16}\n")
    (tmp_path / "mdl.py").write_text(
        "import torch\n\ndef factory():\n    return torch.nn.Linear(16, 8), torch.randn(4, 16)\n"
    )
    done = kt_cli(
        "tune",
        str(tmp_path / "d.yaml"),
        "--from-model",
        f"{tmp_path / 'mdl.py'}:factory",
        "--budget",
        "1",
        "--backend",
        "dryrun",
        *quiet_tune_options(tmp_path),
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "mdl.py:factory: 1 op to tune" in done.stdout and "2 sources: 2 ops, tuned" in done.stdout
    names = sorted(p.name for p in (tmp_path / "art").iterdir())  # a model's op names end in its digest
    assert len(names) == 2 and names[0] == "d" and re.fullmatch(r"factory_b16_[0-9a-f]{6}", names[1]), names


class _Keywords(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.dense = knn.DenseLinear(8, 16)

    def forward(self, x):
        return self.dense(x=self.linear(input=x))


class _Autocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.dense = nn.Linear(32, 32), knn.DenseLinear(32, 32)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.dense(self.linear(x))


def test_layers_called_with_keywords_or_under_autocast_are_found_as_they_run():
    """Layers called as layer(x=...) were missed (model_ops found no op); under torch.autocast the weight's
    float32 was tuned while the layers ran in bfloat16 (the artifact was never used)."""
    found = model_ops(_Keywords(), torch.randn(20, 8))
    assert [(plain(s.name), s.shape.n) for s in found.specs] == [("linear_b32", 8), ("dense_b32", 16)]
    assert found.plain == ["linear"]  # torch runs it: kt.nn reads its artifact only as a DenseLinear
    found = model_ops(_Autocast(), torch.randn(20, 32))
    assert [(plain(s.name), s.dtype) for s in found.specs] == [("linear_b32", "bfloat16")]  # one op: one math
    assert found.modules[found.specs[0].name] == ["linear", "dense"]


def test_a_float64_linear_under_autocast_is_not_recorded_in_autocasts_dtype():
    """Autocast casts no float64 input: a float64 nn.Linear runs in float64 under it, and was recorded as a
    bfloat16 op (float64 is no kt dtype: it is skipped, as outside autocast)."""

    class Double(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(32, 48).double()

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.linear(x)

    found = model_ops(Double(), torch.randn(20, 32, dtype=torch.float64))
    assert not found.specs and "float64" in found.skipped[0][1]


def test_names_start_with_the_factory_and_stay_within_100_characters():
    """Two models' nn.Sequential both gave 0_b32 (one tune replaced the other's artifact in a shared folder); a
    long module path at a bucket of seven digits, or its -2 twin, passed 100 characters (a SpecError blamed on the
    model)."""
    found = model_ops(nn.Sequential(nn.Linear(8, 8)), torch.randn(4, 8), name_prefix="encoder")
    assert [plain(s.name) for s in found.specs] == ["encoder.0_b16"]
    deep = nn.Module()
    deep.add_module("a" * 95, nn.Linear(8, 8))
    deep.add_module("a" * 96, nn.Linear(8, 16))

    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = deep

        def forward(self, x):
            return [layer(x) for layer in self.d.children()]

    found = model_ops(Deep(), torch.randn(600_000, 8))
    names = [s.name for s in found.specs]
    assert len(names) == 2 and all(len(n) <= 100 for n in names), names
    assert all(re.search(r"_b1048576_[0-9a-f]{6}$", n) for n in names) and names[0] != names[1], names
    nothing = model_ops(nn.Linear(0, 4), torch.randn(20, 0))  # 20 rows of no features: was "no rows"
    assert nothing.skipped == [("(model)", "no features (0 in, 4 out): no kernel to tune")]


def test_a_model_file_imports_the_modules_beside_it_and_a_script_that_exits_is_one_line(
    tmp_path, monkeypatch, capsys
):
    """A model split over files failed (No module named 'helper'), as did MODULE:FACTORY of a module in the
    current folder; a file running argparse at its top level printed argparse's usage as if it were kt's, and a
    factory calling sys.exit(3) ended kt with exit code 3 and no word."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "helper_mod.py").write_text("from torch import nn\ndef block():\n    return nn.Linear(8, 8)\n")
    (folder / "mine.py").write_text(
        "import torch\nfrom helper_mod import block\ndef f():\n    return block(), torch.randn(4, 8)\n"
    )
    model, args, _ = load_factory(f"{folder / 'mine.py'}:f")
    assert isinstance(model, nn.Linear) and args[0].shape == (4, 8)
    monkeypatch.chdir(folder)
    model, _, _ = load_factory("mine:f")  # MODULE:FACTORY from the current folder, as python -m finds it
    assert isinstance(model, nn.Linear)
    (folder / "argp.py").write_text(
        "import argparse\nargparse.ArgumentParser().add_argument('--w', required=True)\n"
        "argparse.ArgumentParser().parse_args(['--nope'])\n"
    )
    with pytest.raises(KtError, match="argp.py' failed to load: SystemExit\\(2\\): it exited") as raised:
        load_factory(f"{folder / 'argp.py'}:f")
    # argparse's usage and error lines printed under kt's name before kt's own: now its last line is in kt's
    assert str(raised.value).endswith(": error: unrecognized arguments: --nope)"), raised.value
    assert capsys.readouterr().err == ""
    (folder / "exits.py").write_text("import sys\ndef f():\n    sys.exit(3)\n")
    with pytest.raises(KtError, match="f\\(\\) raised SystemExit\\(3\\)"):
        load_factory(f"{folder / 'exits.py'}:f")


def test_a_linear_past_kts_limits_is_skipped_with_why_and_the_others_are_found():
    """A model that ran had its nn.Linear(64, 20_000_000) reported as "the model failed on its example
    input" (kt's own shape limit, raised in the hook), and none of its other ops was tuned. Built on meta."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 20_000_000))
        found = model_ops(model, torch.empty(8, 64))
    assert [plain(s.name) for s in found.specs] == ["0_b16"]
    ((path, why),) = found.skipped
    assert path == "2" and why.startswith("beyond kt's limits: shape.n: must be an integer from 1 to "), why


def test_a_model_with_nothing_to_tune_is_one_line_with_no_empty_table_before_it(tmp_path):
    """It printed the table's header (op | what | modules), then the error."""
    (tmp_path / "relu.py").write_text(
        "import torch\nfrom torch import nn\n\ndef nolinear():\n    return nn.ReLU(), torch.randn(2, 3)\n"
    )
    done = kt_cli(
        "tune",
        "--from-model",
        f"{tmp_path / 'relu.py'}:nolinear",
        "--out",
        str(tmp_path / "art"),
        "--db",
        str(tmp_path / "t.db"),
    )
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.strip().splitlines() == [
        f"kt: error: --from-model: {tmp_path / 'relu.py'}:nolinear runs no nn.Linear or kt.nn layer kt can tune"
    ]
    assert not (tmp_path / "art").exists()


def test_a_torchscript_model_is_one_line_asking_for_the_eager_module(tmp_path):
    """A factory returning torch.jit.script's module was a 42-line traceback (register_forward_hook is not
    supported on ScriptModules), and a traced one said the model "runs no nn.Linear"."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(4, 8)
    inside = nn.Sequential(torch.jit.script(nn.Sequential(nn.Linear(8, 8))), nn.Linear(8, 8))
    with pytest.raises(KtError, match=r"^--from-model: the model's '0' is a TorchScript module"):
        model_ops(inside, x)  # a RuntimeError traceback from register_forward_hook
    for made in (torch.jit.trace(model, x), torch.jit.script(model)):
        with pytest.raises(
            KtError, match=r"^--from-model: the model is a TorchScript module \(\w+, from torch.jit"
        ):
            model_ops(made, x)
    factory = tmp_path / "scripted.py"
    factory.write_text(
        "import torch\nfrom torch import nn\n"
        "def f():\n    return torch.jit.script(nn.Sequential(nn.Linear(8, 8))), torch.randn(2, 8)\n"
    )
    done = kt_cli("tune", "--from-model", f"{factory}:f", "--db", str(tmp_path / "t.db"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (
        done.stderr.strip().splitlines()[-1].startswith("kt: error: --from-model: the model is a TorchScript")
    )


def test_a_subclass_of_linear_is_tuned_and_its_note_says_structurize_leaves_it_alone(tmp_path):
    """A subclass of nn.Linear was tuned and listed among the plain nn.Linear layers, whose note says kt.nn uses
    their artifacts once `structurize(model, {"*": DenseLinear.from_dense})` makes them DenseLinear: structurize
    leaves a subclass alone, so that artifact was never used. A Linear under torch.nn.utils.parametrize (its
    ParametrizedLinear computes nn.Linear's math) is plain: structurize replaces it."""
    factory = tmp_path / "wn.py"
    factory.write_text(
        "import torch\nfrom torch import nn\n"
        "class Scaled(nn.Linear):\n"
        "    def forward(self, x):\n"
        "        return 2 * super().forward(x)\n"
        "def wn():\n"
        "    m = nn.Sequential(Scaled(32, 64), nn.ReLU(), nn.utils.parametrizations.weight_norm(nn.Linear(64, 32)))\n"
        "    return m, torch.randn(8, 32)\n"
    )
    model, args, _ = load_factory(f"{factory}:wn")
    found = model_ops(model, *args)
    assert found.plain == ["0", "2"] and found.subclassed == ["0"]
    done = kt_cli(
        "tune",
        "--from-model",
        f"{factory}:wn",
        "--budget",
        "1",
        *quiet_tune_options(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = " ".join(done.stdout.split())
    assert "note: 1 plain nn.Linear layer (2): torch runs it and reads no artifact" in said
    assert (
        "note: 1 layer of a subclass of nn.Linear (0): torch runs it and reads no artifact, and kt.nn.structurize "
        "leaves it alone; where one computes F.linear(x, weight, bias), set kt.nn.DenseLinear.from_dense(layer)"
    ) in said


def test_a_module_target_imports_though_a_file_of_its_name_is_in_the_folder(tmp_path, monkeypatch):
    """`bench:make` was refused as "not a .py file" where an extensionless script `bench` sat beside bench.py;
    the file is named only when the import fails. A name set to None is no function, not "missing"."""
    (tmp_path / "kt_target_mod.py").write_text(
        "import torch\nfrom torch import nn\nnothing = None\n"
        "class Helper:\n    pass\n"
        "def make():\n    return nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4)\n"
    )
    (tmp_path / "kt_target_mod").write_text("#!/bin/sh\n")
    (tmp_path / "notes.txt").write_text("x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model, args, _ = load_factory("kt_target_mod:make")
    assert isinstance(model, nn.Sequential) and args[0].shape == (2, 4)
    with pytest.raises(
        KtError, match=r"^--from-model: 'nothing' in 'kt_target_mod' is not callable \(NoneType\)"
    ):
        load_factory("kt_target_mod:nothing")
    with pytest.raises(KtError, match=r"has no function 'nope'; its functions: make$"):  # no classes listed
        load_factory("kt_target_mod:nope")
    with pytest.raises(KtError, match=r"^--from-model: 'notes.txt' is not a .py file"):
        load_factory("notes.txt:f")


def test_a_model_on_the_meta_device_gives_its_ops_without_its_weights():
    """README: a factory may build its model on meta and give a meta example (a large model's ops, found
    without its weights: these two layers would hold 2 GiB)."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(16384, 16384), nn.GELU(), knn.LowRankLinear(16384, 16384, rank=64))
    found = model_ops(model, torch.zeros(4, 100, 16384, device="meta"), extra_rows=(1,))
    assert [s.summary() for s in found.specs] == [
        "dense 512x16384x16384 float32 (a: row, b: col)",
        "dense 16x16384x16384 float32 (a: row, b: col)",
        "lowrank 512 rows, 16384 -> 64 -> 16384 float32",
        "lowrank 16 rows, 16384 -> 64 -> 16384 float32",
    ], [s.summary() for s in found.specs]
    assert all(p.is_meta for p in model.parameters())


def test_discovery_lists_a_skip_once_notes_what_it_tuned_keeps_norm_statistics_and_names_the_specs_rows():
    """An audit of model_ops: a float64 layer called three times was "3 skipped"; a skipped 1x1 convolution
    made the note say "nn.Linear or 1x1 convolution layer" of no convolution tuned; a BatchNorm in training mode
    kept the example's statistics; a layer past the rows a spec holds was named b33554432 for a spec of 2**24."""

    class Thrice(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = nn.Linear(8, 8).double()
            self.c = nn.Conv2d(8, 8, 1).double()
            self.f = nn.Linear(8, 8)
            self.bn = nn.BatchNorm1d(8)

        def forward(self, x):
            y = x.double()
            for _ in range(3):
                y = self.d(y)
            self.c(y[:, :, None, None])
            return self.bn(self.f(x))

    model = Thrice().train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    found = model_ops(model, torch.randn(4, 8) * 10 + 5)
    assert [path for path, _ in found.skipped] == ["d", "c"], found.skipped
    assert found.plain == ["f"] and found.pointwise == [] and model.training
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    # a lazy norm not run yet: its buffers could not be cloned (a traceback before the model ran); after the run
    # it holds a fresh norm's statistics, not the example's
    lazy = nn.Sequential(nn.LazyLinear(16), nn.LazyBatchNorm1d(), nn.Linear(16, 8)).train()
    assert len(model_ops(lazy, torch.randn(4, 8) * 10 + 5).specs) == 2
    assert torch.equal(lazy[1].running_mean, torch.zeros(16)) and torch.equal(
        lazy[1].running_var, torch.ones(16)
    )
    big = model_ops(nn.Linear(16, 16, device="meta"), torch.empty(2**25, 16, device="meta"))
    (spec,) = big.specs
    assert spec.shape.m == 2**24 and f"_b{2**24}_" in spec.name, spec.name


def test_discovery_skips_a_linear_past_the_limits_and_reads_what_the_module_runs():
    """An audit of model_ops: an nn.Linear of 2**24 + 1 in_features became a spec of K 2**23 (bucket_spec lowers
    a weight gradient's K to fit, and lowered this one's); a layer called as layer(x=t, input=None) was missed; a
    1x1 convolution of a Conv2d subclass was passed over unsaid; a spectral_norm's power iteration kept the
    example's step; a weight swapped under stale in/out_features gave the spec of the attributes."""
    wide = nn.Linear(2**24 + 1, 2, bias=False, device="meta")
    found = model_ops(wide, torch.empty(3, 2**24 + 1, device="meta"))
    assert found.specs == [] and found.skipped == [
        ("(model)", "beyond kt's limits: shape.k: must be an integer from 1 to 16777216, got 16777217")
    ]

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = knn.DenseLinear(8, 4)

        def forward(self, x):
            return self.a(x=x, input=None)

    assert [s.summary() for s in model_ops(Keyword(), torch.randn(3, 8)).specs] == [
        "dense 16x4x8 float32 (a: row, b: col)"
    ]

    class Standardized(nn.Conv2d):  # as timm's StdConv2d: its forward standardizes the weight
        pass

    found = model_ops(nn.Sequential(Standardized(8, 4, 1)), torch.randn(2, 8, 3, 3))
    assert found.specs == [] and found.skipped == [
        ("0", "a Standardized: a subclass of torch's Conv2d, whose forward may differ")
    ]
    model = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8)), nn.BatchNorm1d(8)).train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    model_ops(model, torch.randn(4, 8))
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    swapped = nn.Linear(8, 8, bias=False)
    swapped.weight = nn.Parameter(torch.randn(300, 8))  # out_features still says 8
    (spec,) = model_ops(swapped, torch.randn(3, 8)).specs
    assert (spec.shape.n, spec.shape.k) == (300, 8)
