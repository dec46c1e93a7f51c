"""Cost models shipped with kt, fitted on real GPU measurements (never on predictions or invented figures).

`h100.skops` and `a100.skops` are fitted by benchmarks/ship_costmodels.py on PyTorch Inductor's max-autotune logs
of its Triton matmul template and cuBLAS (`../shared/data/autoheuristic`, from the public repository
AlnisM/autoheuristic-datasets; the logs themselves are not in kt). Each file's metadata (`trained`) names the
source, device, rows, shapes and the held-out evaluation figures.

A device without a file of its own uses the file of its architecture (`STAND_INS`: every Hopper card through the
H100's, predicting with its own profile's roofline, SMs and peaks), and says so when it predicts. Without either,
`kt predict` and `kt tune` rank with the analytic model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kt.device import DeviceProfile

MODELS_DIR = Path(__file__).resolve().parent
STAND_INS = {90: "h100", 80: "a100"}  # compute capability -> the model file of that architecture


def models_dir() -> Path:
    """Where kt looks for its own models: $KT_MODELS_DIR when set (a folder of `<device key>.skops` files, e.g.
    ones fitted with `kt costmodel fit`), else the ones kt ships. A $KT_MODELS_DIR that is no folder is warned
    of once (it leaves no model of kt's: the analytic model ranks), not passed over in silence; so is a folder
    of models none of which is for the device (`shipped_model_path`). An empty folder asks for no forest."""
    override = os.environ.get("KT_MODELS_DIR")
    if not override:
        return MODELS_DIR
    path = Path(override)
    if not path.is_dir() and override not in _WARNED:
        _WARNED.add(override)
        logging.getLogger("kt").warning(
            "KT_MODELS_DIR: %r is not a folder, so kt uses none of its forests (the analytic model ranks); "
            "unset it for the models kt ships",
            override,
        )
    return path


_WARNED: set = set()  # what was warned of: a $KT_MODELS_DIR, or one and a device key


def shipped_model_path(profile: DeviceProfile) -> Path | None:
    """kt's own model file for `profile`: its own, else its architecture's stand-in; None when neither exists."""
    folder = models_dir()
    own = folder / f"{profile.key}.skops"
    if own.is_file():
        return own
    stand_in = STAND_INS.get(profile.compute_capability)
    path = folder / f"{stand_in}.skops" if stand_in else None
    if path is not None and path.is_file():
        return path
    override = os.environ.get("KT_MODELS_DIR")
    others = sorted(p.name for p in folder.glob("*.skops")) if override and folder.is_dir() else []
    if others and (override, profile.key) not in _WARNED:
        # the user's models, none of them for this device: the analytic model ranks, as for a folder that is
        # none, and that was said only as "model: analytic" (an empty folder is how one asks for no forest)
        _WARNED.add((override, profile.key))
        names = " or ".join(dict.fromkeys(f"{name}.skops" for name in (profile.key, stand_in) if name))
        logging.getLogger("kt").warning(
            "KT_MODELS_DIR: %r holds %s but no %s, so kt uses none of its forests for %s (the analytic model "
            "ranks); fit one with `kt costmodel fit --device %s --out %s`, or unset it for the models kt ships",
            override,
            ", ".join(others),
            names,
            profile.key,
            profile.key,
            folder / f"{profile.key}.skops",
        )
    return None
