"""The tune loop's GPU branch (rounds, refits, resume, power cap) on a machine without a GPU.

A GPU runner cannot run here, so these tests swap in a stand-in runner that "answers" each candidate with the
analytic model's own prediction (and, where a test needs one, the datasheet's board power). Those numbers are a
model's outputs and a datasheet figure, not timings or readings: they only let the loop's control flow run. The
stand-in's rows carry runner "stand-in", so nothing that reads GPU measurements (runner "cuda") ever sees them.
Candidate zero (PyTorch's own path) is answered the same way: by the analytic model's prediction for a legal
config the test names (the slowest or the fastest of the space), or, by default, with no figure at all.
"""

import json
import time

import numpy as np
import pytest
import torch
from conftest import refitted_from, stand_in_records

import kt
import kt.autotune.tune as tune_module
from kt.autotune.runners import Result, Runner
from kt.autotune.tune import PyTorchPath
from kt.costmodel import AnalyticModel, gemm_terms
from kt.costmodel.correction import CorrectedModel, refit
from kt.costmodel.forest import ForestModel
from kt.device import H100
from kt.errors import KtError

SPEC = {"op": "dense", "name": "loop", "shape": {"m": 384, "n": 256, "k": 192}, "device": "h100"}


class StandInRunner(Runner):
    """Measures nothing: answers with the analytic model's prediction (see the module docstring)."""

    name = "stand-in"
    measures_time = True
    device = "stand-in: analytic-model outputs, not a GPU"
    compile_target = False
    stages = groups = payload = None  # never starts workers

    def __init__(self, profile, power_w=None, pytorch_as=None):
        super().__init__(profile)
        self.power_w, self.batches, self.pytorch_as = power_w, [], pytorch_as

    def start_pool(self):
        return None

    def run(self, candidates, deadline=None):
        zero = [c for c in candidates if isinstance(c.config, PyTorchPath)]
        candidates = [c for c in candidates if not isinstance(c.config, PyTorchPath)]
        self.batches.append(len(candidates))
        if zero:
            yield self.answer_zero(zero[0])
        if not candidates:  # candidate zero alone
            return
        records = [{**c.problem.to_record(), **c.config.to_dict()} for c in candidates]
        for candidate, seconds in zip(candidates, gemm_terms(records, self.profile)["predicted_s"]):
            yield self.answer(candidate, float(seconds))

    def answer(self, candidate, seconds):
        values = {"runtime_ms": seconds * 1e3, "rel_err": 0.0}
        if self.power_w is not None:
            values.update(power_w=self.power_w, energy_mj=self.power_w * seconds * 1e3)
        return Result(candidate, "ok", values)

    def answer_zero(self, candidate):
        """Candidate zero: the analytic prediction of the slowest or fastest legal config, or nothing."""
        if self.pytorch_as is None:
            return Result(candidate, "ok", {"rel_err": 0.0})
        problem = candidate.problem
        legal = kt.space(SPEC).legal
        records = [{**problem.to_record(), **c.to_dict()} for c in legal]
        predicted = gemm_terms(records, self.profile)["predicted_s"]
        pick = max if self.pytorch_as == "slowest" else min
        return self.answer(candidate, float(pick(predicted)))


def small_forest() -> ForestModel:
    """An 8-tree forest fitted on the conftest's stand-in rows (the analytic model's outputs, not timings) of two
    shapes: its ranking disagrees with the stand-in runner's analytic answers."""
    shapes, configs = [(512, 512, 512), (1024, 256, 384)], [(64, 64, 32, 4, 3), (128, 64, 64, 4, 4)]
    return ForestModel(H100, n_estimators=8, n_jobs=1).fit(stand_in_records(shapes, configs * 2))


@pytest.fixture
def runner(monkeypatch):
    made = []

    def make(backend, profile, **options):
        made.append(StandInRunner(profile, power_w=made_power.get("w"), pytorch_as=made_power.get("pytorch")))
        return made[-1]

    made_power: dict = {}
    monkeypatch.setattr(tune_module, "make_runner", make)
    return made, made_power


def test_a_guided_tune_measures_in_rounds_and_refits_between_them(runner, tmp_path):
    made, _ = runner
    result = kt.tune(SPEC, budget=24, db=tmp_path / "t.db", progress=False, strategy="guided")
    (stand_in,) = made
    assert stand_in.batches[0] == 8 and len(stand_in.batches) >= 2, "a first round of 8, then small rounds"
    assert set(stand_in.batches[1:-1]) == {2}, stand_in.batches
    assert (
        result.trace.models[0] == "analytic"
        and result.trace.models[1] == "analytic corrected on 8 measured rows"
    )
    assert len(result.trace.measured) == len(set(result.trace.measured)) == sum(stand_in.batches) <= 24
    assert result.measured and result.newly_measured == len(result.rows) == sum(stand_in.batches)
    meta = json.loads((result.save(tmp_path / "art") / "meta.json").read_text())
    assert meta["prediction"]["model"] == result.best_model and meta["tuning"]["models"][0] == "analytic"
    assert meta["tuning"]["first_model"] == "analytic" and meta["tuning"]["rounds"] == len(stand_in.batches)


def test_the_gpu_tests_name_for_a_refit_is_the_name_a_guided_tune_gives(runner, tmp_path):
    """tests/test_gpu.py's guided tune (same spec and budget) checks its refit's name with `refitted_from`: here
    the same tune loop names its refits, so a wrong expectation (it once wanted "forest for h100") fails on
    the CPU, not on a scarce GPU."""
    spec = {**SPEC, "shape": {"m": 2048, "n": 1024, "k": 512}}
    result = kt.tune(spec, budget=24, db=tmp_path / "t.db", progress=False, strategy="guided")
    assert result.trace.models[0] == "analytic" and refitted_from(result.trace.models[1])
    assert not refitted_from("forest for h100 (3000 rows)")


