"""The kt command: output a person can read, one-line errors with exit code 2, never a traceback."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import kt_cli

from kt.autotune.database import Database

EXAMPLE = "examples/dense.yaml"
ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "benchmarks/results/h200-2026-12-04/measurements.csv"  # real H200 rows


def test_show_prints_the_ir_and_the_kernel_graph():
    done = kt_cli("show", EXAMPLE)
    assert done.returncode == 0
    assert "y:f16[4096,4096] = a:f16[4096,4096] @ b:f16[4096,4096] col-major" in done.stdout
    assert "y = Dense[b](4096<-4096) · a" in done.stdout
    assert "y:f16[4096,4096] = gemm[m=4096 n=4096 k=4096 f16 a:row b:col] a b" in done.stdout


def test_space_prints_sizes_before_and_after_legality_and_a_sample():
    done = kt_cli("space", EXAMPLE, "--sample", "4")
    assert done.returncode == 0
    assert "all:   25200 configs" in done.stdout and "legal: 17658" in done.stdout
    # every axis tune.space may name, the structure choice (the TMA kernels) included
    assert " x split_k 1|2|4|8|16 x tma 0|1|2\n" in done.stdout
    assert (
        "tune.configs: a field left out takes its default (group_m 8, num_warps 4, num_stages 3, split_k 1, "
        "tma 0); give block_m, block_n, block_k\n"
    ) in done.stdout
    assert "dropped 1989: shared memory over 227 KiB" in done.stdout
    # the space says which configs the model expects off Hopper's warpgroup MMA, and why
    assert "MMA of the legal configs: 9984 mma.sync, 7674 wgmma" in done.stdout
    assert "4395 off wgmma: a tile of 16 rows (wgmma needs 64)" in done.stdout
    assert "4 legal configs, sampled with seed 0" in done.stdout


def test_space_gives_a_share_under_one_percent_its_digits(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("op: dense\nshape: {m: 8, n: 8, k: 8}\n")
    done = kt_cli("space", spec, "--sample", "0")
    assert done.returncode == 0 and "legal: 60 (0.24%)" in done.stdout, done.stdout  # it said (0%)


@pytest.mark.parametrize(
    "content,message",
    [
        ("op: dense\nshape: {m: -1, n: 2, k: 2}\n", "shape.m: must be an integer from 1 to 16777216, got -1"),
        ("op: dense\nshape: {m: 1, n: 2, k: 2}\ndtype: int8\n", "dtype: 'int8' (str) is not supported"),
        ("op: dense\nshape: {m: 1, n: 2, k: 2}\ntune: {objective: speed}\n", "tune.objective: 'speed'"),
        ("op: [dense\n", "not valid YAML"),
    ],
)
@pytest.mark.parametrize("command", ["tune", "show", "space", "collect"])
def test_bad_specs_exit_2_with_one_line(tmp_path, content, message, command):
    spec = tmp_path / "op.yaml"
    spec.write_text(content)
    done = kt_cli(command, spec, *(["--all"] if command == "collect" else []))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("kt: error: ")
    assert message in done.stderr
    assert done.stdout == ""


def test_usage_errors_are_one_line_too(tmp_path):
    for args, message in [
        (["tune"], "give OP_YAML files or folders, or --from-model FILE.py:FACTORY"),
        (["tune", EXAMPLE, "--budget", "0"], "--budget"),
        (["tune", EXAMPLE, "--device", "l40s"], "unknown device profile 'l40s'"),
        (["tune", tmp_path / "none.yaml"], "none.yaml: file not found"),
        (["collect", EXAMPLE], "give exactly one of --all or --sample N"),
        # replay's --device names the profile sweeps were measured for: auto reached get_profile, a traceback
        (
            ["replay", MEASURED, "--budget", "5", "--device", "auto"],
            "auto names no profile sweeps were measured",
        ),
        # these two score a model file: their refusal offered analytic, which then failed as "not found"
        (
            ["costmodel", "eval", "--data", MEASURED, "--model", "Analytic"],
            "analytic is no model file; allowed: a",
        ),
        (
            ["inspect", MEASURED, "--model", tmp_path / "no.skops"],
            "found; allowed: a model file from `kt costmodel",
        ),
        # an empty GPU name matched no row: "holds no GPU-measured passing rows" named no option
        (["costmodel", "eval", "--data", MEASURED, "--gpu", " "], "'--gpu': an empty name; allowed: a GPU's"),
        (["inspect", MEASURED, "--device", ""], "device: '' is empty; give h100"),  # taken as no --device
        # no number at all: click's "'abc' is not a valid integer range." named no range
        (["bench", "--workers", "abc"], "'abc' is no integer; allowed: an integer in 1<=x<=64"),
        (["bench", "--minutes", "soon"], "'soon' is no number; allowed: a number in 0.5<=x<=600"),
    ]:
        done = kt_cli(*args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    assert "analytic" not in kt_cli("inspect", MEASURED, "--model", tmp_path / "no.skops").stderr
    # kt export reads $KT_DB where no --db is given: its refusal said "db:", an option nobody gave
    done = kt_cli("export", tmp_path / "e.csv", env={"KT_DB": str(tmp_path / "none.db")})
    assert done.returncode == 2 and done.stderr == f"kt: error: KT_DB: '{tmp_path / 'none.db'}' not found\n"


NO_TORCH = """
import json, os, sys, tempfile
from kt.cli import main
# Each refusal runs in a child forked from this process, which has imported kt.cli and nothing heavier: each
# starts as `python -c "from kt.cli import main; main(ARGS)"` would, at the cost of a fork, not of a new Python.
said = []
for args in json.loads(sys.argv[1]):
    sys.stdout.flush(), sys.stderr.flush()
    with tempfile.TemporaryFile() as err:
        child = os.fork()
        if child == 0:
            os.dup2(err.fileno(), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stdout carries the parent's answer alone
            try:
                try:
                    main(args, prog_name="kt")
                except SystemExit as exit:
                    assert exit.code == 2, exit.code
                loaded = sorted(m for m in ("torch", "triton", "sklearn") if m in sys.modules)
                assert not loaded, f"a refusal loaded {loaded}"
            except BaseException as error:
                sys.stderr.write(f"[the check failed: {error!r}]")
                sys.stderr.flush()
                os._exit(1)
            sys.stderr.flush()
            os._exit(0)
        _, status = os.waitpid(child, 0)
        err.seek(0)
        said.append([os.waitstatus_to_exitcode(status), err.read().decode()])
print(json.dumps(said))
"""


def test_the_clis_budget_and_sample_ranges_are_the_specs():
    """`--budget` and `--sample` take what op.yaml's tune.budget takes (kt.cli keeps its own copy of the bound,
    so as not to load kt.spec for --help; `--sample` said 1,000,000 while the API refused over 100,000)."""
    import kt.cli
    from kt.spec import MAX_BUDGET

    for command, name in ((kt.cli.tune, "budget"), (kt.cli.collect, "sample"), (kt.cli.predict, "budget")):
        (option,) = [p for p in command.params if p.name == name]
        assert (option.type.min, option.type.max) == (1, MAX_BUDGET) == (1, kt.cli.MAX_BUDGET), command.name


def test_refusals_that_need_no_model_are_quick_and_load_no_torch(tmp_path):
    """A bad spec, an unknown device, a bad budget or a missing file is refused before torch, Triton or
    scikit-learn load (seconds of imports), so the one-line error comes at once."""
    bad = tmp_path / "op.yaml"
    bad.write_text("op: dense\nshape: {m: 1, n: 2, k: 2}\ndtype: int8\n")
    axis, value = tmp_path / "axis.yaml", tmp_path / "value.yaml"
    axis.write_text("op: monarch\nshape: {batch: 8, n: 64, nblocks: 8}\ntune: {space: {block_m: [64]}}\n")
    value.write_text("op: butterfly\nshape: {batch: 8, n: 64}\ntune: {space: {group: [1, 3]}}\n")
    listed = tmp_path / "listed.yaml"
    listed.write_text("op: lowrank\nshape: {batch: 8, dims: [64, 8, 64]}\ntune: {configs: [{block_m: 64}]}\n")
    space = tmp_path / "space.json"  # read only once the command line has been checked
    space.write_text("{}")
    sparse = tmp_path / "sparse.yaml"  # a block pattern drawn from a seed: numpy, no torch
    sparse.write_text(
        "op: blocksparse_grad\nshape: {batch: 8, in: 64, out: 64}\nsparsity: {block: [16, 16], density: 0.5}\n"
        "tune: {space: {split: [3]}}\n"
    )
    unmeasured = tmp_path / "cpu_tune"  # an artifact of a tune without a GPU; its database has no GPU row
    unmeasured.mkdir()
    (unmeasured / "kernel.py").write_text("# inspect reads meta.json and the database\n")
    kt_db = tmp_path / "cpu.db"
    Database(kt_db).close()
    meta = {
        "format": 1,
        "family": "gemm",
        "problem": {"m": 16, "n": 16, "k": 16},
        "measured": False,
        "device": {"target": "h100", "ran_on": "cpu (Triton interpreter)", "runner": "interpret"},
        "tuning": {"db": str(kt_db)},
    }
    (unmeasured / "meta.json").write_text(json.dumps(meta))
    junk = tmp_path / "junk.db"  # opened read-only as the command line is read: sqlite3 alone says it is none
    junk.write_bytes(b"not SQLite" * 100)
    table = tmp_path / "table.csv"  # its header is read as the command line is read
    table.write_text("m,n,k,ms\n1,2,3,0.5\n")
    (tmp_path / "empty.skops").touch()
    cases = []
    for args, message in [
        (["tune", bad], "dtype: 'int8' (str) is not supported"),
        (["show", bad], "dtype: 'int8'"),
        (["space", axis], "tune.space.block_m: the monarch family has no axis 'block_m'; allowed: block_b, "),
        (["tune", value], "tune.space.group: 3 is not a value of this axis; allowed: 1, 2, 4, 8, 16"),
        (["space", sparse], "tune.space.split: 3 is not a value of this axis; allowed: 1, 2, 4, 8, 16"),
        (
            ["tune", listed],
            "tune.configs[0]: missing block_n, block_k (a lowrank config has block_m, block_n, ",
        ),
        (  # it named neither the option nor the other choice
            ["tune", EXAMPLE, "--model", tmp_path / "none.skops"],
            "Invalid value for '--model': '",
        ),
        (
            ["tune", EXAMPLE, "--model", tmp_path / "none.skops"],
            "allowed: a model file from `kt costmodel fit`, or",
        ),
        (
            ["predict", EXAMPLE, "--model", tmp_path],
            "is a directory; allowed: a model file from `kt costmodel fit`, or analytic",
        ),
        (["costmodel", "fit", "--data", tmp_path / "none.csv", "--out", tmp_path / "m.skops"], "data: '"),
        (["costmodel", "eval", "--data", kt_db, "--model", tmp_path / "none.skops"], "none.skops' not found"),
        (["inspect", tmp_path / "none"], "none' not found; give an artifact directory or a tuning database"),
        # a missing model file was named once torch and Triton had loaded (1.5 s on a 2-core machine)
        (["tune", "--from-model", f"{tmp_path / 'none.py'}:make"], "--from-model: '"),
        (["show", EXAMPLE, "--ptx", bad / "ptx"], "--ptx: the folder '"),
        (["tune", EXAMPLE, "--db", bad / "t.db"], "t.db' cannot be created there ('"),
        (["collect", EXAMPLE, "--all", "--db", tmp_path], "is a directory; give a file path"),
        (["export", tmp_path / "x.csv", "--db", tmp_path / "none.db"], "none.db' not found"),
        (["inspect", tmp_path, "--db", tmp_path / "gone.db"], "gone.db' not found"),
        (["inspect", unmeasured], "was tuned without a GPU (measured: false)"),
        (["tune", EXAMPLE, "--db", junk], "junk.db' is not a kt tuning database"),
        (["inspect", junk], "error: inspect: '"),  # each names what gave the file (it said db: for all)
        (["inspect", junk], "junk.db' is not a kt tuning database"),
        (["costmodel", "fit", "--data", junk, "--out", tmp_path / "m.skops"], "is not a kt tuning database"),
        (["costmodel", "eval", "--data", junk, "--model", tmp_path / "m.skops"], "error: data: '"),
        (["replay", junk, "--budget", "5"], "junk.db' is not a kt tuning database"),
        (["replay", junk, "--budget", "5"], "error: space: '"),
        (["costmodel", "eval", "--data", table, "--model", tmp_path / "m.skops"], "is not a `kt export` CSV"),
        (
            ["inspect", table],
            "table.csv' is not a `kt export` CSV (no config, config_key, device, family, problem, ",
        ),
        (["replay", table, "--budget", "5"], "table.csv' is not a `kt export` CSV"),
        (["replay", table, "--budget", "5"], "error: space: '"),  # a CSV's header said data: for all
        (["inspect", table], "error: inspect: '"),
        (
            ["predict", EXAMPLE, "--model", table],
            "table.csv' is not a skops file (not a zip archive); allowed: ",
        ),
        (["tune", EXAMPLE, "--model", tmp_path / "empty.skops"], "empty.skops' is empty (0 bytes)"),
        (["export", bad / "x.csv", "--db", kt_db], "OUT.csv: '"),
        (["export", tmp_path / "no" / "x.csv", "--db", kt_db], "OUT.csv: the folder '"),
        # written, but every reader took it for a database ("is not a kt tuning database")
        (["export", tmp_path / "rows.txt", "--db", kt_db], "rows.txt' must end in .csv; kt reads any other"),
        # written over whatever the name held, an op.yaml included
        (
            ["costmodel", "fit", "--data", kt_db, "--out", tmp_path / "op.yaml"],
            "op.yaml' must end in .skops; ",
        ),
        (
            ["replay", space, "--budget", "5", "--csv", tmp_path / "op.yaml"],
            "op.yaml' must end in .csv; the ",
        ),
        # --help said up to 1,000,000, and the error named `budget`
        (["collect", EXAMPLE, "--sample", "100001"], "'--sample': 100001 is not in the range 1<=x<=100000"),
        (
            ["inspect", kt_db, "--plots", bad / "plots"],
            "plots: the folder '",
        ),  # was "No such file ...: <path>"
        # the database as OUT.csv: `kt export ~/.cache/kt/tuning.db` replaced every measurement with CSV
        (
            ["export", kt_db, "--db", kt_db],
            "cpu.db' is a SQLite database (a tuning database?), which kt never ",
        ),
        (["costmodel", "fit", "--data", kt_db, "--out", kt_db], "cpu.db' is a SQLite database"),
        (
            ["replay", space, "--budget", "5", "--csv", space],
            "space.json' is SPACE itself; give another file",
        ),
        (["calibrate", "--out", bad / "p.json"], "op.yaml' is a file, not a folder"),
        (["import", "inductor", EXAMPLE, "--out", bad / "x.csv"], "op.yaml' is a file, not a folder"),
        (["bench", "--smoke", "--out", bad / "run"], "out: the folder '"),
        (["bench", "--smoke", "--out", tmp_path], "holds files that are not a kt bench report"),
        # a smoke run with --update ran whole (20 s), then failed ("a dry run's report")
        (
            ["bench", "--smoke", "--out", tmp_path / "b", "--update", tmp_path / "B.md"],
            "--update: a --smoke run",
        ),
        (
            ["bench", "--smoke", "--only", "nope", "--out", tmp_path / "b"],
            "only: 'nope' is in no quick-tune case's name; the cases: dense fp16, ",
        ),
        (["costmodel", "fit", "--data", kt_db, "--out", bad / "m.skops"], "op.yaml' is a file, not a folder"),
        (
            ["replay", space, "--budget", "5", "--csv", tmp_path / "no" / "t.csv"],
            "does not exist; create it",
        ),
        (["tune"], "give OP_YAML files"),
        (["tune", EXAMPLE, "--device", "l40s"], "unknown device profile 'l40s'"),
        (
            ["predict", EXAMPLE, "--device", "nope.json"],
            "'nope.json' not found (make one with `kt calibrate --out",
        ),
        (["replay", tmp_path / "none.json", "--budget", "5"], "not found"),
        (["replay", bad, "--budget", "5"], "neither a Kernel Tuner cache"),
        (["replay", EXAMPLE, "--budget", "0"], "budget: '0' is not a count"),
        (["replay", space, "--budget", "5", "--seed", "-1"], "'--seed': -1 is not in the range 0<=x<="),
        (["space", EXAMPLE, "--seed", "-3"], "'--seed': -3 is not in the range 0<=x<="),
        (["replay", tmp_path / "none.db", "--budget", "5"], "not found"),
    ]:
        cases.append((args, message))
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, json.dumps([list(map(str, args)) for args, _ in cases])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for (args, message), (code, stderr) in zip(cases, json.loads(done.stdout), strict=True):
        assert code == 0, (args, stderr)
        assert message in stderr and stderr.count("\n") == 1, (args, stderr)
    assert (
        Database(kt_db, create=False, readonly=True).find() == []
    )  # still the database, and nothing written
    assert space.read_text() == "{}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="makes a named pipe")
def test_outputs_never_replace_their_inputs_a_pipe_or_a_link(tmp_path):
    """`kt costmodel fit --data x.csv --out x.csv` and `kt import inductor log --out log` replaced their input
    with their output; every output replaced a symbolic link, a pipe or a device (as root: /dev/null) with a
    plain file."""
    from click.testing import CliRunner

    from kt.cli import main
    from kt.files import atomic_write_text

    db = tmp_path / "t.db"
    Database(db).close()
    data = tmp_path / "rows.csv"
    with Database(db, create=False, readonly=True) as database:
        database.export_csv(data)
    header = data.read_text()
    log = tmp_path / "log.csv"
    log.write_text("an Inductor log named .csv\n")
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    for args, message in [
        (
            ["costmodel", "fit", "--data", data, "--out", data],
            f"out: '{data}' is --data itself; give another file",
        ),
        (
            ["import", "inductor", log, "--out", log],
            f"out: '{log}' is one of the logs itself; give another file",
        ),
        (
            ["export", pipe, "--db", db],
            f"OUT.csv: '{pipe}' is not a regular file (a device, a pipe or a socket)",
        ),
    ]:
        done = CliRunner().invoke(main, list(map(str, args)))
        assert done.exit_code == 2 and message in done.output, (args, done.output)
    assert data.read_text() == header and log.read_text() == "an Inductor log named .csv\n"
    assert pipe.is_fifo()
    with pytest.raises(OSError, match="is not a regular file"):
        atomic_write_text(pipe, "x")
    assert pipe.is_fifo()
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_text("old")
    link.symlink_to(target)
    done = CliRunner().invoke(main, ["export", str(link), "--db", str(db)])
    assert done.exit_code == 0, done.output
    assert link.is_symlink() and target.read_text() == header  # written through the link


@pytest.mark.parametrize(
    "args, option",
    [
        (["export", "{tmp}/x.csv", "--db", "{tmp}/{long}.db"], "'--db'"),
        (["tune", EXAMPLE, "--out", "{tmp}/{long}/art"], "'--out'"),
        (["export", "{tmp}/{long}.csv", "--db", "{tmp}/t.db"], "'OUT.csv'"),
    ],
)
def test_a_path_whose_name_the_file_system_cannot_hold_names_its_option(tmp_path, args, option):
    """A --db (or any path option) with a name over the file system's 255 bytes said only "File name too long"
    and the path, naming no option; now the option, the name's length and the limit."""
    from click.testing import CliRunner

    from kt.cli import main

    Database(tmp_path / "t.db").close()
    long = "é" * 130  # 260 bytes in UTF-8, then its suffix
    done = CliRunner().invoke(main, [a.format(tmp=tmp_path, long=long) for a in args])
    assert done.exit_code == 2, done.output
    said = rf"Invalid value for {option}: the name é+\.\.\.é+(\.db|\.csv)? in it is 26[034] bytes; allowed: at most 255"
    assert re.search(said, done.output), done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.db"]


