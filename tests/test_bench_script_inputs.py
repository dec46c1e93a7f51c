"""The benchmark scripts refuse a bad input in one line (argparse's error, exit 2) before their work: a file of
another kind, an option that selects nothing, a count below what runs. Each of these was a traceback after the
work, or an exit 0 having done nothing (a QA pass, 2026-12-05). Nothing here fits or times anything."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import benchmark_module
from conftest import run_script as script

ROOT = Path(__file__).resolve().parents[1]
TWO_WARP = ROOT / "benchmarks/results/two-warp-k-2026-12-05/fit-sm80-seed81-triton3.9.jsonl.gz"


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def inputs(tmp: Path) -> None:
    """The files the cases give the scripts: each of another kind than the option reads."""
    (tmp / "wrong.csv").write_text("a,b\n1,2\n")
    (tmp / "nodb.bin").write_bytes(b"garbage\x00\x01")
    (tmp / "other.jsonl").write_text('{"a": 1}\n')
    (tmp / "notjson.json").write_text("nope\n")
    (tmp / "figures.json").write_text(json.dumps({"results": {"kt forest": {"mape": 1.0}}}))
    both = {"kt forest": {"mape": 1.0}, "cublas forest": {"mape": 2.0}}
    (tmp / "unsaid.json").write_text(json.dumps({"settings": {"folds": 5}, "results": both}))
    (tmp / "no-tile.csv").write_text("M,N,K,Execution Time\n64,64,64,0.1\n")
    (tmp / "folder").mkdir()
    with gzip.open(tmp / "cut.jsonl.gz", "wt") as handle:
        handle.write('{"arch": 80, "status": "ok"}\n' * 200)
    (tmp / "cut.jsonl.gz").write_bytes((tmp / "cut.jsonl.gz").read_bytes()[:-12])
    with gzip.open(tmp / "builds.jsonl.gz", "wt") as handle:
        handle.write('{"arch": 80, "status": "ok", "acc": 64}\n')


def cases(tmp: Path) -> list[tuple[list, str]]:
    ship = ["ship_costmodels.py", "--data", tmp / "none", "--out", tmp / "ship"]
    return [
        # 1. ship_costmodels: --figures read after minutes of fitting; --max-trees 0 / --cap-mib 0: min() of nothing
        (
            [*ship, "--figures", tmp / "missing.json"],
            "--figures: '" + str(tmp / "missing.json") + "' cannot be",
        ),
        ([*ship, "--figures", tmp / "notjson.json"], "notjson.json' is not JSON"),
        ([*ship, "--figures", tmp / "figures.json"], "is not costmodel_h100.py's --json output"),
        # the file's own folds and trees are named beside its figures (they were 5 and 100 whatever they were)
        (
            [*ship, "--figures", tmp / "unsaid.json"],
            "unsaid.json': settings must hold folds, trees, seed, command",
        ),
        ([*ship, "--max-trees", "0"], "--max-trees: 0; give 4 or more"),
        ([*ship, "--cap-mib", "0"], "--cap-mib: 0.0; give a size in MiB above 0"),
        (
            ["ship_costmodels.py", "--out", tmp / "wrong.csv"],
            "--out: '" + str(tmp / "wrong.csv") + "' is not a folder",
        ),
        # 2. --only that matches no case ran nothing, exit 0
        (
            ["layout_probe.py", "--smoke", "--only", "Monarch"],
            "--only 'Monarch' matches no case (cases: fft fp16",
        ),
        (
            ["structured_probe.py", "--smoke", "--only", "FFT"],
            "--only 'FFT' matches no case (cases: monarch n=4096",
        ),
        # 4. negative repeats and jobs ran nothing (or one job), exit 0
        (["search_vs_tuners.py", "--repeats", "-1", "--budgets", "25"], "--repeats: -1; give 0 (run nothing"),
        (["search_vs_tuners.py", "--slow-repeats", "-3", "--budgets", "25"], "--slow-repeats: -3; give 0"),
        (
            ["search_variants.py", "--jsonl", tmp / "v.jsonl", "--variants", "base", "--jobs", "-4"],
            "--jobs: -4; give 1 or more",
        ),
        # 6. search_variants: another --jsonl's lines (KeyError: 'space'), a folder (IsADirectoryError)
        (
            ["search_variants.py", "--jsonl", tmp / "other.jsonl", "--compare"],
            "a line without space, variant",
        ),
        (
            ["search_variants.py", "--jsonl", tmp / "wrong.csv", "--compare"],
            "JSON lines (line 1 is not JSON)",
        ),
        (
            ["search_variants.py", "--jsonl", tmp / "folder", "--variants", "base", "--seeds", "1"],
            "--jsonl: '" + str(tmp / "folder") + "' is a folder",
        ),
        # 7. costmodel_kt_rows: kt's DatabaseError as a traceback
        (
            ["costmodel_kt_rows.py", "--data", tmp / "nodb.bin"],
            "--data: '" + str(tmp / "nodb.bin") + "' is not a kt",
        ),
        (["costmodel_kt_rows.py", "--data", tmp / "wrong.csv"], "is not a `kt export` CSV (no config"),
        # 8. search_efficiency: KeyError 'Tile Size'
        (
            ["search_efficiency.py", "--gpperf-tiled", tmp / "wrong.csv"],
            "(no M, N, K, Tile Size, Execution Time ",
        ),
        (
            ["search_efficiency.py", "--gpperf-tiled", tmp / "no-tile.csv"],
            "execution_times_all.csv (no Tile Size ",
        ),
        # 9. the build scripts' --score: gzip, another study's rows, not JSON
        (
            ["unaligned_builds.py", "--score", tmp / "wrong.csv"],
            "builds (a line that is not JSON: Expecting value)",
        ),
        (
            ["unaligned_builds.py", "--score", tmp / "builds.jsonl.gz"],
            "(lines without shape, config, a_tile, b_tile)",
        ),
        (["unaligned_builds.py", "--score", tmp / "cut.jsonl.gz"], "builds (Compressed file ended before"),
        (
            ["unaligned_builds.py", "--fit", tmp / "builds.jsonl.gz", "--check", tmp / "wrong.csv"],
            "--fit: '" + str(tmp / "builds.jsonl.gz") + "' is not a file of builds (lines without",
        ),
        (["deep_k_builds.py", "--score", TWO_WARP], "builds (lines without warps, per_thread, wgmma)"),
        (["deep_k_builds.py", "--score", tmp / "other.jsonl"], "builds (lines without arch, status, spec"),
        (["two_warp_k_builds.py", "--score", tmp / "wrong.csv"], "--score: '"),
        (["complex_group_k_builds.py", "--fit", tmp / "other.jsonl"], "--fit: '"),
        (["several_blocks_builds.py", "--score", tmp / "other.jsonl"], "--score: '"),
        # 10. --against: named --csv, and refused only after the runs
        (
            ["search_vs_tuners.py", "--repeats", "0", "--data", tmp / "none", "--against", tmp / "wrong.csv"],
            "--against: " + str(tmp / "wrong.csv") + " is not this script's CSV",
        ),
    ]


@pytest.mark.parametrize("index", range(len(cases(Path(".")))))
def test_a_bad_input_is_refused_in_one_line_before_the_work(tmp_path, index):
    inputs(tmp_path)
    before = files(tmp_path)
    args, says = cases(tmp_path)[index]
    done = script(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and says in errors[0], done.stderr
    assert files(tmp_path) == before, "nothing is written"
    assert "--csv:" not in done.stderr or "--csv" in args, "the error names the option given"


def test_ship_costmodels_refuses_a_grid_where_nothing_fits_in_one_line(tmp_path, monkeypatch, capsys):
    """A cap so small that no leaf size fits 4 trees: min() of an empty grid was a traceback after the probes."""
    ship = benchmark_module("ship_costmodels")
    monkeypatch.setattr(ship, "load", lambda paths: ([{"shape": "s"}], []))
    monkeypatch.setattr(ship, "runtimes", lambda records: [1.0] * len(records))
    monkeypatch.setattr(ship, "tree_bytes", lambda *args: 2.0**40)  # no fit: a tree larger than any cap here
    with pytest.raises(SystemExit) as stop:
        ship.main(["--only", "a100", "--data", str(tmp_path), "--out", str(tmp_path), "--cap-mib", "0.01"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert (
        "ship_costmodels: error: --cap-mib 0.01 / --max-trees 100: no combination of the grid fits 4 trees"
        in err
    )
    assert list(tmp_path.iterdir()) == [], "no model written"


def test_ship_costmodels_says_its_out_folder_is_the_shipped_one_it_overwrites():
    done = script("ship_costmodels.py", "--help")
    assert done.returncode == 0 and "the shipped models folder" in " ".join(done.stdout.split())


@pytest.mark.parametrize(
    "name, ends",
    [
        ("nn_layers.py", "on the same device in the same run, with the same timer."),
        ("search_efficiency.py", "against random search, replayed on real exhaustive sweeps."),
        ("structured_probe.py", "(no tune, no cost model: the configs are named)."),
    ],
)
def test_the_help_describes_the_script_in_whole_sentences(name, ends):
    done = script(name, "--help")
    assert done.returncode == 0 and ends in " ".join(done.stdout.split()), done.stdout


def collect_with(monkeypatch):
    """collect_dense.py as a module, with kt.collect standing in: it records the options of each call."""
    collect = benchmark_module("collect_dense")
    calls = []

    def fake(spec, **options):
        calls.append(options)
        return SimpleNamespace(rows=[], fresh=0, runner=SimpleNamespace(device="cpu"))

    monkeypatch.setattr(collect.kt, "collect", fake)
    return collect, calls


def test_collect_dense_passes_no_timing_to_the_interpreter_and_names_the_options_it_ignores(
    tmp_path, monkeypatch, capsys
):
    collect, calls = collect_with(monkeypatch)
    base = ["--sample", "1", "--limit", "1", "--dtypes", "float16", "--db", str(tmp_path / "t.db")]
    assert collect.main([*base, "--backend", "interpret"]) == 0
    assert "timing" not in calls[-1] and capsys.readouterr().err == "", "nothing given, nothing said"
    assert collect.main([*base, "--backend", "interpret", "--target-ms", "5", "--energy-s", "0"]) == 0
    err = capsys.readouterr().err
    assert "timing" not in calls[-1] and "cooldown" not in err
    assert err.count("--target-ms and --energy-s not used by the interpret backend") == 1, err
    assert collect.main([*base, "--backend", "cuda", "--target-ms", "5"]) == 0
    assert (
        calls[-1]["timing"].target_ms == 5 and calls[-1]["timing"].energy_s == collect.DEFAULT_TIMING.energy_s
    )


def test_cli_overhead_prints_the_command_with_every_option_it_ran_with(monkeypatch, capsys):
    """The caption dropped --repeats. Nothing is run here: each row's figure is a stand-in, never printed as one."""
    overhead = benchmark_module("cli_overhead")
    monkeypatch.setattr(overhead, "median", lambda *args, **kwargs: 0.0)
    monkeypatch.setattr(overhead, "tune", lambda *args: 0.0)
    assert overhead.main(["--repeats", "1", "--skip-full"]) == 0
    assert "`python benchmarks/cli_overhead.py --repeats 1 --skip-full`" in capsys.readouterr().out