def test_candidate_zero_runs_once_and_kt_wins_when_its_kernel_is_faster(runner, tmp_path):
    made, power = runner
    power["pytorch"] = "slowest"  # candidate zero answered with the model's figure for the slowest config
    result = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False)
    assert result.baseline["config_key"] == "pytorch" and not result.best.pytorch
    assert result.baseline_ratio > 1
    meta = json.loads((result.save(tmp_path / "a") / "meta.json").read_text())
    assert meta["kernel"] == "generated" and meta["baseline"]["ratio"] == result.baseline_ratio
    again = kt.tune(SPEC, budget=12, db=tmp_path / "t.db", progress=False)
    assert again.baseline["id"] == result.baseline["id"], "candidate zero is not run again"
    assert "gemm_kernel" in (tmp_path / "a" / "kernel.py").read_text()


def test_when_nothing_generated_beats_pytorch_the_artifact_calls_pytorch(runner, tmp_path):
    _, power = runner
    power["pytorch"] = "fastest"  # no generated config can beat the model's figure for the fastest
    result = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False)
    assert result.best.pytorch and result.best.runtime_ms == result.baseline["runtime_ms"]
    assert any("no generated kernel beat PyTorch's own path (torch.matmul)" in n for n in result.notes)
    kernel = kt.load(result.save(tmp_path / "a"))
    assert kernel.pytorch and kernel.meta["kernel"] == "pytorch" and kernel.config is not None
    source = kernel.source
    assert "torch.matmul" in source and "triton" not in source and "no generated kernel" in source
    a, b = kt.random_args(SPEC, seed=3, device="cpu")
    assert torch.equal(kernel(a, b), torch.matmul(a, b))
    assert "PyTorch: torch.matmul" in repr(kernel)


class NothingGeneratedRuns(StandInRunner):
    """Every generated config is out of resources; candidate zero is answered as the stand-in answers it."""

    def run(self, candidates, deadline=None):
        for candidate in candidates:
            if isinstance(candidate.config, PyTorchPath):
                yield self.answer_zero(candidate)
            else:
                yield Result(
                    candidate, "out_of_resources", {}, "stand-in: refused as the GPU would refuse it"
                )


class DeadlineAfterZero(StandInRunner):
    """Candidate zero is answered; the deadline then passes before any generated config comes back."""

    def run(self, candidates, deadline=None):
        for candidate in candidates:
            if isinstance(candidate.config, PyTorchPath):
                yield self.answer_zero(candidate)
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)


def test_a_deadline_that_passes_after_pytorchs_path_leaves_it_the_artifact_and_says_why(
    monkeypatch, tmp_path
):
    """On a GPU, the H200's 3-minute `kt bench` (2026-12-04) reached its FFT case with seconds left: PyTorch's
    path was measured, no generated config was. The tune says the deadline passed, and not also that no
    generated kernel beat PyTorch's path (none ran)."""
    monkeypatch.setattr(
        tune_module,
        "make_runner",
        lambda backend, profile, **o: DeadlineAfterZero(profile, pytorch_as="slowest"),
    )
    result = kt.tune(
        SPEC, budget=4, db=tmp_path / "t.db", progress=False, model="analytic", deadline=time.monotonic() + 3
    )
    assert result.best.pytorch and result.best.config is None and not result.rows
    assert any(n.startswith("the deadline passed before any of the") for n in result.notes), result.notes
    assert not any("no generated kernel beat" in n for n in result.notes), result.notes


def test_when_only_pytorch_passes_the_artifact_is_saved_and_calls_pytorch(monkeypatch, tmp_path):
    """No generated config passed (all spilled or out of resources, as top-ranked 16-bit GEMMs did on the H200)
    and PyTorch's path did: saving the result raised AttributeError in best_model ('NoneType' has no 'key')
    after the whole tune, and no artifact was written."""
    monkeypatch.setattr(
        tune_module,
        "make_runner",
        lambda backend, profile, **o: NothingGeneratedRuns(profile, pytorch_as="fastest"),
    )
    result = kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False, model="analytic")
    assert result.best.pytorch and result.best.config is None
    assert result.best_model == result.plan.model
    # why, in words: none ran (it said "no generated kernel beat PyTorch's own path", none having run)
    assert any(
        n.startswith("none of the 4 generated configs passed (4 out_of_resources)") for n in result.notes
    )
    assert not any("no generated kernel beat" in n for n in result.notes), result.notes
    kernel = kt.load(result.save(tmp_path / "a"))
    assert kernel.pytorch and kernel.meta["kernel"] == "pytorch" and kernel.meta["config"] is None
    a, b = kt.random_args(SPEC, seed=3, device="cpu")
    assert torch.equal(kernel(a, b), torch.matmul(a, b))


def test_a_best_measured_by_an_earlier_run_names_the_model_whose_prediction_it_shows(runner, tmp_path):
    """A rerun with nothing new to measure shows this run's prediction for the best (an earlier run measured
    it), and meta.json named the model "a model of an earlier run" beside that figure."""
    kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False)
    again = kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False, model="analytic")
    assert again.newly_measured == 0 and again.best.measured
    assert again.best_model == again.plan.model == "analytic"
    index = [c.key() for c in again.plan.space.legal].index(again.best.config.key())
    assert again.best.predicted_ms == pytest.approx(float(again.plan.predicted_s[index]) * 1e3)
    meta = kt.load(again.save(tmp_path / "a")).meta
    assert meta["prediction"]["model"] == "analytic"


def test_a_resumed_guided_tune_refits_first_and_measures_only_what_is_new(runner, tmp_path):
    made, _ = runner
    first = kt.tune(SPEC, budget=12, db=tmp_path / "t.db", progress=False)
    again = kt.tune(SPEC, budget=20, db=tmp_path / "t.db", progress=False)
    assert again.trace.models[0] == f"analytic corrected on {len(first.rows)} measured rows", (
        "ranked with what was measured before"
    )
    assert not set(again.trace.measured) & set(first.trace.measured)
    assert len(again.rows) <= 20 and again.newly_measured == sum(made[1].batches) <= 20 - len(first.rows)


def test_a_power_cap_that_no_config_meets_is_one_clear_error(runner, tmp_path):
    _, power = runner
    power["w"] = H100.tdp_w  # the datasheet figure, standing in for every config's reading
    with pytest.raises(KtError, match="power_cap_w: every passing config drew more than 300 W"):
        kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False, power_cap_w=300)
    result = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False, power_cap_w=H100.tdp_w)
    assert result.best.power_w == H100.tdp_w


