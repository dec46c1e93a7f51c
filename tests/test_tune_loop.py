"""The tune loop's GPU branch (rounds, refits, resume, power cap) on a machine without a GPU.

A GPU runner cannot run here, so these tests swap in a stand-in runner that "answers" each candidate with the
analytic model's own prediction (and, where a test needs one, the datasheet's board power). Those numbers are a
model's outputs and a datasheet figure, not timings or readings: they only let the loop's control flow run. The
stand-in's rows carry runner "stand-in", so nothing that reads GPU measurements (runner "cuda") ever sees them.
"""

import json

import numpy as np
import pytest

import kt
import kt.autotune.tune as tune_module
from kt.autotune.runners import Result, Runner
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

    def __init__(self, profile, power_w=None):
        super().__init__(profile)
        self.power_w, self.batches = power_w, []

    def run(self, candidates):
        self.batches.append(len(candidates))
        records = [{**c.problem.to_record(), **c.config.to_dict()} for c in candidates]
        for candidate, seconds in zip(candidates, gemm_terms(records, self.profile)["predicted_s"]):
            values = {"runtime_ms": float(seconds) * 1e3, "rel_err": 0.0}
            if self.power_w is not None:
                values.update(power_w=self.power_w, energy_mj=self.power_w * float(seconds) * 1e3)
            yield Result(candidate, "ok", values)


@pytest.fixture
def runner(monkeypatch):
    made = []

    def make(backend, profile, **options):
        made.append(StandInRunner(profile, power_w=made_power.get("w")))
        return made[-1]

    made_power: dict = {}
    monkeypatch.setattr(tune_module, "make_runner", make)
    return made, made_power


def test_a_guided_tune_measures_in_rounds_and_refits_between_them(runner, tmp_path):
    made, _ = runner
    result = kt.tune(SPEC, budget=24, db=tmp_path / "t.db", progress=False, strategy="guided")
    (stand_in,) = made
    assert stand_in.batches[0] == 6 and len(stand_in.batches) >= 2, "a quarter of the budget per round"
    assert (
        result.trace.models[0] == "analytic"
        and result.trace.models[1] == "analytic corrected on 6 measured rows"
    )
    assert len(result.trace.measured) == len(set(result.trace.measured)) == sum(stand_in.batches) <= 24
    assert result.measured and result.newly_measured == len(result.rows) == sum(stand_in.batches)
    meta = json.loads((result.save(tmp_path / "art") / "meta.json").read_text())
    assert meta["prediction"]["model"] == result.best_model and meta["tuning"]["models"][0] == "analytic"
    assert meta["tuning"]["first_model"] == "analytic" and meta["tuning"]["rounds"] == len(stand_in.batches)


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


def test_the_python_api_checks_the_power_cap(runner, tmp_path):
    with pytest.raises(kt.SpecError, match="power_cap_w: must be a number of watts"):
        kt.tune(SPEC, budget=4, db=tmp_path / "t.db", progress=False, power_cap_w=0)


def test_a_tune_from_a_forest_keeps_it_and_corrects_it(runner, tmp_path):
    from conftest import stand_in_records

    start = ForestModel(H100, n_estimators=8, n_jobs=1).fit(
        stand_in_records([(512, 512, 512), (1024, 256, 384)], [(64, 64, 32, 4, 3), (128, 64, 64, 4, 4)] * 2)
    )
    result = kt.tune(SPEC, budget=16, db=tmp_path / "t.db", progress=False, model=start)
    assert result.trace.models[0] == start.describe()
    assert result.trace.models[1] == f"{start.describe()} corrected on 4 measured rows"


def test_a_correction_fitted_on_what_the_start_already_predicts_changes_nothing():
    from conftest import stand_in_records

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
    assert refit(corrected, records).base is analytic, (
        "a refit restarts from the first model, not a correction"
    )


def test_a_corrected_forest_corrects_its_power_instead_of_replacing_it():
    from conftest import stand_in_records

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
