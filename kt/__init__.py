"""kt: a compiler-style autotuner for structured matrix multiplications on GPUs.

spec   = kt.load_spec("op.yaml")
kernel = kt.build(spec)                 # untuned: the cost model's top-ranked config
res    = kt.tune(spec, budget=64)       # measure (GPU) or check (CPU), then res.save("artifacts/name")
plan   = kt.plan(spec)                  # the cost model's ranking and the tune's first round, nothing measured
kernel = kt.load("artifacts/name")
"""

__version__ = "0.1.0"

from kt.api import (  # noqa: E402
    as_spec,
    build,
    collect,
    evaluate_model,
    fit_model,
    inspect,
    load,
    plan,
    random_args,
    random_weights,
    reference,
    resolve_profile,
    space,
    tune,
)
from kt.errors import ArtifactError, DatabaseError, DeviceError, KtError, SpecError  # noqa: E402
from kt.kernel import Kernel  # noqa: E402
from kt.spec import OpSpec, load_spec, parse_spec  # noqa: E402

__all__ = [
    "ArtifactError",
    "DatabaseError",
    "DeviceError",
    "Kernel",
    "KtError",
    "OpSpec",
    "SpecError",
    "as_spec",
    "build",
    "collect",
    "evaluate_model",
    "fit_model",
    "inspect",
    "load",
    "load_spec",
    "parse_spec",
    "plan",
    "random_args",
    "random_weights",
    "reference",
    "resolve_profile",
    "space",
    "tune",
]