def test_energy_under_a_cap_without_any_power_reading_falls_back_to_time(runner, tmp_path):
    result = kt.tune(
        SPEC, budget=8, db=tmp_path / "t.db", progress=False, objective="energy", power_cap_w=300
    )
    assert result.measured and result.best.runtime_ms == min(r["runtime_ms"] for r in result.rows)
    assert any("by time, not energy" in n for n in result.notes)
    assert any("cap was not checked" in n for n in result.notes)
    assert result.table(3), "the table falls back to time as the best did"


def test_an_energy_tune_says_which_configs_it_could_not_rank_for_lack_of_an_energy_reading(runner, tmp_path):
    """Rows of an earlier runtime-only run (no energy loop) in the same database were left out of an energy
    tune's choice without a word, though one of them may be the fastest config of all."""
    _, power = runner
    first = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False)
    power["w"] = H100.tdp_w  # the datasheet figure, standing in for every later config's reading
    result = kt.tune(SPEC, budget=16, db=tmp_path / "t.db", progress=False, objective="energy")
    (note,) = [n for n in result.notes if "no energy reading" in n]
    assert note.startswith(f"{len(first.rows)} of {len(result.rows)} passing configs") and "energy" in note


def test_the_python_api_checks_the_power_cap(runner, tmp_path):
    with pytest.raises(kt.SpecError, match="power_cap_w: must be a number of watts"):
        kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False, power_cap_w=0)


def test_a_tune_from_a_forest_keeps_it_and_corrects_it(runner, tmp_path):
    start = small_forest()
    result = kt.tune(SPEC, budget=16, db=tmp_path / "t.db", progress=False, model=start)
    assert result.trace.models[0] == start.describe()
    assert result.trace.models[1] == f"{start.describe()} corrected on 8 measured rows"


def test_a_model_object_of_another_device_is_the_targets_a_stand_in_or_refused():
    """A model file fitted for another device is refused (or a stand-in of the same architecture); a model
    object was used as given: its own device's roofline under the target's name (an H100's analytic model
    ranked an A100 space 3x too fast, without a word)."""
    from kt.errors import ModelError

    a100, h200 = {**SPEC, "device": "a100"}, {**SPEC, "device": "h200"}
    analytic = kt.plan(a100, budget=4, model=AnalyticModel(H100))
    own = kt.plan(a100, budget=4, model="analytic")
    assert np.array_equal(analytic.prediction.runtime_s, own.prediction.runtime_s)
    forest = small_forest()
    with pytest.raises(
        ModelError, match=r"predicts for h100 \(sm_90\), which cannot stand in for a100 \(sm_80\)"
    ):
        kt.plan(a100, budget=4, model=forest)
    plan = kt.plan(h200, budget=4, model=forest)
    assert plan.model.startswith("forest for h100 predicting h200 with its own roofline"), plan.model
    assert forest.device.key == "h100" and forest.fitted_device is None, (
        "the caller's forest is left as it was"
    )


def test_a_correction_fitted_on_what_the_start_already_predicts_changes_nothing():
    records = stand_in_records(
        [(512, 512, 512), (300, 700, 200)], [(64, 64, 32, 4, 3), (128, 128, 64, 8, 4)] * 3
    )
    analytic = AnalyticModel(H100)
    corrected = refit(analytic, records)
    assert isinstance(corrected, CorrectedModel) and corrected.describe().startswith(
        "analytic corrected on 12"
    )
    before, after = analytic.predict(records), corrected.predict(records)
    assert np.allclose(after.runtime_s, before.runtime_s, rtol=1e-9), (
        "log(measured / predicted) is 0 everywhere"
    )
    assert refit(analytic, records[:3]) is None, "too few rows to fit anything"
    # nor 5: under leaves of 3 rows no tree splits them, and the "correction" was one constant factor
    assert refit(analytic, records[:5]) is None
    assert refit(corrected, records).base is analytic, (
        "a refit restarts from the first model, not a correction"
    )


def test_a_corrected_forest_corrects_its_power_instead_of_replacing_it():
    shapes, configs = (
        [(512, 512, 512), (1024, 256, 384), (300, 700, 200)],
        [(64, 64, 32, 4, 3), (128, 64, 64, 8, 4)],
    )
    start = ForestModel(H100, n_estimators=8, n_jobs=1).fit(
        stand_in_records(shapes, configs * 2, power_rows=12)
    )
    records = stand_in_records(shapes, configs, power_rows=6)
    for record, power in zip(records, start.predict(records).power_w):
        record["power_w"] = float(power)  # the start's own power prediction, standing in as a target
    corrected = refit(start, records)
    assert corrected.power_relative and corrected.describe().endswith("power from 6")
    assert np.allclose(corrected.predict(records).power_w, start.predict(records).power_w, rtol=1e-9)


def test_a_corrected_forest_keeps_the_forests_own_spread():
    """The corrected spread combines the starting model's spread with the correction's: a bug keeping the
    correction's alone makes a corrected forest certain (spread 0) wherever the correction learned nothing,
    and the guided search stops exploring what the forest itself was unsure of."""
    shapes, configs = [(512, 512, 512), (1024, 256, 384)], [(64, 64, 32, 4, 3), (128, 64, 64, 8, 4)]
    start = ForestModel(H100, n_estimators=8, n_jobs=1).fit(stand_in_records(shapes, configs * 2))
    records = stand_in_records(shapes, configs * 2)
    before = start.predict(records)
    for record, seconds in zip(records, before.runtime_s):
        # the start's own prediction, standing in as a target: the correction learns a factor of 1 everywhere
        record["runtime_ms"] = float(seconds) * 1e3
    after = refit(start, records).predict(records)
    assert before.runtime_spread.max() > 0
    assert np.allclose(after.runtime_s, before.runtime_s, rtol=1e-9)
    assert np.allclose(after.runtime_spread, before.runtime_spread, rtol=1e-6, atol=1e-12)