def test_a_path_over_the_file_systems_whole_length_names_its_option(tmp_path):
    """Names within 255 bytes each, 4,200 bytes in all (Linux's PATH_MAX is 4096): refused naming --out."""
    from click.testing import CliRunner

    from kt.cli import main

    deep = tmp_path.joinpath(*["a" * 200] * 21) / "art"
    done = CliRunner().invoke(main, ["tune", EXAMPLE, "--out", str(deep)])
    assert done.exit_code == 2, done.output
    assert re.search(
        r"Invalid value for '--out': the full path is \d{4} bytes; allowed: under 4096", done.output
    )
    assert list(tmp_path.iterdir()) == []


def test_a_cache_folder_kt_cannot_use_is_named_before_the_work(tmp_path, monkeypatch):
    """A tune failed after its first round, saying only "Not a directory: .../kernels" (or "No such file or
    directory: /proc/..."), without naming KT_CACHE_DIR."""
    from kt.cli import _cache_hint

    blocker = tmp_path / "afile"
    blocker.write_text("")
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nshape: {m: 16, n: 16, k: 16}\ntune: {budget: 1}\n")
    for place, message in [
        (blocker, f"KT_CACHE_DIR: '{blocker}' is a file; kt keeps generated kernels there: give a folder"),
        (
            blocker / "sub",
            f"KT_CACHE_DIR: the folder '{blocker / 'sub'}' cannot be made: '{blocker}' is a file, not a folder",
        ),
    ]:
        for command in (
            ["tune", spec, "--out", tmp_path / "art"],
            ["bench", "--smoke", "--out", tmp_path / "b"],
        ):
            done = kt_cli(*command, "--db", tmp_path / "t.db", env={"KT_CACHE_DIR": str(place)})
            assert done.returncode == 2 and done.stderr.strip() == f"kt: error: {message}", done.stderr
    assert not (tmp_path / "art").exists() and not (tmp_path / "b").exists()
    monkeypatch.setenv("KT_CACHE_DIR", str(blocker))  # any other error inside the cache folder names it too
    assert _cache_hint(str(blocker / "kernels")) == (
        f" (in kt's cache folder, $KT_CACHE_DIR: '{blocker}'; give it a folder kt can write)"
    )
    assert _cache_hint(str(tmp_path / "elsewhere")) == "" and _cache_hint(None) == ""


