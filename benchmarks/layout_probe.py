"""Is the caller's row-major layout what makes kt's FFT and Monarch slow? One GPU run decides it.

The block-GEMM stages keep x and y in the caller's layout (only intermediates are feature-major). Where a stage's
index map is strided there (the FFT's first loads, its last stores; Monarch's last stores), a tile's
elements lie a map stride apart, and the sm_90 build moves them as scalar 2-byte `ld.global.b16` and
`st.global.b16` instead of 16-byte `cp.async` (--ptx shows it without a GPU). This probe calls the same kernels
on the same values stored two ways, in one run on one GPU:

- `row-major`: x and y as a user passes them (what `kt bench` timed);
- `feature-major`: x and `out` feature-major (rows adjacent), so every launch moves whole sectors;
- `transposes`: torch's copies between the two layouts (x in, y out), the price a kernel would pay to get
  there from row-major inputs; `fm + transposes` is their sum, an upper bound on such a kernel;
- PyTorch's own path (kt's baseline module, candidate zero of a tune).

Each time is `kt.autotune.timing.time_cuda` (L2 flushed before each run, median of CUDA-event timings). Both
layouts' outputs are compared (relative error), so a layout cannot win by computing something else.

    python benchmarks/layout_probe.py --csv benchmarks/results/<gpu>-<date>/layout.csv   # a GPU
    python benchmarks/layout_probe.py --ptx        # no GPU: each launch's global loads and stores on sm_90
    python benchmarks/layout_probe.py --smoke      # no GPU: both layouts agree in Triton's interpreter
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from kt.autotune.figures import check_outputs, command_line, run_context, write_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured_probe import cfg  # noqa: E402  beside this script: 'b32n32k32g8w8s3-s32' as a config

# case: (op, shape, configs): the slow structured cases of the 2026-12-04 H200 run (BENCHMARKS.md), with the
# structured probe's best configs there and the model's first picks since
CASES = {
    "fft fp16 n=4096": (
        "fft",
        {"rows": 16384, "n": 4096},
        ["b32n32k32g8w8s3-s32", "b16n64k32g16w8s3-s64", "b32n32k32g8w8s3-s32-fm", "b16n64k32g16w8s3-s64-fm"],
    ),
    "monarch n=4096 nb=64": (
        "monarch",
        {"rows": 16384},
        ["b16n64k64g16w4s2", "b64n32k64g8w8s3", "b16n64k64g16w4s2-fm", "b64n32k64g8w8s3-fm"],
    ),
    "fft fp16 n=1024 rows=1000": (
        "fft",
        {"rows": 1000, "n": 1024},
        ["b32n32k32g8w8s3-s32", "b32n32k32g8w8s3-s32-fm"],
    ),
}
GLOBAL_OPS = re.compile(
    r"\b(ld\.global(?:\.nc)?(?:\.v[248])?\.b\d+|cp\.async\.c[ag]\.shared\.global|st\.global(?:\.v[248])?\.b\d+)"
)


def problem_of(kind: str, shape: dict):
    from kt.ir.problems import FFTProblem, MonarchProblem

    if kind == "fft":
        return FFTProblem(shape["rows"], shape["n"], "float16")
    return MonarchProblem(shape["rows"], (64, 64, 64), (64, 64, 64))


def feature_major(t):
    """The same values stored feature-major: a (..., rows, features) view whose features are outermost in
    memory and rows adjacent. A planar FFT tensor (2, rows, n) is stored (n, 2, rows), so the kernel's `out`
    check still sees one (-1, n) view of it and writes it in place."""
    import torch

    lead, (rows, features) = tuple(t.shape[:-2]), tuple(t.shape[-2:])
    stored = torch.empty((features, *lead, rows), dtype=t.dtype, device=t.device)
    view = stored.permute(*range(1, len(lead) + 2), 0)
    return view.copy_(t) if t.device.type != "meta" else view


def modules(problem, key: str, interpret: bool | None):
    """The generated kernel module of `problem` with config `key`, and PyTorch's baseline module."""
    from kt.autotune.versions import software_versions
    from kt.codegen import family_for
    from kt.codegen.baseline import render_baseline
    from kt.codegen.emit import load_source

    version = software_versions()["kt"]
    config = cfg(key)
    kernel = load_source(family_for(problem).render(problem, config, kt_version=version), interpret)
    base = load_source(render_baseline(problem, kt_version=version), interpret)
    return kernel, base


def layouts(problem, device: str, seed: int = 0):
    """(x, weights, out) stored row-major and feature-major, holding the same values."""
    import torch

    x, *weights = problem.random_args(seed, device)
    fm = feature_major(x)
    return (x, weights, torch.empty_like(x)), (fm, weights, feature_major(torch.empty_like(x)))


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def ptx_rows(name: str, problem, key: str) -> list[dict]:
    """Each launch's global loads and stores in its sm_90 build, for both layouts (no GPU needed)."""
    from kt.autotune.compile import compile_for_target, meta_args

    kernel, _ = modules(problem, key, interpret=False)
    # every meta tensor reports storage 0, so the wrapper would take `out` for an alias of x and write a new
    # row-major tensor (then copy): on meta tensors, `out` is written in place, as a real one is on a GPU
    written = kernel._output
    kernel._output = lambda out, *rest: (out, out) if out is not None else written(out, *rest)
    x, *weights = meta_args(problem)
    rows = []
    for layout, args, out in (
        ("row-major", (x, *weights), None),
        ("feature-major", (feature_major(x), *weights), feature_major(x)),
    ):
        for launch, build in enumerate(compile_for_target(kernel, args, 90, {"out": out})):
            ops: dict[str, int] = {}
            for op in GLOBAL_OPS.findall(build.ptx):
                ops[op] = ops.get(op, 0) + 1
            rows.append(
                {"case": name, "config": key, "layout": layout, "launch": launch, "mma": build.mma_kind,
                 "registers": build.registers, "spill_bytes": build.local_bytes,
                 "global_ops": " ".join(f"{n}x {op}" for op, n in sorted(ops.items()))}
            )  # fmt: skip
    return rows


