"""What a cost model says about candidates: predicted runtime and power with their uncertainty.

A prediction is never a measurement: kt never stores or reports one as measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kt.spec import OBJECTIVES

OVER_CAP_PENALTY = 1e6  # a config predicted over the power cap ranks after every config under it


@dataclass(eq=False)  # == compared numpy arrays (a ValueError)
class Prediction:
    runtime_s: np.ndarray
    # standard deviation of log(runtime) across the forest's trees: 0.1 means about +-10%; 0 for the analytic model
    runtime_spread: np.ndarray
    power_w: np.ndarray | None = None  # None when the model does not predict power
    power_spread_w: np.ndarray | None = None
    fail_prob: np.ndarray | None = None  # the chance each candidate fails (None: the model does not say)

    def __len__(self) -> int:
        return len(self.runtime_s)

    def __repr__(self) -> str:  # the dataclass's own printed every array (29 kB for a small space)
        fastest = f", fastest {float(np.min(self.runtime_s)) * 1e3:.4g} ms" if len(self) else ""
        power = "with power" if self.power_w is not None else "no power"
        return f"Prediction({len(self)} configs{fastest}, {power})"

    @property
    def energy_j(self) -> np.ndarray | None:
        return None if self.power_w is None else self.runtime_s * self.power_w

    def objective(self, name: str, power_cap_w: float | None = None) -> np.ndarray:
        """The value to minimise for `name`; without predicted power, every objective falls back to time."""
        if name not in OBJECTIVES:
            raise ValueError(f"objective: {name!r} is not supported; allowed: {', '.join(OBJECTIVES)}")
        value = self.runtime_s
        if self.power_w is not None:
            if name == "energy":
                value = self.runtime_s * self.power_w
            elif name == "edp":
                value = self.runtime_s**2 * self.power_w
            if power_cap_w is not None:
                over = self.power_w > power_cap_w
                # past every config under the cap whatever their spread (a fixed 1e6 let an edp of an
                # under-cap config 1000 times slower rank first), over-cap ones kept in their own order
                factor = OVER_CAP_PENALTY
                if over.any() and not over.all():
                    factor = max(factor, 2.0 * float(np.max(value[~over]) / max(np.min(value[over]), 1e-300)))
                value = np.where(over, value * factor, value)
        return value

    def spread(self, name: str) -> np.ndarray:
        """The relative uncertainty (log-space standard deviation) of the objective `name`."""
        if self.power_w is None or name == "time":
            return self.runtime_spread
        power_rel = self.power_spread_w / np.maximum(self.power_w, 1e-9)
        scale = 2.0 if name == "edp" else 1.0
        return np.sqrt((scale * self.runtime_spread) ** 2 + power_rel**2)


def model_noun(name: str, figures: bool = False) -> str:
    """A model's name (kt.costmodel.correction.model_name) as the noun of a sentence: "the analytic model", "the
    forest for h100" (from "forest for h100: 34188 rows, ..., no power"), with its training figures after a
    colon if `figures`."""
    head, _, rest = name.partition(":")
    noun = "the analytic model" if head == "analytic" else f"the {head}"
    return f"{noun}:{rest}" if figures and rest else noun