def test_a_cache_folder_kt_cannot_write_in_is_named_before_the_work(tmp_path, monkeypatch):
    """KT_CACHE_DIR an existing folder that takes no file (read-only, another user's; /proc here, as the tests run
    as root too): the tune printed its heading, made its database, then failed on "No such file or directory:
    /proc/kernels"."""
    from click.testing import CliRunner

    from kt.cli import main

    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nshape: {m: 16, n: 16, k: 16}\ntune: {budget: 1}\n")
    monkeypatch.setenv("KT_CACHE_DIR", "/proc")
    command = ["tune", str(spec), "--out", str(tmp_path / "art"), "--db", str(tmp_path / "t.db")]
    done = CliRunner().invoke(main, command)
    assert done.exit_code == 2, done.output
    assert done.output.strip().startswith("kt: error: KT_CACHE_DIR: kt cannot write its kernels in '/proc': ")
    assert not (tmp_path / "t.db").exists() and not (tmp_path / "art").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without a GPU")
def test_gpu_only_commands_say_so_without_a_gpu(tmp_path):
    """In this process (torch is loaded already): each refusal is the one line printed, before any heading."""
    from click.testing import CliRunner

    from kt.cli import main

    for args, message in [
        (["collect", EXAMPLE, "--all"], "collect measures runtimes and needs a CUDA GPU"),
        (["calibrate", "--out", tmp_path / "x.json"], "calibrate measures a GPU and this machine has none"),
        (["tune", EXAMPLE, "--backend", "cuda"], "backend: cuda needs a CUDA GPU"),
        (["tune", EXAMPLE, "examples/monarch.yaml", "--backend", "cuda"], "backend: cuda needs a CUDA GPU"),
    ]:
        done = CliRunner().invoke(main, list(map(str, args)))
        assert done.exit_code == 2 and done.output.startswith("kt: error: "), done.output
        assert message in done.output and done.output.count("\n") == 1, done.output
    assert not (tmp_path / "x.json").exists()


