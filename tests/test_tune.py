"""kt.tune end to end on the CPU: checks, the database, resume after a kill, artifacts that need only torch + triton."""

import ast
import copy
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import kt_cli, rel_err, run_as_user

import kt
from kt.codegen.gemm import GemmConfig, GemmFamily

SPEC = {
    "op": "dense",
    "name": "tiny",
    "dtype": "float16",
    "shape": {"m": 70, "n": 45, "k": 90},
    "layout": {"a": "row", "b": "col"},
    "tune": {"budget": 6, "seed": 1},
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    db = tmp_path_factory.mktemp("tune") / "t.db"
    return kt.tune(SPEC, db=db, workers=2, progress=False), db


def test_cpu_tune_checks_every_chosen_config_and_times_nothing(tuned):
    result, _ = tuned
    assert len(result.rows) == 6 and result.statuses() == {"ok": 6}
    assert result.runner == "interpret" and not result.measured
    assert all(row["runtime_ms"] is None and row["power_w"] is None for row in result.rows)
    assert all(row["rel_err"] < 2e-3 and row["smem_bytes"] > 0 for row in result.rows)
    # the sm_90 build's evidence in every row: registers, no spills, the MMA kind, no TMA in this template
    assert all(row["registers"] > 0 and row["local_bytes"] == 0 and row["tma"] == 0 for row in result.rows)
    assert {row["mma_kind"] for row in result.rows} <= {"wgmma", "mma.sync", "none"}
    assert result.best.runtime_ms is None and result.best.predicted_ms > 0
    best_ranked = min(result.rows, key=lambda r: r["rank"])
    assert result.best.config == GemmConfig.from_dict(best_ranked["config"]), "the model's best among passing"
    assert any("nothing was timed" in note for note in result.notes)


def test_a_second_tune_measures_nothing_again(tuned):
    result, db = tuned
    again = kt.tune(SPEC, db=db, workers=2, progress=False)
    assert again.newly_measured == 0
    assert [r["id"] for r in again.rows] == [r["id"] for r in result.rows]
    assert again.best.config == result.best.config
    # its artifact says so: this run's search ran nothing, the rows it chose among are the first run's
    first, second = (
        json.loads((r.save(Path(d) / "tiny") / "meta.json").read_text())["tuning"]
        for r, d in ((result, db.parent / "one"), (again, db.parent / "two"))
    )
    assert (first["new"], first["rounds"], second["new"], second["rounds"], second["models"]) == (
        6,
        1,
        0,
        0,
        [],
    )
    assert first["checked"] == second["checked"] == 6 and second["first_model"] == first["first_model"]
    # with another strategy and model, what chose the best was the first run's: said in the result's notes
    # (it was said only in the progress output, which --quiet drops, and meta.json credits the new ones)
    other = kt.tune(SPEC, db=db, workers=2, progress=False, strategy="random", model="analytic", seed=7)
    assert other.newly_measured == 0 and other.best.config == result.best.config
    # the seed is recorded (meta.json had none: a random search's artifact could not be reproduced from it)
    assert (
        first["seed"],
        json.loads((other.save(db.parent / "three") / "meta.json").read_text())["tuning"]["seed"],
    ) == (1, 7)
    assert any(
        note.startswith(
            "nothing new was checked: the database held 6 configs of this problem checked by earlier runs or by"
        )
        for note in other.notes
    ), other.notes
    assert not any(note.startswith("nothing new") for note in result.notes)
    # an energy objective without a GPU or a model of power: the choice is by predicted time, now said
    energy = kt.tune(SPEC, db=db, workers=2, progress=False, objective="energy")
    assert any("the energy objective was not applied: nothing was measured and" in n for n in energy.notes)
    assert not any("objective was not applied" in n for n in result.notes)


def test_artifact_round_trip_and_meta(tuned, tmp_path):
    result, _ = tuned
    path = result.save(tmp_path / "artifacts" / "tiny")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["measured"] is False and meta["runtime_ms"] is None and meta["power_w"] is None
    assert meta["config"] == result.best.config.to_dict() and meta["spec"]["name"] == "tiny"
    assert meta["device"]["target"] == "h100" and meta["software"]["triton"]
    # the check that passed it: its row's float64 relative error
    assert meta["checked"]["rel_err"] == result.best.row["rel_err"] < result.problem.tolerance()
    # the interpreter checked reduced problems (as small as the config's tiles allow): meta names them
    checked = meta["checked"]["problems"]
    assert checked == result.best.row["checked_problems"] and checked != [result.problem.to_dict()]
    assert all(c["m"] <= 70 and c["n"] <= 45 and c["k"] <= 90 and c["dtype"] == "float16" for c in checked)
    kernel = kt.load(path)
    a, b = kt.random_args(SPEC, seed=5)
    assert rel_err(kernel(a, b), a.double() @ b.double()) < 2e-3
    assert torch.equal(kernel(a, b), kt.build(SPEC, result.best.config)(a, b))
    saved_again = result.save(path)  # replacing an artifact leaves exactly one, whole
    assert sorted(p.name for p in saved_again.iterdir()) == ["kernel.py", "meta.json"]
    assert [p.name for p in path.parent.iterdir()] == ["tiny"]


def _interpreter_needs_kt_patch() -> bool:
    from kt.codegen.compat import _needs_index_fix

    return not torch.cuda.is_available() and _needs_index_fix()


@pytest.mark.skipif(
    _interpreter_needs_kt_patch(),
    reason="Triton < 3.9 with NumPy >= 2.4 cannot interpret any "
    "kernel without kt's patch (triton-lang/triton#9171); the GPU and Triton 3.9 are unaffected",
)
def test_kernel_py_imports_only_torch_and_triton_and_runs_without_kt(tuned, tmp_path):
    result, _ = tuned
    path = result.save(tmp_path / "tiny")
    tree = ast.parse((path / "kernel.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # beyond Python's own library (functools, for the wrapper that launches on the tensors' GPU)
    assert {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names} == {
        "torch",
        "triton",
        "triton.language",
    }
    assert imported <= {"torch", "triton", "triton.language", "functools"}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs it in Triton's interpreter
    script = textwrap.dedent(f"""
        import sys, importlib.util
        sys.modules["kt"] = None  # any `import kt` now fails
        import torch
        spec = importlib.util.spec_from_file_location("kernel", {str(path / "kernel.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        a = torch.randn(70, 90, device="{device}").half()
        b = torch.randn(45, 90, device="{device}").half().t()
        c = module.kernel(a, b)
        ref = a.double() @ b.double()
        print(float((c.double() - ref).norm() / ref.norm()))
    """)
    env = {**os.environ, "TRITON_INTERPRET": "0" if device == "cuda" else "1"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) < 2e-3


def test_a_tune_result_prints_as_a_summary_not_its_whole_search_space(tuned):
    """print(result) wrote 3.2 MB: the plan's every legal config and record, through the dataclass repr."""
    result, _ = tuned
    text = repr(result)
    assert text.startswith(f"TuneResult(tiny: dense float16, best {result.best.config.key()}, not measured (")
    assert text.endswith(f"; {len(result.rows)} rows, {result.newly_measured} new)") and len(text) < 300
    legal = len(result.plan.space.legal)
    assert f": {legal} legal of {result.plan.space.total} configs, ranked by " in repr(result.plan)
    assert len(repr(result.plan)) < 400 and len(repr(result.plan.space)) < 200


def test_damaged_or_foreign_artifacts_are_refused(tuned, tmp_path):
    result, _ = tuned
    path = result.save(tmp_path / "tiny")
    (path / "kernel.py").write_text((path / "kernel.py").read_text() + "\n# edited\n")
    with pytest.raises(kt.ArtifactError, match="does not match the checksum"):
        kt.load(path)
    assert kt.load(path, verify=False).config == result.best.config
    meta = json.loads((path / "meta.json").read_text())
    del meta["kernel_sha256"]  # said a kernel.py "does not match" a checksum that is not there
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(kt.ArtifactError, match=r"meta.json is damaged: it has no 'kernel_sha256' to check"):
        kt.load(path)
    assert kt.load(path, verify=False).config == result.best.config
    # renamed or cut off: it loaded, and its first call failed naming kt's cache module
    for text in ((path / "kernel.py").read_text().replace("def kernel(", "def my_kernel("), ""):
        (path / "kernel.py").write_text(text)
        with pytest.raises(
            kt.ArtifactError, match=r"kernel.py defines no kernel\(\) function \(edited or damaged\)"
        ):
            kt.load(path, verify=False)
    with pytest.raises(kt.ArtifactError, match="not found"):
        kt.load(tmp_path / "missing")
    with pytest.raises(
        kt.ArtifactError, match=f"is a file of an artifact; give the artifact's folder, {path}$"
    ):
        kt.load(path / "meta.json")  # "is not a directory"
    with pytest.raises(kt.ArtifactError, match="got an empty one$"):
        kt.load("")  # read as the working folder
    (tmp_path / "nometa").mkdir()
    (tmp_path / "nometa" / "kernel.py").write_text("")
    with pytest.raises(kt.ArtifactError, match="has no meta.json"):
        kt.load(tmp_path / "nometa")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(kt.ArtifactError, match="exists and is not a kt artifact; save to another path$"):
        result.save(tmp_path / "mine")  # Python's save was told to choose another --out, kt tune's flag
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    (tmp_path / "file").write_text("")
    with pytest.raises(kt.ArtifactError, match="is a file, not an artifact directory; save to another path$"):
        result.save(tmp_path / "file")


def test_a_kernel_py_with_a_null_byte_is_named_without_a_line_it_does_not_have(tuned, tmp_path):
    """Python's SyntaxError for a null byte has no line number: the error said "kernel.py, line None: ..."."""
    result, _ = tuned
    path = result.save(tmp_path / "tiny")
    (path / "kernel.py").write_bytes(
        (path / "kernel.py").read_bytes().replace(b"import torch", b"import\0torch")
    )
    with pytest.raises(kt.ArtifactError) as refused:
        kt.load(path, verify=False)
    assert str(refused.value).startswith(f"{path / 'kernel.py'}") and "null bytes" in str(refused.value)
    assert "None" not in str(refused.value)


def test_a_read_only_artifact_folder_is_refused_before_its_artifact_is_replaced(tuned, tmp_path):
    """kt tune replaced it, then failed writing the kept mark into the old folder: exit 2 with a bare
    "Permission denied", the old artifact left in a hidden staging folder instead of <name>.prev."""
    result, _ = tuned
    path = result.save(tmp_path / "ro")
    before = sorted(p.name for p in tmp_path.iterdir())
    path.chmod(0o555)
    try:
        done = run_as_user(
            [sys.executable, "-c"]
            + [
                "import kt.autotune.artifact as a\n"
                "try:\n"
                f"    a.check_target({str(path)!r})\n"
                "except a.ArtifactError as e:\n"
                "    print(e)\n"
            ]
        )
    finally:
        path.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"{path} is a read-only folder, so the artifact there cannot be replaced; make it writable "
        f"(chmod u+w {path}) or choose another --out"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_out_folder_that_is_a_link_loop_is_refused_before_a_tune(tmp_path):
    """An artifact path whose symbolic links go round in a loop (one link, or two) is refused in one line, on
    every Python (kt.files.link_target: Path.resolve changed on 3.13)."""
    from kt.autotune.artifact import ArtifactError, check_target

    (tmp_path / "self").symlink_to("self")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    for name in ("self", "a"):
        with pytest.raises(ArtifactError) as refused:
            check_target(tmp_path / name)
        assert str(refused.value) == (
            f"{tmp_path / name} is a symbolic link that leads round in a loop; remove it, or choose another --out"
        )


@pytest.mark.parametrize(
    "damage, words",
    [
        (b"\xff\xfe{}", "is not valid JSON"),  # was a raw UnicodeDecodeError
        ({"config": 5}, r"is damaged: config must be a mapping of the gemm config's fields, got 5$"),
        ({"family": ["gemm"]}, r"is damaged: family \['gemm'\] is not one of gemm, "),
        ({"config": None}, "is damaged: config is null, but kernel.py is a generated kernel$"),
        ({"config": {"block_m": "big"}}, "is damaged: config: block_m: must be an integer, got 'big'$"),
        ({"spec": None}, "is damaged: spec: "),
        ("family", "is damaged: it has no 'family'$"),
        # a KeyError's or TypeError's own text ("'zzz'", "'NoneType' object is not subscriptable") in `kt
        # inspect`, and a string taken for true
        ({"family": "zzz"}, r"is damaged: family 'zzz' is not one of gemm, "),
        (
            {"device": None},
            "is damaged: device must be a mapping whose target and ran_on are strings, got None$",
        ),
        ({"measured": "yes"}, "is damaged: measured must be true or false, got 'yes'$"),
        ({"problem": [16]}, r"is damaged: problem must be a mapping, got \[16\]$"),
        # kt inspect's TypeError and AttributeError
        ({"tuning": "x"}, "is damaged: tuning must be a mapping, got 'x'$"),
        ({"tuning": {"db": 12}}, "is damaged: tuning.db must be the database's path, got 12$"),
        # an AttributeError in repr() and in kt.nn's forward (a generated kernel.py taken for PyTorch's path)
        (
            {"kernel": "pytorch"},
            "is damaged: its kernel is 'pytorch', but kernel.py is a generated kernel; re-run",
        ),
        ({"kernel": 3}, "is damaged: kernel must be one of generated, pytorch, got 3$"),
        # a Kernel that said float32 and ran float16; a problem kt.nn would pick for another shape
        (
            lambda meta: meta["spec"].update(dtype="float32"),
            "is damaged: its spec's dtype is float32, but kernel.py was built for float16; re-run",
        ),
        (
            lambda meta: meta["problem"].update(m=999),
            r"is damaged: its problem is not the one its spec makes \(m 999 where its spec makes 70\); re-run",
        ),
        ({"format": "1"}, "has format '1'; this kt reads format 1$"),  # "has format 1; ... reads format 1"
        ({"format": True}, "has format True; this kt reads format 1$"),  # True == 1 passed
        # GemmConfig.__init__()'s own words: "missing 3 required positional arguments"
        ({"config": {}}, r"is damaged: config: missing block_m, block_n, block_k \(a gemm config has "),
        (b"[]", "is not a JSON object \\(it is a list\\)$"),
    ],
    ids=[
        "not-utf8",
        "config-int",
        "family-list",
        "config-null",
        "config-field",
        "spec-null",
        "no-family",
        "family-unknown",
        "device-null",
        "measured-text",
        "problem-list",
        "tuning-text",
        "tuning-db-int",
        "kernel-pytorch",
        "kernel-int",
        "spec-dtype",
        "problem-shape",
        "format-text",
        "format-true",
        "config-empty",
        "not-an-object",
    ],
)
def test_a_damaged_meta_json_is_one_artifact_error_naming_the_field(tuned, tmp_path, damage, words):
    """Each of these was a raw TypeError, AttributeError (on repr, for a null config) or UnicodeDecodeError."""
    result, _ = tuned
    path = result.save(tmp_path / "tiny")
    meta = json.loads((path / "meta.json").read_text())
    if isinstance(damage, bytes):
        (path / "meta.json").write_bytes(damage)
    elif callable(damage):
        damage(meta)
        (path / "meta.json").write_text(json.dumps(meta))
    else:
        meta.pop(damage) if isinstance(damage, str) else meta.update(damage)
        (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(kt.ArtifactError, match=words):
        kt.load(path)
    if isinstance(damage, dict) and set(damage) & {"family", "device", "measured", "problem", "tuning"}:
        with pytest.raises(kt.ArtifactError, match=words):  # kt inspect reads them the same way
            kt.inspect(path)


def test_a_candidate_that_crashes_its_worker_is_recorded_and_the_tune_goes_on(tmp_path, monkeypatch):
    render = GemmFamily.render
    victim = kt.plan(SPEC).chosen[0]
    victim_key = kt.plan(SPEC).config(victim).key()

    def render_with_a_crash(self, problem, config, **kw):
        if config.key() == victim_key:
            return (
                "import os, signal\n\ndef kernel(a, b, out=None):\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
            )
        return render(self, problem, config, **kw)

    monkeypatch.setattr(GemmFamily, "render", render_with_a_crash)
    result = kt.tune(SPEC, db=tmp_path / "t.db", workers=2, progress=False)
    by_key = {row["config_key"]: row for row in result.rows}
    assert by_key[victim_key]["status"] == "crash" and "SIGSEGV" in by_key[victim_key]["message"]
    assert result.statuses() == {"ok": 5, "crash": 1}
    assert result.best.config.key() != victim_key


def test_all_candidates_failing_is_an_error_not_an_artifact(tmp_path, monkeypatch):
    monkeypatch.setattr(GemmFamily, "render", lambda self, problem, config, **kw: "def kernel(:\n")
    with pytest.raises(kt.KtError, match=r"none of the 6 candidates passed \(6 compile_error\)"):
        kt.tune(SPEC, db=tmp_path / "t.db", workers=2, progress=False)


def _rows(db):
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, config_key, created_at FROM measurements ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


SLOW_KERNELS = """
import kt.codegen.gemm as gemm

_render = gemm.GemmFamily.render


def _slow_render(self, problem, config, **kw):
    return _render(self, problem, config, **kw) + (
        "\\n\\nimport time as _time\\n_kernel = kernel\\n\\n\\n"
        "def kernel(*args, **kwargs):\\n    _time.sleep(0.25)\\n    return _kernel(*args, **kwargs)\\n"
    )


gemm.GemmFamily.render = _slow_render
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, ops",
    [(signal.SIGKILL, 1), (signal.SIGINT, 1), (signal.SIGINT, 2)],
    ids=["killed", "interrupted", "two-ops-at-once-interrupted"],
)
def test_a_tune_stopped_mid_run_resumes_without_losing_or_repeating_rows(tmp_path, how, ops):
    budget = 12 // ops  # 12 checks in all: the stop comes mid-run
    specs = [tmp_path / f"op{number}.yaml" for number in range(ops)]
    for number, spec in enumerate(specs):
        spec.write_text(
            f"op: dense\nname: resume{number}\nshape: {{m: {100 + number}, n: 60, k: 80}}\n"
            f"tune: {{budget: {budget}, seed: 3}}\n"
        )
    # Every generated kernel sleeps 0.25 s per call in the stopped run (a sitecustomize its `kt tune` process
    # imports): with Triton's compile cache warm, 12 checks otherwise land in well under a second, often all
    # between two polls below, and the stop would come after the last.
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_KERNELS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")])),
    }
    db = tmp_path / "t.db"
    command = [
        sys.executable,
        "-m",
        "kt.cli",
        "tune",
        *map(str, specs),
        "--db",
        str(db),
        "--out",
        str(tmp_path / "art"),
        "--workers",
        "1",
        "--quiet",
    ]
    # Started as a shell starts it, with Ctrl-C at its default: an ignored SIGINT is inherited across exec, and
    # in the whole suite's pytest process it can be ignored (the child then never stops).
    first = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while len(_rows(db)) < 3 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, "the first tune finished before it could be stopped"
    parent_sigint = signal.getsignal(signal.SIGINT)
    first.send_signal(how)
    _, stderr = first.communicate(timeout=60)
    before = _rows(db)
    total = (budget + 1) * ops  # each op: its configs and candidate zero
    assert 3 <= len(before) < total, f"not stopped (the test process's SIGINT handler: {parent_sigint})"
    assert before[0][1] == "pytorch", "candidate zero, PyTorch's path, is checked with the first round"
    if how == signal.SIGINT:
        assert first.returncode == 130 and "running the same command again resumes" in stderr
        with sqlite3.connect(db) as conn:  # every op let go of what it was checking
            assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    else:
        assert first.returncode == -signal.SIGKILL
    # the resumed tune runs in this process (click's runner), at full speed: a new Python would spend 2-3 s
    # importing torch again, and what is checked of it is what it adds to the database and says
    second = kt_cli(*command[3:])
    assert second.returncode == 0, second.stderr
    after = _rows(db)
    assert len(after) == total and len({(key, id_) for id_, key, _ in after}) == total
    with sqlite3.connect(db) as conn:  # no config of any op measured twice
        keys = conn.execute("SELECT problem_key, config_key FROM measurements").fetchall()
    assert len(set(keys)) == total
    assert after[: len(before)] == before, "rows written before the stop are kept as they were"
    fresh = [int(n) for n in re.findall(r"(\d+) new checks?\b", second.stdout)]
    configs_before = sum(key != "pytorch" for _, key, _ in before)  # "new checks" counts configs only
    assert len(fresh) == ops and sum(fresh) == budget * ops - configs_before


def test_timeouts_are_kept_unless_retried(tmp_path, monkeypatch):
    spec = {**SPEC, "name": "retry", "tune": {"budget": 2, "seed": 1}}
    render = GemmFamily.render
    monkeypatch.setattr(
        GemmFamily,
        "render",
        lambda self, problem, config, **kw: (
            "import time\n\ndef kernel(a, b, out=None):\n    time.sleep(3600)\n"
        ),
    )
    with pytest.raises(kt.KtError, match=r"\(2 timeout\)"):
        kt.tune(spec, db=tmp_path / "t.db", workers=2, progress=False, timeout_s=2)  # the kernels never end
    monkeypatch.setattr(GemmFamily, "render", render)
    with pytest.raises(kt.KtError, match=r"\(2 timeout\)"):  # measured already: nothing runs again
        kt.tune(spec, db=tmp_path / "t.db", workers=2, progress=False)
    result = kt.tune(spec, db=tmp_path / "t.db", workers=2, progress=False, retry_failed=True)
    assert result.statuses() == {"ok": 2} and result.newly_measured == 2


def test_an_artifact_is_world_readable_and_loads_from_any_directory(tuned, tmp_path, monkeypatch):
    import dataclasses
    import stat

    from kt.device import H100, save_profile

    result, _ = tuned
    profile = save_profile(dataclasses.replace(H100, name="lab"), tmp_path / "specs" / "lab.json")
    spec_file = tmp_path / "specs" / "op.yaml"
    spec_file.write_text(
        "op: dense\nname: labbed\ndtype: float16\nshape: {m: 70, n: 45, k: 90}\nlayout: {a: row, b: col}\n"
        "device: lab.json\n"
    )
    result = copy.copy(result)  # not the module's shared result, which later tests save as it was
    result.spec = kt.load_spec(spec_file)
    path = result.save(tmp_path / "out" / "labbed")
    assert stat.S_IMODE(path.stat().st_mode) & 0o055 == 0o055 & ~os.umask(os.umask(0))
    profile.unlink()
    monkeypatch.chdir("/")
    assert kt.load(path).spec.device == str(profile)


@pytest.mark.parametrize("damage", [{"tuning": "x"}, [1, 2]], ids=["tuning-text", "json-list"])
def test_a_save_over_a_hand_damaged_artifact_keeps_it_as_prev(tuned, tmp_path, damage):
    """Reading what changed in the old meta.json raised AttributeError ('str' object has no attribute 'get')."""
    result, _ = tuned
    path = result.save(tmp_path / "tiny")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, **damage} if isinstance(damage, dict) else damage))
    result.save(path)
    assert kt.load(path).config == result.best.config
    assert json.loads((tmp_path / "tiny.prev" / "meta.json").read_text()) == (
        {**meta, **damage} if isinstance(damage, dict) else damage
    )


def test_a_cooldown_asked_of_the_interpret_backend_is_said_to_be_unused(tmp_path, caplog):
    """`--cooldown-ms 60000` without a GPU was dropped without a word (a --power-cap there gets a note)."""
    from kt.autotune.timing import TimingSettings

    spec = {**SPEC, "tune": {"configs": [{"block_m": 16, "block_n": 16, "block_k": 16}]}}
    with caplog.at_level("WARNING", logger="kt"):
        kt.tune(
            spec,
            db=tmp_path / "t.db",
            workers=1,
            progress=False,
            baseline=False,
            timing=TimingSettings(cooldown_ms=500),
        )
    assert "timing is not used by the interpret backend" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kt"):
        kt.tune(spec, db=tmp_path / "t.db", workers=1, progress=False, baseline=False)
    assert "cooldown" not in caplog.text


def test_a_rerun_that_checked_every_distinct_program_does_not_ask_for_a_larger_budget(tmp_path):
    """Every config that runs differently already checked: "raise --budget to check more" was said where a
    larger budget finds nothing else to run (the space's 15 legal configs are 7 programs)."""
    from conftest import SEVEN_PROGRAMS as spec

    options = dict(
        budget=64, backend="interpret", db=tmp_path / "t.db", progress=False, baseline=False, workers=1
    )
    first = kt.tune(spec, **options)
    assert len(first.rows) == 7
    again = kt.tune(spec, **options)
    (nothing,) = [note for note in again.notes if note.startswith("nothing new was checked")]
    assert "raise --budget" not in nothing


def test_a_damaged_kernel_cache_copy_of_an_artifacts_kernel_is_rewritten_not_run(tuned, tmp_path):
    """kt.load checked kernel.py's checksum, then imported the kernel cache's file of the same hash unread: an
    edited copy there ran (a result twice the product) and a truncated one was blamed on the artifact."""
    from kt.codegen.emit import write_source

    result, _ = tuned
    path = result.save(tmp_path / "tiny")
    text = (path / "kernel.py").read_text()
    cached = write_source(text)
    for damaged in (text.replace("def kernel(", "def kernel_gone("), text[: len(text) // 2], ""):
        cached.write_text(damaged)
        kernel = kt.load(path)
        assert kernel.source == text and cached.read_text() == text
        a, b = kt.random_args(result.spec)  # its dense problem: two operands
        assert rel_err(kernel(a, b), kt.reference(result.spec)(a, b)) < 2e-3


def test_a_save_killed_mid_way_through_a_three_rename_exchange_gets_its_old_artifact_back(tuned, tmp_path):
    """Without renameat2 (NFS, an old glibc) the exchange is three renames; a save killed after the first left
    the old artifact only in `.NAME.old-*/NAME`, which the next save removed, then said there had been none."""
    from kt.autotune.artifact import save_artifact_report

    result, _ = tuned
    path = result.save(tmp_path / "tiny")
    meta = (path / "meta.json").read_text()
    aside = (
        tmp_path / ".tiny.old-k1ll3d00"
    )  # as _exchange's fallback names it, killed after os.replace(b, aside)
    aside.mkdir()
    path.rename(aside / "tiny")
    (tmp_path / ".tiny.tmp-k1ll3d00").mkdir()  # the new artifact's staging folder, left too
    saved, report = save_artifact_report(result, path)
    assert report is not None and report.startswith("replaced the artifact there"), report
    assert (saved / "meta.json").read_text() == meta and kt.load(saved).config == result.best.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_a_meta_json_edited_to_the_other_float32_precision_is_refused(tmp_path):
    """A float32 kernel.py bakes its products (tf32 or ieee) into its tl.dot calls; a meta.json whose spec and
    problem were edited to the other loaded as a Kernel that said ieee and ran TF32."""
    spec = {**SPEC, "name": "tf", "dtype": "float32", "precision": "tf32", "tune": {"budget": 1, "seed": 1}}
    result = kt.tune(spec, db=tmp_path / "t.db", workers=1, progress=False)
    path = result.save(tmp_path / "tf")
    assert kt.load(path).spec.precision == "tf32"
    meta = json.loads((path / "meta.json").read_text())
    meta["spec"]["precision"] = "ieee"
    meta["problem"]["precision"] = "ieee"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        kt.ArtifactError,
        match="is damaged: its spec's precision is ieee, but kernel.py was built for tf32; re-run",
    ):
        kt.load(path)
    assert kt.load(path, verify=False).spec.precision == "ieee"


def test_a_save_path_too_long_for_the_file_system_is_one_line(tuned, tmp_path):
    """A last name of 250 characters: the hidden staging folder beside it is 264, and the save failed with
    OSError's "File name too long"; at 256 check_target passed it to the same error."""
    result, _ = tuned
    for path in (tmp_path / ("a" * 250), tmp_path / ("a" * 256), tmp_path / ("b" * 256) / "tiny"):
        with pytest.raises(kt.ArtifactError, match="a name in it is too long for the file system"):
            result.save(path)
    assert list(tmp_path.iterdir()) == []
