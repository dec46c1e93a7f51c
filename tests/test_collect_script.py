"""benchmarks/collect_dense.py on the CPU: the interpreter checks configs (no timings), the database resumes."""

import csv

import pytest
from conftest import benchmark_module

from kt.autotune.database import Database


@pytest.fixture(scope="module")
def script():
    return benchmark_module("collect_dense")


def test_the_suite_has_twenty_shapes_or_more_in_both_dtypes(script):
    assert len(script.SHAPES) >= 20 and set(script.DTYPES) == {"float16", "bfloat16"}
    assert any(m % 16 and n % 16 for m, n, _, _ in script.SHAPES), "odd sizes"
    assert any(min(m, n) <= 64 for m, n, _, _ in script.SHAPES), "skinny shapes"


def test_it_fills_a_database_resumes_and_exports_only_gpu_rows(script, tmp_path, capsys):
    args = ["--sample", "1", "--limit", "1", "--dtypes", "bfloat16", "--backend", "interpret"]
    args += ["--db", str(tmp_path / "s.db"), "--export", str(tmp_path / "out.csv"), "--workers", "1"]
    assert script.main(args) == 0
    assert "1 configs (1 new, 1 ok)" in capsys.readouterr().out
    assert script.main(args) == 0
    assert "(0 new, 1 ok)" in capsys.readouterr().out, "a second run measures nothing again"
    with Database(tmp_path / "s.db", create=False, readonly=True) as db:
        assert [r["runner"] for r in db.find()] == ["interpret"]
    with open(tmp_path / "out.csv") as handle:
        assert list(csv.DictReader(handle)) == [], "interpreter checks are not measurements"


def test_bad_arguments_stop_before_anything_runs(script, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        script.main(["--sample", "1", "--db", str(tmp_path / "s.db"), "--dtypes", "float64"])
    assert exit_.value.code == 2 and not (tmp_path / "s.db").exists()