def test_tune_on_the_cpu_writes_an_unmeasured_artifact_and_says_so(tmp_path):
    spec = tmp_path / "op.yaml"
    spec.write_text(
        "op: dense\nname: cli_small\ndtype: bfloat16\nshape: {m: 33, n: 17, k: 70, batch: 2}\n"
        "tune: {budget: 3}\n"
    )
    done = kt_cli(
        "tune",
        spec,
        "--db",
        tmp_path / "t.db",
        "--out",
        tmp_path / "artifacts",
        "--workers",
        "2",
        "--budget",
        "2",  # over the spec's 3
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "not measured" in done.stdout and "nothing was timed" in done.stdout
    # the model is named as a noun in sentences, its training figures once, on the best line
    assert re.search(r"by the (analytic model|forest for h100: \d+ rows[^)]*)\)\n", done.stdout), done.stdout
    assert re.search(r"the best prediction of the (analytic model|forest for h100) among", done.stdout)
    assert f"artifact: {tmp_path / 'artifacts' / 'cli_small'} (measured: false)" in done.stdout
    meta = json.loads((tmp_path / "artifacts" / "cli_small" / "meta.json").read_text())
    assert meta["measured"] is False and meta["tuning"]["statuses"] == {"ok": 2}
    # the budget spent is recorded: the spec kept says 3, which the command line overrode
    assert meta["tuning"]["budget"] == 2 and meta["spec"]["tune"]["budget"] == 3
    assert "first ranked by" in done.stderr and "on predicted time" not in done.stderr


def test_an_energy_tune_says_its_model_ranks_by_time(tmp_path):
    """The forest predicts no power: an energy tune is ranked by predicted time, which it did not say."""
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: e\nshape: {m: 32, n: 32, k: 32}\n")
    done = kt_cli(
        "tune",
        spec,
        "--objective",
        "energy",
        "--budget",
        "1",
        "--backend",
        "dryrun",
        "--db",
        tmp_path / "t.db",
        "--out",
        tmp_path / "artifacts",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "(the ranking is by predicted time; energy applies only to measured configs)" in done.stderr


def test_collect_says_why_it_measured_other_than_its_sample(tmp_path):
    """kt collect printed none of its plan's notes: with tune.configs it measured all 5 listed configs for
    `--sample 1` without a word, and past the distinct programs it measured fewer than asked."""
    spec = tmp_path / "op.yaml"
    spec.write_text(
        "op: dense\nname: listed\nshape: {m: 32, n: 32, k: 32}\ntune:\n  configs:\n"
        + "".join(
            f"    - {{block_m: {bm}, block_n: {bn}, block_k: 16}}\n"
            for bm, bn in ((16, 16), (16, 32), (32, 16))
        )
    )
    done = kt_cli(
        "collect",
        spec,
        "--sample",
        "1",
        "--backend",
        "dryrun",
        "--quiet",
        "--db",
        tmp_path / "t.db",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "note: tune.configs lists 3 distinct configs: all are checked (sample 1 ignored)" in done.stdout


def test_devices_lists_the_builtin_profiles():
    done = kt_cli("devices")
    assert done.returncode == 0 and "h100" in done.stdout and "h200" in done.stdout


def test_path_problems_are_one_line_errors_before_any_work(tmp_path):
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: clash\nshape: {m: 8, n: 8, k: 8}\ntune: {budget: 1}\n")
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "clash").write_text("a file where the artifact should go")
    done = kt_cli("tune", spec, "--out", tmp_path / "artifacts", "--db", tmp_path / "t.db")
    assert done.returncode == 2 and "exists and is a file" in done.stderr
    assert not (tmp_path / "t.db").exists(), "refused before tuning"
    done = kt_cli("export", tmp_path / "x.csv", "--db", tmp_path / "typo.db")
    assert done.returncode == 2 and "typo.db' not found" in done.stderr
    done = kt_cli("show", "x:b:y.yaml")  # rich printed ':b:' as an emoji
    assert done.returncode == 2 and done.stderr == "kt: error: x:b:y.yaml: file not found\n"
    done = kt_cli("tune", spec, "--db", spec / "t.db")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"t.db' cannot be created there ('{spec}' is a file, not a folder)" in done.stderr
    if Path("/proc/self").exists():  # a place no folder can be made in, even as root: refused before the tune
        done = kt_cli("tune", spec, "--out", "/proc/kt-artifacts", "--db", tmp_path / "t.db")
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "nothing can be made in '/proc'" in done.stderr and "choose another --out" in done.stderr
        assert not (tmp_path / "t.db").exists(), "refused before tuning"


def test_help_and_usage_errors_load_neither_torch_nor_scikit_learn():
    """`kt --help`, a command's --help and a usage error answer before kt loads torch or scikit-learn (kt's
    heavy parts load on first use): 0.09 s on a 2-core machine, against 2.7 s when `import kt` loaded them."""
    probe = (
        "import sys\n"
        "from kt.cli import main\n"
        "for args in (['--help'], ['tune', '--help'], ['show']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'numpy', 'triton') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    assert "Missing argument 'OP_YAML'" in done.stderr


@pytest.mark.parametrize("args", [[], ["costmodel"], ["import"]])
def test_a_group_without_its_command_prints_its_help_not_an_error_line(args):
    """`kt` alone printed its whole help as "kt: error: Usage: ..." with "(see `kt --help`)" at the end."""
    done = subprocess.run(
        [sys.executable, "-m", "kt.cli", *args], capture_output=True, text=True, timeout=120
    )
    first = done.stderr.splitlines()[0]  # Usage: python -m kt.cli costmodel [OPTIONS] COMMAND [ARGS]...
    assert first.startswith("Usage: ") and first.endswith(
        f"{''.join(' ' + a for a in args)} [OPTIONS] COMMAND [ARGS]..."
    )
    assert done.returncode == 2
    assert "kt: error" not in done.stderr and "Commands:" in done.stderr and "(see `" not in done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_standard_output_is_named_in_the_error():
    """`kt devices > /dev/full` (or a full disk behind `> file`) said "kt: error: No space left on device" and
    named nothing, as if a file kt writes were at fault."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "kt.cli", "devices"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert done.stderr.strip() == "kt: error: No space left on device: standard output", done.stderr


def test_kt_still_offers_every_name_lazily():
    import kt

    assert set(kt.__all__) <= set(dir(kt))
    assert kt.tune is __import__("kt.api").api.tune and "tune" in vars(kt)  # cached after the first use
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        kt.nonexistent  # noqa: B018


def test_kts_packages_are_attributes_of_kt_alone():
    """README: `import kt` then kt.ir.prune_blocks(...), which was an AttributeError unless something had
    imported kt.ir before (in a fresh interpreter: kt's own tests import it)."""
    code = "import kt\nprint(kt.ir.prune_blocks.__name__, kt.nn.MonarchLinear.__name__, 'ir' in dir(kt))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["prune_blocks", "MonarchLinear", "True"], done.stderr[-2000:]


@pytest.mark.skipif(
    not os.path.exists("/proc/self/maps"), reason="watches the child's mapped libraries (Linux)"
)
def test_ctrl_c_while_a_command_loads_torch_prints_one_line_not_a_traceback(tmp_path):
    """The CLI's module loads in a tenth of a second; a command's heavy imports run inside kt's error handling,
    so Ctrl-C there ends like Ctrl-C anywhere else in a command: exit 130 and one line."""
    import signal
    import time

    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nshape: {m: 16, n: 16, k: 16}\n")
    child = subprocess.Popen(
        [sys.executable, "-m", "kt.cli", "predict", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    maps, deadline = f"/proc/{child.pid}/maps", time.monotonic() + 60
    # past the CLI's own start: torch's libraries are being mapped (its import takes over a second)
    while child.poll() is None and time.monotonic() < deadline:
        try:
            with open(maps) as handle:
                if "libtorch" in handle.read():
                    break
        except OSError:
            pass
        time.sleep(0.01)
    assert child.poll() is None, "the command finished before it could be interrupted"
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().startswith("kt: interrupted"), stderr
    assert (
        stderr.strip().splitlines()[-1] == "kt: interrupted"
    )  # predict measures nothing: no word of resuming


def test_settings_that_name_a_file_kt_cannot_use_are_refused_before_any_work(tmp_path):
    """KT_DB naming a folder was refused as `db:` after the op's heading and ~10 s of imports; TRITON_CACHE_DIR
    under a file stored every candidate as a crash, which later tunes skip."""
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: s\nshape: {m: 16, n: 16, k: 16}\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    for env, says in [
        ({"KT_DB": str(tmp_path / "folder")}, "KT_DB: '"),
        ({"TRITON_CACHE_DIR": str(tmp_path / "file" / "x")}, "TRITON_CACHE_DIR: the folder '"),
        ({"TRITON_CACHE_DIR": str(tmp_path / "file")}, "TRITON_CACHE_DIR: '"),
    ]:
        done = kt_cli(
            "tune",
            spec,
            "--out",
            tmp_path / "art",
            "--budget",
            "1",
            env={**env, "KT_CACHE_DIR": str(tmp_path / "c")},
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"kt: error: {says}") and len(done.stderr.splitlines()) == 1, (
            done.stderr
        )
        assert not (tmp_path / "art").exists()


def test_an_empty_path_and_a_device_for_a_file_are_named_as_such(tmp_path):
    """`--out ''` wrote the artifacts into the current folder and `--ptx ''` the PTX, since pathlib reads '' as
    "."; `--db ''` said "'.' is a directory"; `--db /dev/null` said "not found"."""
    from click.testing import CliRunner

    from kt.cli import main

    for args, message in [
        (["tune", EXAMPLE, "--out", ""], "Invalid value for '--out': an empty path; give a folder"),
        (["tune", EXAMPLE, "--db", ""], "Invalid value for '--db': an empty path; give a database file"),
        (["show", EXAMPLE, "--ptx", ""], "Invalid value for '--ptx': an empty path"),
        (["predict", EXAMPLE, "--model", ""], "Invalid value for '--model': an empty path"),
        (["tune", EXAMPLE, "--db", os.devnull], f"db: '{os.devnull}' is not a regular file"),
        (["predict", EXAMPLE, "--model", os.devnull], f"'--model': '{os.devnull}' is not a regular file"),
    ]:
        done = CliRunner().invoke(main, list(map(str, args)))
        assert done.exit_code == 2 and message in done.output, (args, done.output)
        assert len(done.output.strip().splitlines()) == 1, done.output


@pytest.mark.shipped_models  # the baseline forest predicts PyTorch's path
@pytest.mark.parametrize(
    "shape, says",
    [({"m": 1, "n": 1, "k": 1}, r"not timed \(no GPU; predicted under one launch\)"),
     ({"m": 2048, "n": 2048, "k": 2048}, r"\d+\.\d\dx predicted \(no GPU\)")],
)  # fmt: skip
def test_the_several_ops_summary_prints_no_ratio_from_a_prediction_under_one_launch(tmp_path, shape, says):
    """A tune of several ops without a GPU summed up a 1x1x1 op as "0.17x predicted" against PyTorch, a ratio
    kt predict calls meaningless there (the forest predicts less than one kernel launch)."""
    import kt
    from kt.cli import _versus

    spec = kt.parse_spec({"name": "x", "op": "dense", "dtype": "float16", "shape": shape})
    result = kt.tune(spec, budget=1, progress=False, db=tmp_path / "t.db")
    assert not result.best.measured
    assert re.fullmatch(says, _versus(result)), _versus(result)
    # the note kt tune printed is the result's and meta.json's too (it was the CLI's alone)
    under = any(note.startswith("that prediction is less than one kernel launch") for note in result.notes)
    assert under == (shape["m"] == 1)


def test_the_several_ops_summary_says_a_structured_op_was_not_timed_rather_than_a_dash(tmp_path):
    """Without a GPU, dense ops read "not timed (...)" and every structured op "-", which reads as a failure:
    the model predicts no PyTorch path for them, and nothing was timed."""
    import kt
    from kt.cli import _versus

    spec = kt.parse_spec(
        {"name": "x", "op": "lowrank", "dtype": "float32", "shape": {"batch": 4, "dims": [16, 2, 8]}}
    )
    result = kt.tune(spec, budget=1, progress=False, db=tmp_path / "t.db", backend="interpret")
    assert not result.best.measured and result.plan.baseline_ratio is None
    assert _versus(result) == "not timed (no GPU)"


def test_long_jobs_without_a_count_show_a_spinner_on_a_terminal_only(monkeypatch):
    """`kt costmodel fit` ran 19 s to 2 minutes (and eval, inspect likewise) with nothing on the screen."""
    import io
    import logging
    import time

    from rich.console import Console

    import kt.cli as cli

    for terminal in (True, False):
        screen = io.StringIO()
        monkeypatch.setattr(cli, "err", Console(file=screen, force_terminal=terminal, width=100))
        handler = cli._StderrHandler()  # as kt's CLI logs warnings: to the stderr of the moment
        logging.getLogger("kt").addHandler(handler)
        try:
            with cli._working("fitting the forest on data.csv"):
                time.sleep(0.2)
                logging.getLogger("kt.test").warning("a warning while it spins")
                time.sleep(0.2)
        finally:
            logging.getLogger("kt").removeHandler(handler)
        if terminal:  # the warning printed above the spinner by rich, not over its line on the real stderr
            assert "fitting the forest on data.csv" in screen.getvalue() and "0:00:0" in screen.getvalue()
            assert "a warning while it spins" in screen.getvalue()
        else:
            assert screen.getvalue() == ""


@pytest.mark.parametrize("command", ["space", "predict"])
def test_space_and_predict_show_a_spinner_while_they_plan(monkeypatch, command):
    """`kt space` and `kt predict` planned for 4 to 12 s with nothing on the screen (a large block-sparse layout
    or a deep butterfly: a minute or more)."""
    import io

    from click.testing import CliRunner
    from rich.console import Console

    import kt.cli as cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=screen, force_terminal=True, width=120))
    done = CliRunner().invoke(cli.main, [command, str(ROOT / "examples" / "dense.yaml"), "--device", "h100"])
    assert done.exit_code == 0, done.output
    assert "planning gemm_4096: judging its search space, predicting every legal config" in screen.getvalue()


@pytest.mark.parametrize(
    "signal_name, code, line",
    [("SIGINT", 130, "kt: interrupted\n"), ("SIGTERM", 143, "kt: terminated (SIGTERM)\n")],
)
def test_a_signal_while_the_kt_command_imports_its_cli_prints_one_line_not_a_traceback(
    signal_name, code, line
):
    """kt.cli's own imports (click, rich) run before kt's error handling: a Ctrl-C in a command's first ~0.15 s
    printed a traceback from the `kt` script's `from kt.cli import main`, and a SIGTERM killed it without a
    word. The entry point in pyproject.toml imports kt.cli inside its own handling; here a real signal arrives
    while rich loads."""
    script = (
        "import os, signal, sys\n"
        "from importlib.metadata import entry_points\n"
        "fired = []\n"
        "def interrupt_once(event, args):\n"
        "    if event == 'import' and args[0] == 'rich.console' and not fired:\n"
        "        fired.append(True)\n"
        f"        os.kill(os.getpid(), signal.{signal_name})\n"
        "sys.addaudithook(interrupt_once)\n"
        "(script,) = [e for e in entry_points(group='console_scripts') if e.name == 'kt']\n"
        "sys.argv = ['kt', 'devices']\n"
        "sys.exit(script.load()())\n"  # as the generated `kt` script does
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stderr == line and done.stdout == ""


@pytest.mark.parametrize("interrupted", [True, False])
def test_a_ctrl_c_that_breaks_an_import_into_another_error_is_one_line(interrupted):
    """A Ctrl-C while numpy loads (as a command first imports it) leaves the module half made,
    and what fails next is a RecursionError, an AttributeError or an ImportError: 64 lines of traceback and exit
    1 in about one try in ten (`kt collect`, SIGINT 0.55 to 1 s in). Here an import hook turns the Ctrl-C into
    the ImportError numpy gave; without a Ctrl-C that error is still a traceback."""
    script = (
        "import os, signal, sys\n"
        "from importlib.metadata import entry_points\n"
        "def broken(event, args):\n"
        "    if event == 'import' and args[0] == 'numpy':\n"
        "        try:\n"
        f"            {'os.kill(os.getpid(), signal.SIGINT)' if interrupted else 'pass'}\n"
        "            for _ in range(10 ** 7): pass\n"
        "        except KeyboardInterrupt:\n"
        "            pass\n"
        "        raise ImportError('cannot load module more than once per process')\n"
        "sys.addaudithook(broken)\n"
        "(script,) = [e for e in entry_points(group='console_scripts') if e.name == 'kt']\n"
        f"sys.argv = ['kt', 'space', {EXAMPLE!r}]\n"
        "sys.exit(script.load()())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if interrupted:
        assert done.returncode == 130 and done.stderr == "kt: interrupted\n", done.stderr[-2000:]
    else:
        assert done.returncode == 1 and "ImportError: cannot load module more than once" in done.stderr


def _count_in(db, query: str) -> int:
    """`query`'s count in the database `db`, read-only; 0 before the tune has made it."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute(query).fetchone()[0]
    except sqlite3.Error:  # not made yet
        return 0


def _signalled_tune(tmp_path, *args, entry="kt", budget=40, workers=1, **popen):
    """A tune (a 128^3 float32 GEMM, checked in the interpreter) started to be stopped by a signal mid-round:
    the process and its database. `args`: more options; `popen`: how it is started."""
    spec = tmp_path / "op.yaml"
    spec.write_text(
        f"op: dense\nname: w\ndtype: float32\nshape: {{m: 128, n: 128, k: 128}}\ntune: {{budget: {budget}}}\n"
    )
    db = tmp_path / "t.db"
    child = subprocess.Popen(
        [sys.executable, "-m", entry, "tune", str(spec), "--out", str(tmp_path / "art"), "--db", str(db),
         "--workers", str(workers), *args],
        **popen,
    )  # fmt: skip
    return child, db


def _await_claims(child, db, tick=lambda: None) -> None:
    """Wait until the tune has claimed configs (it is checking them), calling `tick` between looks; it must not
    have ended by then."""
    import time

    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and not _count_in(db, CLAIMS):
        tick()
        time.sleep(0.1)
    assert child.poll() is None, "the tune finished before it could be stopped"
    assert _count_in(db, CLAIMS), "the tune claimed nothing in time"


CLAIMS = "SELECT count(*) FROM claims"


def test_sigterm_stops_a_tune_like_ctrl_c_one_line_exit_143_and_its_claims_released(tmp_path):
    """SIGTERM (`timeout`, `kill`, Slurm, `docker stop`) had no handler: the tune died with no `kt:` line and
    left its claims in the database (another tune then waited for configs nobody was checking)."""
    import signal

    child, db = _signalled_tune(
        tmp_path, "--quiet", entry="kt.cli", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _await_claims(child, db)
    child.send_signal(signal.SIGTERM)  # mid-round: its configs claimed, being checked
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "kt: terminated (SIGTERM); every finished measurement is in the database, and running the same command "
        "again resumes where this one stopped"
    )
    assert _count_in(db, CLAIMS) == 0


def test_a_closed_terminal_sighup_stops_a_tune_like_sigterm_and_its_workers_leave_no_crash_rows(tmp_path):
    """A closed terminal (SIGHUP to the whole foreground process group: kt and its workers) killed the tune
    like kill -9: no `kt:` line, its claims left in the database, and a worker killed mid-check could be
    recorded as a crash. The kt process now stops as for SIGTERM, and its workers ignore the hangup."""
    import os
    import signal

    child, db = _signalled_tune(
        tmp_path, "--quiet", workers=2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    _await_claims(child, db)
    os.killpg(child.pid, signal.SIGHUP)  # as a closing terminal does: kt and every worker of its group
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGHUP, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("kt: terminated (SIGHUP); every finished measurement")
    assert _count_in(db, CLAIMS) == 0
    assert _count_in(db, "SELECT count(*) FROM measurements WHERE status != 'ok'") == 0


@pytest.mark.parametrize("terminal", ["gone", "ignored"])
def test_sighup_on_a_terminal_that_is_gone_still_exits_129_and_under_nohup_is_ignored(tmp_path, terminal):
    """A tune writing to a terminal (a pty) that has gone away when SIGHUP comes: what click then writes fails
    (EIO) and took the signal's place, exit 1. kt now exits 129, its claims released. Under nohup (SIGHUP
    ignored) the hangup is ignored and the tune goes on to its end."""
    import os
    import select
    import signal
    import time

    master, slave = os.openpty()

    def ignore_hangup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    child, db = _signalled_tune(
        tmp_path, budget=40 if terminal == "gone" else 2, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        start_new_session=True, preexec_fn=ignore_hangup if terminal == "ignored" else None,
    )  # fmt: skip
    os.close(slave)

    def drain() -> None:  # the terminal's reader, until it goes away
        while select.select([master], [], [], 0)[0]:
            try:
                os.read(master, 65536)
            except OSError:
                return

    _await_claims(child, db, tick=drain)
    if terminal == "gone":
        os.close(master)  # the terminal goes away: writes to it fail with EIO
    os.killpg(child.pid, signal.SIGHUP)
    deadline = time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline:
        if terminal == "ignored":
            drain()
        time.sleep(0.1)
    if terminal == "ignored":
        os.close(master)
    assert child.wait(timeout=10) == (128 + signal.SIGHUP if terminal == "gone" else 0)
    assert _count_in(db, CLAIMS) == 0


def test_sigterm_during_an_artifact_save_still_keeps_the_replaced_artifact_as_prev(tmp_path):
    """SIGTERM between the exchange and the rename (as Ctrl-C in test_frictions) killed kt outright: the replaced
    artifact was left in a hidden `.same.tmp-*` folder, no `same.prev` was made, and later saves never cleaned
    it up. kt's main process now handles SIGTERM like Ctrl-C; here a real SIGTERM arrives at that moment."""
    target = tmp_path / "art" / "same"
    script = f"""
import os, signal
import kt
from kt import cli
from kt.autotune import artifact

def tuned(block_m):
    spec = kt.parse_spec({{"name": "same", "op": "dense", "dtype": "float16", "shape": {{"m": 24, "n": 40, "k": 32}},
                          "tune": {{"configs": [{{"block_m": block_m, "block_n": 16, "block_k": 16}}]}}}})
    return kt.tune(spec, backend="interpret", db={str(tmp_path / "t.db")!r}, progress=False, baseline=False,
                   workers=1)

first, second = tuned(16), tuned(32)
first.save({str(target)!r})
exchange = artifact._exchange

def exchange_then_sigterm(a, b):
    exchange(a, b)
    os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` would, at the worst moment

artifact._exchange = exchange_then_sigterm

@cli.main.command("save-again")
def save_again():
    second.save({str(target)!r})

cli.main(["save-again"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == "kt: terminated (SIGTERM)"
    import kt
    from kt.autotune.artifact import kept_artifact

    previous = tmp_path / "art" / "same.prev"
    assert kt.load(target).config.block_m == 32 and kt.load(previous).config.block_m == 16
    assert kept_artifact(previous)
    assert sorted(p.name for p in target.parent.iterdir()) == ["same", "same.prev"]  # no staging left


def test_a_ctrl_c_during_an_artifact_saves_clean_up_leaves_no_staging_folder(tmp_path):
    """A Ctrl-C that landed in a save's last step, removing the staging folder that holds the artifact it
    replaced, left `.NAME.tmp-*` beside the artifact (swept only by a later save of that name). Signals are now
    held while a save writes and swaps."""
    target = tmp_path / "art" / "op"
    script = f"""
import os, shutil, signal
import kt
from kt import cli
from kt.autotune import artifact

spec = kt.parse_spec({{"name": "op", "op": "dense", "dtype": "float16", "shape": {{"m": 24, "n": 40, "k": 32}},
                      "tune": {{"configs": [{{"block_m": 16, "block_n": 16, "block_k": 16}}]}}}})
result = kt.tune(spec, backend="interpret", db={str(tmp_path / "t.db")!r}, progress=False, baseline=False,
                 workers=1)

result.save({str(target)!r})  # saved again below: the staging folder then holds the one it replaces

def interrupted_rmtree(path, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the staging folder is removed
    shutil.rmtree(path, **kwargs)

artifact.shutil = type("shutil", (), {{"rmtree": staticmethod(interrupted_rmtree)}})

@cli.main.command("save")
def save():
    result.save({str(target)!r})

cli.main(["save"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("kt: interrupted")
    import kt

    assert kt.load(target).config.block_m == 16
    assert sorted(p.name for p in target.parent.iterdir()) == ["op"]  # no staging left


def test_from_model_and_gpus_are_checked_before_torch_loads_and_analytic_is_read_in_any_case(tmp_path):
    """`--from-model nocolon.py` and `--gpus x,y` were refused 2 to 3.5 s after the command started (after torch
    loaded); `--model ANALYTIC` was read as a file's name."""
    for args, message in [
        (
            ["--from-model", "nocolon.py"],
            "'--from-model': 'nocolon.py' must be MODULE:FACTORY or path/to/file.py:",
        ),
        (["--from-model", ":f"], "':f' must be MODULE:FACTORY"),
        (["--gpus", "x,y"], "--gpus: 'x,y' is not allowed; give all, or GPU indices such as 0,1,3"),
    ]:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "kt", "tune", EXAMPLE, *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert time.perf_counter() - started < 1.5, "refused before torch loads"
        assert len(done.stderr.strip().splitlines()) == 1
    from kt.cli import _model_file

    assert _model_file(None, None, "ANALYTIC") == "analytic"


def test_printed_milliseconds_a_config_column_kept_whole_and_no_color():
    """0.09996 ms printed as "0.100" beside 0.1554; at 80 columns rich cut three configs to one "m128n1…";
    NO_COLOR=1 on a terminal still printed bold and italic codes (rich drops only the colours)."""
    import os
    import subprocess
    import sys

    from rich.console import Console
    from rich.table import Table

    from kt.cli import _ms, _whole

    assert [_ms(v) for v in (0.09996, 0.1554, 0.0999, 2.7e-6)] == ["0.1000", "0.1554", "0.0999", "2.70e-06"]
    keys = ["m128n128k64g8w4s3x1", "m128n128k64g8w4s3x1t", "m128n128k64g8w4s3x1t2"]
    table = Table()
    for name in ("rank", "config", "ms", "TFLOP/s", "roofline ms", "config bound", "tune measures", "more"):
        table.add_column(name, **_whole(name, "config", keys))
    for rank, key in enumerate(keys, start=1):
        table.add_row(str(rank), key, "0.2386", "575.9", "0.1389", "l2", "yes", "-")
    console = Console(width=80, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert all(key + " " in text for key in keys), text
    done = subprocess.run(
        [sys.executable, "-c", "import kt.cli as c; print(c.out.color_system, c.err.color_system)"],
        capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert done.stdout.split() == ["None", "None"], done.stderr


@pytest.mark.shipped_models  # the baseline forest sizes the budget
def test_a_budget_over_the_distinct_programs_says_what_is_spent_not_the_sized_budget():
    """A forest sizing the budget (64 -> 22: kt's best predicted at 0.30x PyTorch's) and the space holding 7
    distinct programs: the note said "this tune measures 22 candidates, not 64" beside "measures 7 of a budget
    of 7". It says what the tune spends."""
    from conftest import SEVEN_PROGRAMS as spec

    import kt

    plan = kt.plan(spec, budget=64, measures_time=True, device="h100")
    assert plan.budget == 7
    # a guided search may stop before the seventh (16 of 20 measured under a note that said all were)
    assert plan.budget_note == (
        "the budget (64) is more than the 7 legal configs that run differently: the search measures at most "
        "all of them (it stops where nothing is expected to beat its best)"
    )
    plan = kt.plan(spec, budget=64, measures_time=True, device="h100", strategy="random")
    assert plan.budget_note.endswith("that run differently: all of them are measured")


def test_a_closed_stdout_or_stderr_does_not_stop_a_command():
    """Python leaves sys.stdout (or sys.stderr) None with its descriptor closed: every command, `kt --help` too,
    failed on None.isatty() as kt.cli loaded; with stderr closed, the device table never reached stdout."""
    for redirect, table in ((">&-", False), ("2>&-", True)):
        done = subprocess.run(
            ["bash", "-c", f'"$0" -m kt.cli devices {redirect}', sys.executable],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert ("built-in device profiles" in done.stdout) == table, done.stdout


def test_a_ctrl_c_while_kt_exits_is_no_traceback():
    """The entry point's Ctrl-C handler stayed in place after the command: a Ctrl-C during Python's exit (its
    atexit callbacks, torch's among them) was raised inside a callback, a traceback after the last line."""
    script = (
        "import atexit, os, signal, sys, time\n"
        "from importlib.metadata import entry_points\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))\n"
        "(script,) = [e for e in entry_points(group='console_scripts') if e.name == 'kt']\n"
        "sys.argv = ['kt', 'devices']\n"
        "sys.exit(script.load()())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]


def test_devices_cuts_no_value_at_80_columns(monkeypatch):
    """At 80 columns (a terminal's default) `kt devices` printed the A100's GPU as "A100-SX…" and its header
    "smem/bl…"; below the table's least width rich gave columns no width at all."""
    import io

    from rich.console import Console

    import kt.cli as cli

    for width in (80, 30):
        console = Console(file=io.StringIO(), width=width, highlight=False, emoji=False, soft_wrap=True)
        monkeypatch.setattr(cli, "out", console)  # as kt's own: soft_wrap, a table's lines not cut
        cli.devices.callback()
        text = console.file.getvalue()
        assert "…" not in text and "A100-SXM4-80GB" in text and "smem/block" in text, text
        assert "│ 400 " in text and "││" not in text, text


def test_a_reader_gone_before_the_results_table_leaves_the_artifact_saved(tmp_path):
    """`kt tune ... | head -2` (the heading and the first note, printed before the tune): the table's print ended
    the command (rich's broken-pipe exit) before the artifact was saved, without a word; the tune's rows were in
    the database, its artifact nowhere."""
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: piped\nshape: {m: 16, n: 16, k: 16}\n")
    env = {**os.environ, "KT_CACHE_DIR": str(tmp_path / "c"), "KT_DB": str(tmp_path / "kt.db")}
    command = f'"$0" -m kt.cli tune {spec} --out {tmp_path / "art"} --budget 1 --workers 1 | head -2'
    done = subprocess.run(
        ["bash", "-c", command, sys.executable], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.stdout.startswith("piped:"), done.stdout + done.stderr[-2000:]
    assert (tmp_path / "art" / "piped" / "kernel.py").is_file(), done.stderr[-2000:]


@pytest.mark.shipped_models
def test_predict_shows_a_wide_spread_up_and_down_and_says_which_prediction_is_under_a_launch(tmp_path):
    """kt predict showed a spread of 0.728 (log time) as "+- 107%", read as a negative lower bound, and its
    note on a 1x1x1 op quoted the baseline forest's PyTorch figure as the forest's best config's."""
    import re

    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: t\ndtype: float16\nshape: {m: 1, n: 1, k: 1}\n")
    done = kt_cli("predict", spec, "--device", "h100", "--top", "3", env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    spreads = re.findall(r"\+(\d+)%/-(\d+)%", done.stdout)
    assert spreads and all(0 < int(down) < 100 for _, down in spreads), done.stdout
    up, down = map(int, spreads[0])
    assert abs((1 + up / 100) * (1 - down / 100) - 1) < 0.02  # one log step up and down
    text = " ".join(done.stdout.split())
    best = re.search(r"│\s+1 │ \S+\s+│\s+(\S+) │", done.stdout)
    assert best and f"predicts the best config at {best[1]} ms" in text, text
    torch_ms = re.search(r"predicts PyTorch's path at (\S+) ms;", text)[1]
    assert (
        f"the baseline forest predicts PyTorch's path at {torch_ms} ms, less than one kernel launch" in text
    )


@pytest.mark.shipped_models
def test_predict_says_why_a_card_of_an_unsampled_architecture_gets_the_analytic_model(tmp_path):
    """A calibrated sm_86 card got "model: analytic" with no word that kt ships forests for sm_80 and sm_90
    only, nor how to get one."""
    import json

    from kt.device import get_profile

    profile = {**get_profile("a100").to_dict(), "name": "rtx3090", "compute_capability": 86}
    (tmp_path / "rtx.json").write_text(json.dumps(profile))
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: t\ndtype: float16\nshape: {m: 64, n: 64, k: 64}\n")
    done = kt_cli("predict", spec, "--device", tmp_path / "rtx.json", "--top", "1")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "model: analytic" in text
    assert (
        "note: kt ships forests for sm_80 and sm_90 only, so rtx3090 (sm_86) is ranked by the analytic model"
        in text
    )
    on_h100 = kt_cli("predict", spec, "--device", "h100", "--top", "1")
    assert "kt ships forests" not in on_h100.stdout


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_output_a_stream_cannot_encode_is_replaced_not_a_traceback(encoding):
    """`kt show` of a sum (ᵀ, ·) and `kt space` ended in a UnicodeEncodeError traceback (exit 1) where the output
    could not be UTF-8 (PYTHONIOENCODING=ascii, a latin-1 locale)."""
    import os

    dot = (
        "\u00b7" if encoding == "latin-1" else "?"
    )  # latin-1 has the product sign; ascii's output replaces it
    for args, says in (
        (
            ["show", ROOT / "examples" / "sum.yaml"],
            f"+ Dense[t1_f2](1024<-32) {dot} Dense[t1_f1](32<-1024)) {dot} x",
        ),
        (["space", ROOT / "examples" / "monarch.yaml", "--sample", "1"], "search space of monarch"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "kt.cli", *map(str, args)],
            capture_output=True,
            text=True,
            encoding=encoding,
            errors="strict",
            env={**os.environ, "PYTHONIOENCODING": encoding},
            timeout=300,
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert says in done.stdout, done.stdout[-2000:]


def test_a_sums_formula_brackets_its_terms_and_an_option_without_its_value_names_its_command():
    """`kt show` of a sum printed "y = BSR[...] + Dense[...] · Dense[...] · x", x applied to the last term alone;
    an option given no value pointed at `kt --help`, where every other usage error names the command's."""
    done = kt_cli("show", ROOT / "examples" / "sum.yaml")
    assert (
        "y = (BSR[t0_w](1024<-1024, 64x64 blocks, 46/256) + Dense[t1_f2](1024<-32) · Dense[t1_f1](32<-1024)) · x"
        in (done.stdout)
    )
    for command, option in [("show", "--ptx"), ("predict", "--top"), ("space", "--device")]:
        done = kt_cli(command, EXAMPLE, option)
        assert done.returncode == 2
        assert done.stderr.strip().endswith(f"(see `kt {command} --help`)"), done.stderr


def test_a_folder_kt_is_to_make_that_exists_as_something_else_says_so(tmp_path):
    """`kt show --ptx /dev/null` said "the folder '/dev/null' cannot be made (File exists)"."""
    from kt.errors import KtError
    from kt.files import make_folder

    for path in ("/dev/null", tmp_path / "file"):
        Path(path).touch() if path != "/dev/null" else None
        with pytest.raises(KtError, match=rf"^--ptx: '{path}' exists and is not a folder$"):
            make_folder(path, "--ptx")


def test_the_analytic_models_power_note_is_its_own():
    """`--model analytic` said that no public data measures power during Triton kernels, which is about forests."""
    done = kt_cli(
        "predict", EXAMPLE, "--model", "analytic", "--device", "a100", "--objective", "energy", "--top", "1"
    )
    said = " ".join(done.stdout.split())
    assert (
        "note: the analytic model predicts no power: it is a roofline of time alone; a forest fitted on kt's own GPU rows predicts power"
        in said
    )
    assert "no public data" not in said


def test_a_table_too_wide_for_the_terminal_leaves_out_columns_and_cuts_no_value(monkeypatch):
    """At 80 columns kt predict's "config bound" column came out empty, "tune measures" one letter a line, and at
    60 a time read "0.0…": every value now keeps its width, and the optional columns go, with a note."""
    import io

    from rich.console import Console
    from rich.table import Table

    import kt.cli as cli

    def shown(width):
        monkeypatch.setattr(
            cli, "out", Console(file=io.StringIO(), width=width, highlight=False, emoji=False)
        )
        table = Table()
        for name in ("rank", "config", "ms", "spread", "roofline ms", "config bound", "tune measures"):
            text = name in ("config bound", "tune measures")
            table.add_column(name, no_wrap=not text, overflow="fold" if text else "ellipsis")
        table.add_row(
            "1", "b64n128k64g8w4s3-fm", "0.0725", "+6%/-6%", "0.0427", "dram", "no: rank 3's program"
        )
        dropped = cli._print_fitted(table, ("spread", "roofline ms", "config bound"))
        return dropped, cli.out.file.getvalue()

    dropped, text = shown(120)
    assert dropped == [] and "dram" in text and "…" not in text
    assert shown(80)[0] == []  # just fits
    for width in (70, 50):
        dropped, text = shown(width)
        assert "…" not in text and "b64n128k64g8w4s3-fm" in text and "0.0725" in text and "program" in text
        assert all(len(line) <= width for line in text.splitlines()), text
        assert dropped and f"(left out at {width} columns: " in " ".join(text.split())
    # narrower than the columns that stay (a 40-column pane): rich gave "tune measures", at 20 "rank" too, no width
    for width in (40, 20):
        dropped, text = shown(width)
        assert "b64n128k64g8w4s3-fm" in text and "0.0725" in text and "program" in text and "measures" in text
        assert "│ 1 " in text and "││" not in text, text


def test_a_path_option_or_kt_cache_dir_starting_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """`kt tune --out=~/art` (the shell expands no ~ after `--out=`) or a quoted KT_CACHE_DIR='~/kt' made a folder
    named '~' in the current one, which `rm -rf ~` would then have been asked to remove."""
    from kt.cli import _Path
    from kt.files import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    assert _Path(file_okay=False).convert("~/art", None, None) == str(tmp_path / "art")
    monkeypatch.setenv("KT_CACHE_DIR", "~/kt")
    assert cache_dir() == tmp_path / "kt"


def test_the_readmes_shell_completion_completes_commands_options_and_choices():
    """README's `eval "$(_KT_COMPLETE=bash_source kt)"`: kt's entry point (kt.__main__, which wraps kt.cli's
    group) must answer click's completion protocol, for every shell the README names. The `kt` script itself:
    click names the variable after the program (`python -m kt` would be another)."""
    kt = str(Path(sys.executable).with_name("kt"))
    for shell in ("bash", "zsh", "fish"):
        done = subprocess.run(
            [kt], env={**os.environ, "_KT_COMPLETE": f"{shell}_source"},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0 and "_KT_COMPLETE" in done.stdout, done.stderr
    for words, want in [
        ("kt tu", "plain,tune"),
        ("kt tune --backend ", "plain,dryrun"),
        ("kt tune --ro", "plain,--rows"),
    ]:
        env = {
            **os.environ,
            "_KT_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        }
        done = subprocess.run([kt], env=env, capture_output=True, text=True, timeout=120)
        assert want in done.stdout.splitlines(), (words, done.stdout, done.stderr)


def test_kts_warnings_print_once_however_often_its_cli_runs_in_one_process(capsys):
    """Each call of kt's CLI added another one-line warnings handler to the "kt" logger: a script or test that
    ran commands in one process (click's CliRunner) printed each later warning once per earlier command."""
    import logging

    from click.testing import CliRunner

    from kt.cli import _StderrHandler, main

    for _ in range(3):
        assert CliRunner().invoke(main, ["devices"]).exit_code == 0
    assert sum(isinstance(h, _StderrHandler) for h in logging.getLogger("kt").handlers) == 1
    capsys.readouterr()
    logging.getLogger("kt.test_cli").warning("said once")
    assert capsys.readouterr().err == "kt: warning: said once\n"
