"""kt: a compiler-style autotuner for structured matrix multiplications on GPUs.

spec   = kt.load_spec("op.yaml")
kernel = kt.build(spec)                 # untuned: the cost model's top-ranked config
res    = kt.tune(spec, budget=64)       # measure (GPU) or check (CPU), then res.save("artifacts/name")
plan   = kt.plan(spec)                  # the cost model's ranking and the tune's first round, nothing measured
kernel = kt.load("artifacts/name")
"""

__version__ = "0.1.0"

from kt.errors import ArtifactError, DatabaseError, DeviceError, KtError, ModelError, SpecError  # noqa: E402, F401

# The rest loads on first use (PEP 562), so `import kt` and the CLI's --help pay for torch and scikit-learn only
# when a command needs them.
_LAZY = {
    **dict.fromkeys(
        (
            "as_spec",
            "build",
            "collect",
            "evaluate_model",
            "fit_model",
            "inspect",
            "load",
            "plan",
            "random_args",
            "random_weights",
            "reference",
            "resolve_profile",
            "space",
            "tune",
        ),
        "kt.api",
    ),
    "Kernel": "kt.kernel",
    **dict.fromkeys(("OpSpec", "load_spec", "load_specs", "parse_spec", "parse_specs"), "kt.spec"),
}


# kt's packages, as attributes too: `import kt` then kt.ir.prune_blocks (README) worked only once something else
# had imported kt.ir
_PACKAGES = ("autotune", "codegen", "costmodel", "ir", "nn")


def __getattr__(name: str):
    import importlib

    if name in _PACKAGES:
        return importlib.import_module(f"kt.{name}")  # the import binds it as kt's attribute
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_PACKAGES))


__all__ = sorted(
    ["ArtifactError", "DatabaseError", "DeviceError", "KtError", "ModelError", "SpecError", *_LAZY]
)