class StructuredStandIn(StandInRunner):
    """Answers a structured op's candidates with the analytic model's prediction of its launches (a model's
    output, not a timing: see the module docstring)."""

    def run(self, candidates, deadline=None):
        from kt.codegen import family_for
        from kt.costmodel.staged import predict_records

        candidates = [c for c in candidates if not isinstance(c.config, PyTorchPath)]
        self.batches.append(len(candidates))
        for candidate in candidates:
            family = family_for(candidate.problem)
            records = family.records(candidate.problem, [candidate.config])
            seconds = float(predict_records(AnalyticModel(self.profile), records).runtime_s[0])
            yield self.answer(candidate, seconds)


def test_a_structured_tune_refits_between_rounds_on_its_own_rows(monkeypatch, tmp_path):
    made = []

    def make(backend, profile, **options):
        made.append(StructuredStandIn(profile))
        return made[-1]

    monkeypatch.setattr(tune_module, "make_runner", make)
    spec = {
        "op": "monarch",
        "name": "m",
        "dtype": "float16",
        "shape": {"batch": 256, "n": 1024, "nblocks": 16},
        "device": "h100",
    }
    result = kt.tune(spec, budget=16, db=tmp_path / "t.db", progress=False, strategy="guided", baseline=False)
    (stand_in,) = made
    assert stand_in.batches[0] == 8 and len(stand_in.batches) >= 2
    assert result.trace.models[0] == "analytic"
    assert result.trace.models[1] == "analytic corrected by a parameter forest on 8 measured points"
    assert len(result.trace.measured) == len(set(result.trace.measured)) <= 16


@pytest.mark.parametrize("objective", ["time", "energy", "edp"])
def test_the_search_compares_predictions_and_measurements_in_the_same_units(
    runner, tmp_path, monkeypatch, objective
):
    """Expected improvement is log(best measured) - log(predicted): the two must be in the same units. The
    stand-in answers with the analytic model's own prediction (ms, and mJ from the datasheet power), so a
    measured config's prediction equals its measurement once both are in objective_value's units; they once
    were 1000x apart (s against ms), so every candidate looked 1000x better than the best and the search
    never stopped early."""
    import kt.autotune.search as search_module

    _, power = runner
    power["w"] = H100.tdp_w if objective != "time" else None
    seen = []
    real = search_module.expected_improvement

    def spy(state, candidates):
        if state.best is not None:
            measured = {i: v for i, v in state.measured.items() if v is not None}
            seen.append((state.comparable, [state.objective[i] / v for i, v in measured.items()]))
        return real(state, candidates)

    monkeypatch.setattr(search_module, "expected_improvement", spy)
    kt.tune({**SPEC, "tune": {"objective": objective}}, budget=14, db=tmp_path / "t.db", progress=False)
    assert seen, "the search ranked a round after measuring"
    if objective == "time":  # before any refit: the analytic model, the stand-in's own figures
        assert seen[0][0] and np.allclose(seen[0][1], 1.0)
    assert any(comparable for comparable, _ in seen), "the refits learn the power readings"
    for comparable, ratios in seen:
        if comparable:
            assert 0.2 < np.median(ratios) < 5, ratios


def test_a_guided_tunes_first_round_is_the_plans(runner, tmp_path):
    """kt.plan shows what a tune measures first; scaling the predictions to ms for the search moved the edges of
    rank's near-tie buckets, so the tune's first round could differ from the plan's (h200 dense 4096^3: g1
    against g8 of the same tile). The order is taken on the plan's own units."""
    spec = {**SPEC, "shape": {"m": 4096, "n": 4096, "k": 4096}, "device": "h200"}
    for budget in (3, 8, 24):
        plan = kt.plan(spec, budget=budget, measures_time=True)
        result = kt.tune(spec, budget=budget, db=tmp_path / f"{budget}.db", progress=False)
        assert result.trace.first_proposal == plan.chosen, budget


def test_an_energy_tunes_note_names_the_fastest_config_without_an_energy_reading(runner, tmp_path):
    """The note on configs left out of an energy tune names the fastest of them (the one a user may want to
    time again with energy); taking the max named the slowest, which the count alone does not show."""
    _, power = runner
    kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False)
    power["w"] = H100.tdp_w  # the datasheet figure, standing in for every later config's reading
    result = kt.tune(SPEC, budget=16, db=tmp_path / "t.db", progress=False, objective="energy")
    unread = [r for r in result.rows if r["status"] == "ok" and r.get("energy_mj") is None]
    fastest = min(unread, key=lambda r: r["runtime_ms"])
    slowest = max(unread, key=lambda r: r["runtime_ms"])
    assert fastest["runtime_ms"] < slowest["runtime_ms"], "the unread configs differ in runtime"
    (note,) = [n for n in result.notes if "no energy reading" in n]
    assert f"the fastest of them: {fastest['config_key']}, {fastest['runtime_ms']:.4g} ms" in note, note


def test_the_specs_own_power_cap_and_objective_apply_when_the_call_gives_none(runner, tmp_path):
    """kt.tune without power_cap_w or objective takes op.yaml's tune.power_cap_w and tune.objective; a tune
    that dropped them chose by time with no cap, silently."""
    _, power = runner
    power["w"] = H100.tdp_w  # the datasheet figure, standing in for every config's reading
    capped = {**SPEC, "tune": {"power_cap_w": 300}}
    with pytest.raises(KtError, match="power_cap_w: every passing config drew more than 300 W"):
        kt.tune(capped, budget=8, db=tmp_path / "t.db", progress=False)
    result = kt.tune(
        {**SPEC, "tune": {"objective": "energy"}}, budget=8, db=tmp_path / "t.db", progress=False
    )
    assert result.objective == "energy" and result.best.energy_mj is not None
    assert result.plan.objective == "energy"


