"""Cost models shipped with kt: `<device key>.skops`, fitted by `kt costmodel fit` on the GPU sweeps in `data/`.

`kt predict` and `kt tune` use the one for the target device when it is here, else the analytic model. None is
shipped until sweeps measured on that device exist: a model is only ever fitted on real measurements.
"""

from __future__ import annotations

from pathlib import Path

from kt.device import DeviceProfile

MODELS_DIR = Path(__file__).resolve().parent


def shipped_model_path(profile: DeviceProfile) -> Path:
    """Where kt's own model for `profile` lives (the file may not exist)."""
    return MODELS_DIR / f"{profile.key}.skops"
