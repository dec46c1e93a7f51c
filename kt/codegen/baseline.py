"""PyTorch baselines ("candidate zero"): for every problem, the module a user without kt would call instead.

`render_baseline(problem)` is a plain Python module from `templates/baseline.py.j2` with the same
`kernel(*args, out=None)` as the problem's generated Triton kernel (arguments, output shape and dtype), computing
with PyTorch's own path: torch.matmul, two torch.bmm, the per-level butterfly loop, torch.fft.fft, F.linear on the
BSR tensor, torch.linalg.multi_dot, a sum of those, or the dense weight gradient. The module imports only torch,
and says in `IMPLEMENTATION` what it calls and in `implementation(*args)` what actually runs for given arguments
(a fallback where PyTorch refuses a dtype or block size on a device). The tuner checks and times it like any
candidate.
"""

from __future__ import annotations

from typing import Any

from kt.codegen.render import render_template, template_version

TEMPLATE = "baseline.py.j2"

IMPLEMENTATIONS = {
    "gemm": "torch.matmul",
    "monarch": "two torch.bmm",
    "butterfly": "per-level torch loop",
    "fft": "torch.fft.fft",
    "blocksparse": "torch BSR F.linear",
    "lowrank": "torch.linalg.multi_dot",
    "sum": "sum of the terms' PyTorch paths",
    "bsr_grad": "dense dy.T @ x, stored blocks gathered",
}

_WHAT = {
    "gemm": "dense GEMM, C = A @ B",
    "monarch": "Monarch, y = Monarch(w1, w2) x",
    "butterfly": "butterfly, y = B x",
    "fft": "FFT, y = torch.fft.fft(x)",
    "blocksparse": "block-sparse y = F.linear(x, W), W a torch sparse BSR tensor",
    "lowrank": "low-rank chain",
    "sum": "a sum of terms",
    "bsr_grad": "the weight gradient of a block-sparse layer",
}


def _family(problem) -> str:
    family = getattr(problem, "family", None)
    if family not in IMPLEMENTATIONS:
        raise ValueError(
            f"no PyTorch baseline for {type(problem).__name__} (family {family!r}); "
            f"families with one: {', '.join(IMPLEMENTATIONS)}"
        )
    return family


def baseline_impl(problem) -> str:
    """The short name of what `problem`'s baseline calls (the module's IMPLEMENTATION)."""
    return IMPLEMENTATIONS[_family(problem)]


def baseline_version() -> str:
    """The baseline template's version: changes whenever the template does, so old timings are never reused."""
    return template_version(TEMPLATE)


def render_baseline(
    problem,
    *,
    name: str = "kernel",
    device: str = "h100",
    kt_version: str = "",
    provenance: str = "PyTorch's own path, timed as candidate zero",
) -> str:
    """The source of `problem`'s PyTorch baseline module; `provenance` says in its docstring why it exists."""
    family = _family(problem)
    return render_template(
        TEMPLATE,
        name=name,
        family=family,
        what=_what(problem),
        dtype=problem.dtype,
        precision=problem.precision,
        problem=str(problem),
        device=device,
        kt_version=kt_version,
        version=baseline_version(),
        provenance=provenance,
        implementation=IMPLEMENTATIONS[family],
        **_variables(problem),
    )


def baseline_kernel(spec, device: str, provenance: str | None = None):
    """`spec`'s PyTorch baseline as a callable Kernel (kt.build's `config="pytorch"`, and what kt.nn runs on CPU
    tensors), `device` naming where it is for in the module's docstring. Imports none of the tuner's modules."""
    from kt.autotune.versions import software_versions
    from kt.codegen.emit import load_source
    from kt.ir import op_from_spec
    from kt.kernel import Kernel

    (node,) = op_from_spec(spec).kernel_graph().kernels
    extra = {"provenance": provenance} if provenance else {}
    source = render_baseline(
        node.problem, name=spec.name, device=device, kt_version=software_versions()["kt"], **extra
    )
    return Kernel(load_source(source), spec, None, {"measured": False, "kernel": "pytorch"})


def _what(problem) -> str:
    if getattr(problem, "transposed", False):
        return {"monarch": "transposed Monarch, y = x @ M", "butterfly": "transposed butterfly, y = x @ B"}[
            problem.family
        ]
    if problem.family == "lowrank":
        return f"low-rank chain y = x @ {' @ '.join(problem.weight_names)} ({' -> '.join(map(str, problem.dims))})"
    if problem.family == "sum":
        return f"a sum of {len(problem.terms)} terms ({' + '.join(t.family for t in problem.terms)})"
    return _WHAT[problem.family]


def _variables(problem) -> dict[str, Any]:
    """The template's variables that are the family's own."""
    family = problem.family
    if family == "monarch":
        return {"w1": tuple(problem.w1), "w2": tuple(problem.w2), "transposed": problem.transposed}
    if family == "butterfly":
        return {"n": problem.n, "transposed": problem.transposed}
    if family == "fft":
        return {"n": problem.n, "input": problem.input}
    if family == "blocksparse":
        from kt.sparsity import describe

        return {"block": tuple(problem.block), "pattern": describe(problem.mask())}
    if family == "lowrank":
        return {"dims": tuple(problem.dims), "weights": problem.weight_names}
    if family == "sum":
        terms = [
            {
                "kind": term.family,
                "weights": weights,
                "block": tuple(term.block) if term.family == "blocksparse" else None,
                "dims": tuple(term.dims) if term.family == "lowrank" else None,
            }
            for term, weights in zip(problem.terms, problem.split_weights(problem.weight_names))
        ]
        return {
            "terms": terms,
            "weight_names": problem.weight_names,
            "in_features": problem.in_features,
            "out_features": problem.out_features,
        }
    if family == "bsr_grad":
        return {"block": tuple(problem.block)}
    return {}