def test_a_timed_tunes_note_counts_its_measurements_and_rounds(runner, tmp_path):
    """The note "N new measurements in R rounds" under the table; an off-by-one said 0 rounds for a
    single-round tune, and one round fewer for every guided one."""
    made, _ = runner
    result = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False, strategy="top")
    (stand_in,) = made
    assert len(stand_in.batches) == 1
    assert any(n.startswith("8 new measurements in 1 round, ranked by: analytic") for n in result.notes), (
        result.notes
    )
    guided = kt.tune(SPEC, budget=24, db=tmp_path / "g.db", progress=False, strategy="guided")
    rounds = len(made[1].batches)
    (note,) = [n for n in guided.notes if f"new measurements in {rounds} rounds" in n]
    # the first model, the count of refits and the last: every refit's name was listed (2,210 characters)
    models = list(dict.fromkeys(guided.trace.models))
    assert len(models) > 3 and note.endswith(
        f"ranked by: {models[0]} -> {len(models) - 2} refits -> {models[-1]}"
    )


@pytest.mark.parametrize("status", ["timeout", "crash"])
def test_retry_failed_runs_candidate_zero_again_when_it_timed_out_or_crashed(monkeypatch, tmp_path, status):
    """--retry-failed reruns what timed out or crashed (both can be transient), candidate zero (PyTorch's path)
    included: a tune that deleted only the configs' rows, or only timeouts, kept PyTorch's failure for good,
    and no later tune compared against it."""
    made = []

    class ZeroTimesOutOnce(StandInRunner):
        def answer_zero(self, candidate):
            if not made[:-1]:
                return Result(candidate, status, {}, f"{status} (the stand-in's)")
            return super().answer_zero(candidate)

    def make(backend, profile, **options):
        made.append(ZeroTimesOutOnce(profile, pytorch_as="slowest"))
        return made[-1]

    monkeypatch.setattr(tune_module, "make_runner", make)
    first = kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False)
    assert first.baseline["status"] == status and first.baseline_ratio is None
    kept = kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False)
    assert kept.baseline["status"] == status, "without --retry-failed the failure is kept"
    # the same budget: no config is due, so candidate zero runs alone (it was deleted and never run again)
    retried = kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False, retry_failed=True)
    assert made[-1].batches == [0], "candidate zero alone"
    assert retried.baseline["status"] == "ok" and retried.baseline_ratio > 1
    # with a larger budget it goes with the round of new configs
    more = kt.tune(SPEC, budget=8, db=tmp_path / "u.db", progress=False)
    assert more.baseline["status"] == "ok" and made[-1].batches[0] == 8


def test_collect_with_retry_failed_keeps_a_failed_pytorch_row_it_does_not_run_again(
    monkeypatch, tmp_path, capsys
):
    """kt collect runs no baseline, yet --retry-failed deleted the tune's failed PyTorch row (docs: "a failed
    PyTorch row is never deleted without a rerun"); the failed configs run again filled a bar that started full
    ("5/4"); and the note told the user to raise --budget, which kt collect has not."""
    from kt.autotune.database import Database

    class ZeroAndThirdsFail(StandInRunner):
        seen = 0

        def answer_zero(self, candidate):
            return Result(candidate, "crash", {}, "crash (the stand-in's)")

        def answer(self, candidate, seconds):
            ZeroAndThirdsFail.seen += 1
            if first_run and ZeroAndThirdsFail.seen % 2 == 0:
                return Result(candidate, "timeout", {}, "timeout (the stand-in's)")
            return super().answer(candidate, seconds)

    monkeypatch.setattr(tune_module, "make_runner", lambda backend, profile, **o: ZeroAndThirdsFail(profile))
    starts = []
    monkeypatch.setattr(
        tune_module.TuneProgress, "start", lambda self, total, done, *a, **k: starts.append((total, done))
    )
    first_run = True
    kt.tune(SPEC, budget=6, db=tmp_path / "t.db", progress=False, strategy="random")
    first_run = False
    with Database(tmp_path / "t.db") as db:
        rows = {r["config_key"]: r["status"] for r in db.all_rows()}
    assert rows["pytorch"] == "crash" and sum(s == "timeout" for s in rows.values()) == 3
    session = kt.collect(
        SPEC, sample=4, backend="dryrun", db=tmp_path / "t.db", retry_failed=True, progress=True
    )
    with Database(tmp_path / "t.db") as db:
        after = {r["config_key"]: r["status"] for r in db.all_rows()}
    assert after["pytorch"] == "crash", "deleted, never run again"
    assert starts[-1] == (4, 3)  # 3 passing rows; the 1 failed config run again makes 4 of 4, not 5 of 4
    assert session.retry_note.startswith(
        "retry_failed: 2 failed configs keep their rows: the sample (4) leaves"
    )
    assert session.retry_note.endswith("raise sample for more")


def test_retry_failed_runs_the_failed_configs_first_and_keeps_those_the_budget_has_no_room_for(
    monkeypatch, tmp_path
):
    """--retry-failed deleted every failed row, and the search then spent the budget on what it chose: a guided
    rerun at the same budget ran 2 of 5 crashed configs again, and 3 were left with no row at all; at a budget
    spent by passing rows, every failed row was deleted and none run again, without a word."""
    from kt.autotune.database import Database

    class CrashesEveryThird(StandInRunner):
        seen = 0

        def answer(self, candidate, seconds):
            CrashesEveryThird.seen += 1
            if first_run and CrashesEveryThird.seen % 3 == 0:
                return Result(candidate, "crash", {}, "crash (the stand-in's)")
            return super().answer(candidate, seconds)

    monkeypatch.setattr(tune_module, "make_runner", lambda backend, profile, **o: CrashesEveryThird(profile))
    first_run = True
    kt.tune(SPEC, budget=20, db=tmp_path / "t.db", progress=False, strategy="guided")
    with Database(tmp_path / "t.db") as db:
        before = {r["config_key"]: r["status"] for r in db.all_rows() if r["config_key"] != "pytorch"}
    crashed = {key for key, status in before.items() if status == "crash"}
    assert len(crashed) >= 3
    first_run = False
    retried = kt.tune(
        SPEC, budget=20, db=tmp_path / "t.db", progress=False, strategy="guided", retry_failed=True
    )
    with Database(tmp_path / "t.db") as db:
        after = {r["config_key"]: r["status"] for r in db.all_rows() if r["config_key"] != "pytorch"}
    assert set(before) <= set(after) and all(after[key] == "ok" for key in crashed)  # each ran again
    assert retried.newly_measured == len(after) - len(before) + len(crashed)
    # the rerun is the search's first round: counted in its note, and its configs named by the model that ran it
    assert set(retried.trace.measured[: len(crashed)]) == {
        retried.plan.space.legal.index(kt_config)
        for kt_config in retried.plan.space.legal
        if kt_config.key() in crashed
    }
    assert len(retried.trace.measured) == retried.newly_measured
    assert any(n.startswith(f"{retried.newly_measured} new measurements in ") for n in retried.notes), (
        retried.notes
    )
    # the budget spent by the passing rows: the failures keep their rows, and the tune says so
    first_run = True
    kt.tune(SPEC, budget=24, db=tmp_path / "u.db", progress=False, strategy="guided")
    first_run = False
    with Database(tmp_path / "u.db") as db:
        failed = sum(r["status"] == "crash" for r in db.all_rows())
        passing = sum(r["status"] == "ok" and r["config_key"] != "pytorch" for r in db.all_rows())
    kept = kt.tune(SPEC, budget=passing, db=tmp_path / "u.db", progress=False, retry_failed=True)
    with Database(tmp_path / "u.db") as db:
        assert sum(r["status"] == "crash" for r in db.all_rows()) == failed
    assert any(
        f"retry_failed: {failed} failed configs keep their rows: the budget ({passing}) leaves room to run 0 "
        "of them again" in note
        for note in kept.notes
    ), kept.notes