def test_the_build_scripts_score_a_gzipped_file_as_the_plain_one(tmp_path):
    """--score of unaligned_builds.py read only plain files (UnicodeDecodeError on the committed .jsonl.gz)."""
    from kt.codegen.gemm import GemmFamily

    config = next(c for c in GemmFamily().all_configs() if c.num_warps == 4 and not c.tma)
    row = {"shape": [1000, 999, 77], "dtype": "float16", "precision": "ieee", "config": config.to_dict()}
    rows = [
        {**row, "arch": 80, "status": status, "acc": 64, "a_tile": 32, "b_tile": 32}
        for status in ("ok", "refused")
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "b.jsonl").write_text(text)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(text)
    plain, zipped = (
        script("unaligned_builds.py", "--score", tmp_path / name) for name in ("b.jsonl", "b.jsonl.gz")
    )
    assert plain.returncode == zipped.returncode == 0, zipped.stderr
    assert "2 builds" in plain.stdout and zipped.stdout == plain.stdout.replace("b.jsonl", "b.jsonl.gz")


def test_search_variants_skips_a_last_line_cut_short_by_a_crash_and_refuses_an_earlier_one(tmp_path):
    """Its resume reads the runs so far: a run's line cut short by a kill is the last one, and is redone; a
    line cut short before others is no file of this script's."""
    from conftest import benchmark_module

    study = benchmark_module("search_variants")
    row = '{"space": "s", "variant": "base", "budget": 25, "seed": 1, "score": 0.9}'
    path = tmp_path / "runs.jsonl"
    path.write_text(f'{row}\n{{"space": "s", "vari\n')
    assert [r["score"] for r in study.read(path)] == [0.9]
    path.write_text(f'{{"space": "s", "vari\n{row}\n')
    with pytest.raises(SystemExit, match=r"line 1 is not JSON"):
        study.read(path)
    path.write_text('{"space": "s", "vari\n')  # the first run's line, cut: nothing to resume from
    assert study.read(path) == []