def probe(name: str, problem, key: str, device: str, timed: bool) -> dict:
    """One config: both layouts checked against each other and PyTorch's path; then each call the table times,
    timed on a GPU, or run once without one (so the smoke runs every line but the timer)."""
    kernel, base = modules(problem, key, interpret=not timed)
    (x, weights, out), (xf, _, outf) = layouts(problem, device)
    kernel.kernel(x, *weights, out=out)
    kernel.kernel(xf, *weights, out=outf)
    written, _ = kernel._output(outf, outf.shape, outf.device, outf.dtype, (xf,))
    row = {
        "case": name,
        "config": key,
        "out_in_place": written is outf,  # else the wrapper writes a new row-major tensor and copies it
        "rel_err_layouts": rel_err(outf, out),
        "rel_err_pytorch": rel_err(out, base.kernel(x, *weights)),
    }
    calls = {
        "row_major": lambda: kernel.kernel(x, *weights, out=out),
        "feature_major": lambda: kernel.kernel(xf, *weights, out=outf),
        "transposes": lambda: (xf.copy_(x), out.copy_(outf)),  # x in, y out: torch's copies between layouts
        "pytorch": lambda: base.kernel(x, *weights),
    }
    if not timed:
        for call in calls.values():
            call()
        return row
    from kt.autotune.timing import time_cuda

    for label, call in calls.items():
        row[f"{label}_ms"] = time_cuda(call)["runtime_ms"]
    row["fm_plus_transposes_ms"] = row["feature_major_ms"] + row["transposes_ms"]
    for label in ("row_major", "feature_major", "fm_plus_transposes"):
        row[f"{label}_ratio"] = row["pytorch_ms"] / row[f"{label}_ms"]  # PyTorch's time over kt's
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--ptx", action="store_true", help="no GPU: each launch's global loads and stores on sm_90"
    )
    mode.add_argument(
        "--smoke", action="store_true", help="no GPU: both layouts agree in Triton's interpreter"
    )
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    if not any(args.only in name for name in CASES):
        parser.error(f"--only {args.only!r} matches no case (cases: {', '.join(CASES)})")
    check_outputs(parser, {"--csv": args.csv}, [])
    import torch

    gpu = not (args.ptx or args.smoke)
    if gpu and not torch.cuda.is_available():
        print("layout_probe: needs a CUDA GPU; this machine has none (--ptx or --smoke run without one)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.ptx:
        from kt.autotune.compile import target_compiler_available

        if not target_compiler_available():
            print("layout_probe: --ptx needs Triton's NVIDIA backend (its ptxas)", file=sys.stderr)
            return 2
    context = run_context() if gpu else {"device": "none (cpu)", "date": "-"}
    context["command"] = command_line("benchmarks/layout_probe.py", argv)
    rows: list[dict] = []
    for name, (kind, shape, keys) in CASES.items():
        if args.only not in name:
            continue
        problem = problem_of(kind, shape)
        if args.smoke:
            problem = replace(problem, rows=24)
        for key in keys:
            if args.ptx:
                found = ptx_rows(name, problem, key)
                for r in found:
                    print(f"{name} · {key} · {r['layout']} · launch {r['launch']} ({r['mma']}, "
                          f"{r['registers']} registers, {r['spill_bytes']} spilled): {r['global_ops']}")  # fmt: skip
            else:
                found = [probe(name, problem, key, "cuda" if gpu else "cpu", gpu)]
                print(_line(found[0]), flush=True)
            rows.extend(found)
            if args.csv:
                write_csv(args.csv, [{**context, **r} for r in rows])
    print(f"\n{context['device']} · {context['date']} · {context['command']}")
    return 0


def _line(row: dict) -> str:
    text = f"{row['case']} · {row['config']}: layouts agree to {row['rel_err_layouts']:.1e}"
    if not row["out_in_place"]:
        text += " (feature-major out copied, not written in place)"
    if "row_major_ms" not in row:
        return text + f", kt against PyTorch {row['rel_err_pytorch']:.1e} (nothing timed)"
    return text + (
        f"; row-major {row['row_major_ms']:.4f} ms ({row['row_major_ratio']:.2f}x of PyTorch), feature-major "
        f"{row['feature_major_ms']:.4f} ms ({row['feature_major_ratio']:.2f}x), transposes "
        f"{row['transposes_ms']:.4f} ms, fm + transposes {row['fm_plus_transposes_ms']:.4f} ms "
        f"({row['fm_plus_transposes_ratio']:.2f}x); PyTorch {row['pytorch_ms']:.4f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