def test_a_timed_tunes_table_is_its_rows_by_measured_objective_best_first(runner, tmp_path):
    """`kt tune` prints table(): the passing rows by the measured objective, the best first; a table left in
    rank order put the model's favourite on top even where it measured slower. The tune ranks with a small
    forest (on the conftest's stand-in rows), so its ranks and the stand-in's analytic figures disagree."""
    start = small_forest()
    result = kt.tune(SPEC, budget=12, db=tmp_path / "t.db", progress=False, model=start)
    table = result.table(5)
    runtimes = [r["runtime_ms"] for r in table]
    assert len(table) == 5 and runtimes == sorted(runtimes)
    assert table[0]["config_key"] == result.best.row["config_key"]
    assert runtimes[-1] <= sorted(r["runtime_ms"] for r in result.rows)[4]
    assert [r["rank"] for r in table] != sorted(r["rank"] for r in table), "rank order differs here"


def test_a_top_tunes_rows_rank_from_one(runner, tmp_path):
    """A row's rank is its place in the model's ranking counted from 1, as the table prints it: the top
    strategy measures ranks 1 to budget."""
    result = kt.tune(SPEC, budget=6, db=tmp_path / "t.db", progress=False, strategy="top")
    assert sorted(r["rank"] for r in result.rows) == [1, 2, 3, 4, 5, 6]


def test_a_power_cap_note_names_the_configs_an_earlier_tune_measured_without_power(runner, tmp_path):
    """Rows from a tune without power readings cannot be held to a later tune's cap: the later tune says so
    when some of its rows lack a reading, not only when all do."""
    _, power = runner
    kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False)
    power["w"] = H100.tdp_w  # the datasheet figure, standing in for every later config's reading
    result = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False, power_cap_w=1000)
    unread = [r for r in result.rows if r["status"] == "ok" and r.get("power_w") is None]
    assert 0 < len(unread) < len(result.rows)
    assert "some configs have no power reading, so the 1000 W cap was not checked for them" in result.notes


def test_rows_an_earlier_tune_measured_show_this_tunes_prediction(runner, tmp_path):
    """The table and the artifact name this tune's model: a row an earlier tune wrote (under the analytic model
    here) shows what this tune's forest predicts for its config, not the prediction stored with it."""
    earlier = kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False, strategy="top")
    earlier_keys = {r["config_key"] for r in earlier.rows}
    start = small_forest()
    result = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False, strategy="top", model=start)
    stored = {r["config_key"]: r["predicted_ms"] for r in earlier.rows}
    shown = {r["config_key"]: r for r in result.rows}
    assert earlier_keys < set(shown)
    for key in earlier_keys:
        row = shown[key]
        record = {**result.problem.to_record(), **row["config"]}
        forest_ms = float(start.predict([record]).runtime_s[0]) * 1e3
        assert row["predicted_ms"] == pytest.approx(forest_ms) and row["predicted_ms"] != stored[key]


SKINNY = {"op": "dense", "name": "skinny", "shape": {"m": 40, "n": 24, "k": 32}, "device": "h100"}


def programs(spec, configs) -> set:
    family, problem = kt.codegen.FAMILIES["gemm"], kt.plan(spec, budget=1).problem
    return {family.same_program(problem, c) for c in configs}


def test_a_tune_measures_each_program_once_where_group_m_orders_no_tiles(runner, tmp_path):
    """On a 40x24 output most tiles cover it in one or two row-tiles: every group_m at or above those gives one
    kernel. A tune measures one config of each program, its budget capped at their number, and says why."""
    legal = kt.space(SKINNY).legal
    distinct = len(programs(SKINNY, legal))
    assert distinct < len(legal) / 2  # the premise: most legal configs are another's twin here
    plan = kt.plan(SKINNY, budget=10**4, measures_time=True)
    assert plan.budget == distinct and len(programs(SKINNY, [plan.config(i) for i in plan.chosen])) == len(
        plan.chosen
    )
    assert f"{len(legal) - distinct} of the {len(legal)} legal configs run the same program" in plan.twin_note
    result = kt.tune(SKINNY, budget=10**4, db=tmp_path / "t.db", progress=False, strategy="random")
    measured = [r["config"] for r in result.rows]
    assert (
        len(measured)
        == distinct
        == len(programs(SKINNY, [kt.codegen.GemmConfig.from_dict(c) for c in measured]))
    )
    assert plan.twin_note in result.notes


def test_listed_configs_and_a_collect_measure_every_config_twins_included(runner, tmp_path):
    """tune.configs lists exactly what to measure, and `kt collect --all` sweeps every legal config (rows for a
    cost model): neither skips a config that runs another's program."""
    twins = [{"block_m": 64, "block_n": 32, "block_k": 32, "group_m": g} for g in (1, 4, 8)]
    listed = {**SKINNY, "tune": {"configs": twins}}
    result = kt.tune(listed, budget=1, db=tmp_path / "t.db", progress=False)
    assert len(result.rows) == 3 and result.plan.twin_note is None
    session = kt.collect(SKINNY, backend="interpret", db=tmp_path / "c.db", progress=False)
    assert len(session.rows) == len(kt.space(SKINNY).legal) and session.plan.alias is None


def test_a_listed_tune_configs_is_measured_whole_by_a_guided_search(runner, tmp_path):
    """A guided search stopped early where nothing was expected to beat its best (the stand-in answers with the
    model's own figures: nothing ever is), and a list of 60 configs got 38 measured, its note saying all were."""
    made, _ = runner
    legal = kt.space(SPEC).legal
    listed = [c.to_dict() for c in legal[:: max(1, len(legal) // 40)]][:40]
    spec = {**SPEC, "tune": {"configs": listed}}
    result = kt.tune(spec, budget=5, db=tmp_path / "t.db", progress=False, strategy="guided")
    assert result.newly_measured == len(result.rows) == len(listed) == sum(made[0].batches)
    assert any(
        f"tune.configs lists {len(listed)} distinct configs: all are measured" in n for n in result.notes
    )


def test_two_ops_of_one_problem_tuned_at_once_each_count_only_their_own_new_rows(tmp_path):
    """The second op's search took the first's rows (database claims): its note said "6 new measurements in
    1 round" beside "nothing new was measured"."""
    import threading

    class Slow(StandInRunner):  # the first op's rows land while the second's search waits on them
        def run(self, candidates, deadline=None):
            for result in super().run(candidates, deadline):
                time.sleep(0.2)
                yield result

    results = {}

    def one(name):
        spec = kt.parse_spec({**SPEC, "name": name})
        results[name] = tune_module.tune(
            spec, budget=6, runner=Slow(H100), db=tmp_path / "t.db", model="analytic", progress=False
        )

    threads = [threading.Thread(target=one, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert sum(r.newly_measured for r in results.values()) == 6
    for result in results.values():
        (counted,) = [n for n in result.notes if "new measurements" in n]
        own = result.newly_measured
        assert counted.startswith(f"{own} new measurements"), counted
        if own < 6:
            assert f"(and {6 - own} taken from another tune of this problem at the same time)" in counted


def test_a_power_cap_pytorchs_path_meets_makes_it_the_artifact_where_every_generated_config_is_over(
    monkeypatch, tmp_path
):
    """Every generated config over a 200 W cap, PyTorch's path under it: the tune raised "every passing config
    drew more than 200 W", though a measured, passing config under the cap was there to choose. (The stand-in's
    wattages are a datasheet-like figure given by the test, not readings.)"""

    class PyTorchUnderTheCap(StandInRunner):
        def answer_zero(self, candidate):
            return Result(
                candidate, "ok", {"runtime_ms": 1.0, "rel_err": 0.0, "power_w": 100.0, "energy_mj": 0.1}
            )

    monkeypatch.setattr(
        tune_module, "make_runner", lambda backend, profile, **o: PyTorchUnderTheCap(profile, power_w=400.0)
    )
    for objective in ("time", "energy"):
        result = kt.tune(
            SPEC, budget=4, db=tmp_path / f"{objective}.db", progress=False, model="analytic", power_cap_w=200,
            objective=objective,
        )  # fmt: skip
        assert result.best.pytorch and result.best.power_w == 100.0
        assert any(
            n.startswith(
                "every passing generated config drew more than 200 W (the least: 400 W) and PyTorch's"
            )
            for n in result.notes
        ), result.notes
        assert not any("no power readings" in n for n in result.notes), result.notes


def test_pytorchs_path_is_compared_by_the_objective_the_best_was_chosen_by_or_said_to_be_left_out(
    runner, monkeypatch, tmp_path
):
    """An energy tune without power readings chooses by time, but compared PyTorch's path by energy: no ratio,
    and the summary said "nothing generated was timed" of a tune that timed eight configs; PyTorch's path over
    the power cap (or without an energy reading) was left out of the choice without a word. (The stand-in's
    runtimes are the analytic model's outputs and its wattages figures the test gives, not readings.)"""
    from kt.cli import baseline_summary

    _, power = runner
    power["pytorch"] = "slowest"
    result = kt.tune(SPEC, budget=8, db=tmp_path / "e.db", progress=False, objective="energy")
    assert result.best.objective == "time" and not result.best.pytorch
    assert result.baseline_ratio == result.baseline["runtime_ms"] / result.best.runtime_ms > 1
    assert baseline_summary(result).startswith(f"{result.baseline_ratio:.2f}x vs PyTorch (")

    class PyTorchOverTheCap(StandInRunner):
        def answer_zero(self, candidate):
            values = {"runtime_ms": 1e-6, "rel_err": 0.0, "power_w": 400.0, "energy_mj": 4e-4}
            return Result(candidate, "ok", values)

    monkeypatch.setattr(
        tune_module, "make_runner", lambda backend, profile, **o: PyTorchOverTheCap(profile, power_w=100.0)
    )
    result = kt.tune(SPEC, budget=4, db=tmp_path / "c.db", progress=False, power_cap_w=200)
    assert not result.best.pytorch and result.baseline_ratio is None
    assert "PyTorch's own path (torch.matmul) was not compared: it drew 400 W, over the 200 W power cap" in (
        result.notes
    )
    assert baseline_summary(result).endswith(" ms, not compared (it drew 400 W, over the 200 W power cap)")


def test_a_tune_in_another_timing_regime_than_its_databases_rows_is_refused(tmp_path):
    """A database keeps one row per config: a warm-L2 tune over flushed rows measured nothing and chose among
    them, or, with a larger budget, mixed the two regimes in one ranking."""
    from kt.autotune.timing import TimingSettings

    class Warm(StandInRunner):
        timing = TimingSettings(regime="l2_warm")

        def answer(self, candidate, seconds):
            result = super().answer(candidate, seconds)
            result.values["timing_regime"] = "l2_warm"
            return result

    class Flushed(Warm):
        timing = TimingSettings()

        def answer(self, candidate, seconds):
            result = StandInRunner.answer(self, candidate, seconds)
            result.values["timing_regime"] = "l2_flushed"
            return result

    spec, db = kt.parse_spec(SPEC), tmp_path / "t.db"
    tune_module.tune(spec, budget=4, runner=Flushed(H100), db=db, model="analytic", progress=False)
    with pytest.raises(
        KtError, match=r"^timing: .*t.db holds this problem's rows timed l2_flushed, and this tune"
    ):
        tune_module.tune(spec, budget=6, runner=Warm(H100), db=db, model="analytic", progress=False)
    again = tune_module.tune(spec, budget=6, runner=Flushed(H100), db=db, model="analytic", progress=False)
    assert again.newly_measured == 2

    class WarmStoppedAfterZero(Warm):  # stopped (Ctrl-C) once candidate zero's warm row was in
        def answer_zero(self, candidate):
            result = super().answer_zero(candidate)
            result.values["timing_regime"] = "l2_warm"
            return result

        def run(self, candidates, deadline=None):
            yield from super().run([c for c in candidates if isinstance(c.config, PyTorchPath)])
            raise KeyboardInterrupt

    other = tmp_path / "u.db"
    with pytest.raises(KeyboardInterrupt):
        tune_module.tune(
            spec, budget=4, runner=WarmStoppedAfterZero(H100), db=other, model="analytic", progress=False
        )
    # the flushed tune chose PyTorch by its warm time against flushed ones
    with pytest.raises(
        KtError, match=r"^timing: .*u.db holds this problem's rows timed l2_warm, and this tune"
    ):
        tune_module.tune(spec, budget=4, runner=Flushed(H100), db=other, model="analytic", progress=False)
    kt.collect(
        spec, sample=4, db=other, backend="dryrun", runner=Flushed(H100), model="analytic", progress=False
    )


class StandInInterpreter(Runner):
    """Checks nothing: a runner named as the interpreter's, whose checks of the configs `timeouts` "time out"
    and the others pass (no kernel runs; only the loop's bookkeeping is under test)."""

    name, measures_time, device, compile_target = "interpret", False, "stand-in interpreter", False
    stages = groups = payload = None

    def __init__(self, profile, timeouts):
        super().__init__(profile, workers=1)
        self.timeouts, self.calls = timeouts, []

    def start_pool(self):
        return None

    def run(self, candidates, deadline=None):
        for candidate in candidates:
            key = candidate.config.key()
            self.calls.append(key)
            if not isinstance(candidate.config, PyTorchPath) and key in self.timeouts:
                yield Result(candidate, "timeout", {}, "timed out (the stand-in's)")
            else:
                yield Result(candidate, "ok", {"rel_err": 0.0})


def test_the_interpreters_stall_is_its_first_checks_and_retry_failed_keeps_the_rows_it_did_not_run(tmp_path):
    """The stall test ran after the second batch too: a first check that passed, then three timeouts, said "the
    tune stopped after its first 3 checks all timed out", none skipped. And --retry-failed deleted every failed
    row before running them: a tune stopped after its first rerun timed out lost the other two rows unsaid."""
    from kt.autotune.database import Database

    db, spec = tmp_path / "t.db", kt.parse_spec(SPEC)
    plan = kt.plan(spec, budget=6, measures_time=False)
    order = [plan.config(i).key() for i in plan.chosen]
    first = tune_module.tune(
        spec, budget=4, runner=StandInInterpreter(H100, set(order[1:4])), db=db, progress=False
    )
    assert dict(first.statuses()) == {"ok": 1, "timeout": 3}
    assert not any("stopped after its first" in note for note in first.notes), first.notes
    rerun = StandInInterpreter(H100, set(order[1:4]))
    again = tune_module.tune(spec, budget=6, runner=rerun, db=db, progress=False, retry_failed=True)
    assert any("stopped after its first 1 check all timed out" in note for note in again.notes), again.notes
    assert [key for key in rerun.calls if key != "pytorch"] == [order[1]]  # the first rerun alone
    with Database(db) as database:
        kept = {row["config_key"]: row["status"] for row in database.find() if row["config_key"] != "pytorch"}
    assert kept == {order[0]: "ok", **{key: "timeout" for key in order[1:4]}}, kept


def test_an_energy_tune_without_power_readings_says_once_that_its_best_is_by_time(monkeypatch, tmp_path):
    """Its notes said both "candidates were chosen by predicted time and the best by measured energy" and "no
    power readings, so the best is by time, not energy"."""
    monkeypatch.setattr(
        tune_module, "make_runner", lambda backend, profile, **options: StandInRunner(profile)
    )
    result = kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False, objective="energy")
    assert result.ranked_by == "time"
    assert any(note == "no power readings, so the best is by time, not energy" for note in result.notes)
    (said,) = [note for note in result.notes if "predicts time only" in note]
    assert said.endswith("candidates were chosen by predicted time"), said


def test_a_search_that_stops_short_of_its_budget_says_so(monkeypatch, tmp_path):
    """Guided stops where nothing left is expected to beat its best: "5 new measurements in 1 round" was all a
    tune said of a budget of 8, and a rerun of the same budget measured more. A strategy that proposes three
    configs, then nothing, stands in for that stop."""
    from kt.autotune.search import SearchStrategy

    class ThreeThenStop(SearchStrategy):
        name, description = "three", "three configs"

        def propose(self, state):
            return [] if state.round else list(range(3))

    monkeypatch.setattr(
        tune_module, "make_runner", lambda backend, profile, **options: StandInRunner(profile)
    )
    result = kt.tune(SPEC, budget=8, db=tmp_path / "t.db", progress=False, strategy=ThreeThenStop())
    assert len(result.rows) == 3 and result.trace.stopped_early
    assert "the search stopped at 3 of the budget's 8 configs: nothing left was expected to beat" in " ".join(
        result.notes
    ), result.notes
