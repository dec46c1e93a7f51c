"""The `kt` command: a thin layer over kt's Python API that prints with rich.

Every error a user can cause prints one line and exits with code 2; an interrupted tune says what was kept.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

import kt
from kt.autotune.artifact import check_target
from kt.errors import KtError

# Markup off: IR text such as Dense[b] and gemm[m=...] must print as it is. Wider than 80 when piped.
# soft_wrap: a long line stays one line (tables still fit the width).
out = Console(highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
err = Console(
    stderr=True, highlight=False, markup=False, soft_wrap=True, width=None if sys.stderr.isatty() else 120
)


class _Group(click.Group):
    def main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except KtError as exc:
            err.print(f"kt: error: {exc}", style="red")
            sys.exit(2)
        except (KeyboardInterrupt, click.exceptions.Abort):  # click turns Ctrl-C into Abort; kt never prompts
            err.print(
                "kt: interrupted; every finished measurement is in the database, and running the same "
                "command again resumes where this one stopped"
            )
            sys.exit(130)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "kt"
            err.print(f"kt: error: {exc.format_message()} (see `{command} --help`)", style="red")
            sys.exit(2)
        except OSError as exc:  # a path the user gave: unwritable, a file where a directory should be, ...
            where = f": {exc.filename}" if exc.filename else ""
            err.print(f"kt: error: {exc.strerror or exc}{where}", style="red")
            sys.exit(2)
        except click.ClickException as exc:
            err.print(f"kt: error: {exc.format_message()}", style="red")
            sys.exit(exc.exit_code)


def _spec_path(ctx, param, value):
    return kt.load_spec(value)  # a SpecError reaches _Group.main: one line, exit code 2


SPEC = click.argument("spec", metavar="OP_YAML", callback=_spec_path)
DEVICE = click.option(
    "--device",
    default=None,
    metavar="NAME|PROFILE.json",
    help="Target device profile (h100, h200, or a calibrated JSON); default: the spec's, else auto.",
)
DB = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Tuning database (SQLite). Default: $KT_DB, else ~/.cache/kt/tuning.db.",
)
BACKEND = click.option(
    "--backend",
    type=click.Choice(["auto", "cuda", "interpret"]),
    default="auto",
    show_default=True,
    help="cuda measures on the GPU; interpret checks on the CPU, never times.",
)
TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(1, 86400),
    default=300,
    show_default=True,
    help="Seconds one candidate may take before its worker is killed and it is recorded as timeout.",
)
RETRY = click.option(
    "--retry-failed",
    is_flag=True,
    help="Measure again the configs whose earlier attempt timed out or crashed.",
)
WORKERS = click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes for compiling and checking (default: one per core, at most 16).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kt.__version__, prog_name="kt")
def main():
    """kt: tune structured matmul kernels (Triton) for your GPU."""


def _header(spec) -> None:
    s = spec.shape
    batch = f" x batch {s.batch}" if s.batch else ""
    out.print(
        f"{spec.name}: {spec.op} {s.m}x{s.n}x{s.k}{batch} {spec.dtype} (a: {spec.layout.a}, b: {spec.layout.b})",
        style="bold",
    )


@main.command()
@SPEC
@click.option(
    "--budget",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Configs to measure (default: the spec's).",
)
@click.option(
    "--objective",
    type=click.Choice(["time", "energy", "edp"]),
    default=None,
    help="What the best minimises (default: the spec's).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Directory that receives artifacts/<name>/.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None, help="Seed (default: the spec's).")
@click.option(
    "--top", type=click.IntRange(1, 1000), default=10, show_default=True, help="Rows in the final table."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@TIMEOUT
@RETRY
@BACKEND
@DEVICE
@DB
@WORKERS
def tune(
    spec, budget, objective, out_dir, seed, top, quiet, timeout, retry_failed, backend, device, db, workers
):
    """Tune OP_YAML's kernel and write artifacts/<name>/ (kernel.py + meta.json)."""
    _header(spec)
    check_target(out_dir / spec.name)  # before the tune, not after it
    result = kt.tune(
        spec,
        budget=budget,
        objective=objective,
        backend=backend,
        db=db,
        device=device,
        workers=workers,
        seed=seed,
        progress=not quiet,
        timeout_s=timeout,
        retry_failed=retry_failed,
    )
    _results_table(result, top)
    path = result.save(out_dir / spec.name)
    best = result.best
    if best.measured:
        tflops = result.problem.flops / (best.runtime_ms * 1e-3) / 1e12
        power = (
            f", {best.power_w:.0f} W, {best.energy_mj:.3f} mJ per call" if best.power_w is not None else ""
        )
        out.print(
            f"best: {best.config.key()} · {best.runtime_ms:.4f} ms ({tflops:.1f} TFLOP/s){power} "
            f"on {result.ran_on}"
        )
    else:
        out.print(
            f"best: {best.config.key()} · not measured (predicted {best.predicted_ms:.4f} ms on "
            f"{result.target.name} by the {result.plan.model} model)",
            style="yellow",
        )
    for note in result.notes:
        out.print(f"note: {note}", style="yellow")
    out.print(
        f"artifact: {path} (measured: {str(best.measured).lower()}) · "
        f"{result.newly_measured} new {'measurements' if best.measured else 'checks'} in {result.db_path} · "
        f"{result.wall_s:.1f} s"
    )


def _results_table(result, top: int) -> None:
    measured = result.measured
    table = Table(
        title=f"best {min(top, len(result.rows))} of {len(result.rows)} "
        f"({', '.join(f'{n} {s}' for s, n in result.statuses().most_common())})"
    )
    table.add_column("rank", justify="right")
    table.add_column("config")
    table.add_column("status")
    if measured:
        for name in ("ms", "TFLOP/s", "W", "mJ"):
            table.add_column(name, justify="right")
    table.add_column(f"predicted ms ({result.target.name})", justify="right")
    table.add_column("rel err", justify="right")
    table.add_column("smem KiB", justify="right")
    flops = result.problem.flops
    for row in result.table(top):
        cells = [str(row["rank"]), row["config_key"], row["status"]]
        if measured:
            ms = row.get("runtime_ms")
            cells += [
                _fmt(ms, ".4f"),
                _fmt(flops / (ms * 1e-3) / 1e12 if ms else None, ".1f"),
                _fmt(row.get("power_w"), ".0f"),
                _fmt(row.get("energy_mj"), ".3f"),
            ]
        cells += [
            _fmt(row.get("predicted_ms"), ".4f"),
            _fmt(row.get("rel_err"), ".1e"),
            _fmt(row["smem_bytes"] / 1024 if row.get("smem_bytes") else None, ".0f"),
        ]
        table.add_row(*cells)
    out.print(table)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@main.command()
@SPEC
@DEVICE
def show(spec, device):
    """Print OP_YAML's IR (the factor product) and its kernel graph."""
    from kt.ir import op_from_spec

    op = op_from_spec(spec)
    source = f", from {spec.source}" if spec.source else ""
    out.print(f"{spec.name}: {spec.op} {spec.dtype}{source}", style="bold")
    out.print(f"  {op.describe()}")
    out.print(
        f"\nlinear map ({op.linear_map.in_features} -> {op.linear_map.out_features}), factors applied right to left:"
    )
    out.print(f"  y = {op.linear_map} · x")
    graph = op.kernel_graph()
    out.print(f"\nkernel graph ({len(graph)} kernel{'s' if len(graph) != 1 else ''}):")
    out.print(str(graph))


@main.command()
@SPEC
@click.option(
    "--sample", type=click.IntRange(0, 1000), default=10, show_default=True, help="Legal configs to list."
)
@click.option("--seed", type=int, default=0, show_default=True)
@DEVICE
def space(spec, sample, seed, device):
    """Print the search space's size before and after legality pruning, and a sample of configs."""
    from kt.codegen import family_for
    from kt.codegen.gemm import accumulator_registers, shared_memory

    plan = kt.plan(spec, budget=1, device=device)
    space_ = plan.space
    family = family_for(space_.problem)
    axes = " x ".join(f"{name} {'|'.join(map(str, values))}" for name, values in family.axes.items())
    out.print(f"search space of {space_.problem} on {space_.device.name}", style="bold")
    out.print(f"  axes: {axes}")
    out.print(f"  all:   {space_.total} configs")
    out.print(f"  legal: {len(space_.legal)} ({100 * len(space_.legal) / space_.total:.0f}%)")
    for reason, count in space_.dropped.items():
        out.print(f"  dropped {count}: {reason}")
    rng = random.Random(seed)
    picks = sorted(
        rng.sample(range(len(space_.legal)), min(sample, len(space_.legal))), key=plan.ranked.index
    )
    if not picks:
        return
    table = Table(
        title=f"{len(picks)} legal configs, sampled with seed {seed}, in the {plan.model} model's order"
    )
    for name in ("rank", "config", "smem KiB", "acc regs/thread", f"predicted ms ({space_.device.name})"):
        table.add_column(name, justify="right" if name != "config" else "left")
    for index in picks:
        config = space_.legal[index]
        table.add_row(
            str(plan.ranked.index(index) + 1),
            config.key(),
            f"{shared_memory(space_.problem, config) / 1024:.0f}",
            str(accumulator_registers(config)),
            f"{plan.predicted_s[index] * 1e3:.4f}",
        )
    out.print(table)


@main.command()
@SPEC
@click.option("--all", "everything", is_flag=True, help="Measure every legal config.")
@click.option(
    "--sample", type=click.IntRange(1, 1_000_000), default=None, help="Measure N random legal configs."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@TIMEOUT
@RETRY
@BACKEND
@DEVICE
@DB
@WORKERS
def collect(spec, everything, sample, quiet, timeout, retry_failed, backend, device, db, workers):
    """Measure every legal config (--all) or a random sample into the database: the cost model's data."""
    if everything == (sample is not None):
        raise click.UsageError("give exactly one of --all or --sample N")
    session = kt.collect(
        spec,
        sample=sample,
        backend=backend,
        db=db,
        device=device,
        workers=workers,
        progress=not quiet,
        timeout_s=timeout,
        retry_failed=retry_failed,
    )
    counts = Counter(row["status"] for row in session.rows)
    out.print(
        f"{spec.name}: {len(session.rows)} configs in {session.db_path} ({session.fresh} new; "
        f"{', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) on {session.runner.device}"
    )


@main.command()
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Profile JSON to write.",
)
@click.option("--name", default=None, help="Profile name (default: the matching built-in's, e.g. h100).")
def calibrate(out_path, name):
    """Measure this machine's GPU (copy bandwidth, matmul throughput, limits) into a device profile."""
    from kt.autotune.calibrate import calibrate as run_calibration
    from kt.device import save_profile

    profile = run_calibration(name)
    save_profile(profile, out_path)
    out.print(
        f"{profile.gpu_name}: {profile.dram_bandwidth / 1e12:.2f} TB/s copy, "
        + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in profile.peak_flops.items())
        + f" -> {out_path}"
    )


@main.command()
@click.argument("csv_path", metavar="OUT.csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--runner",
    type=click.Choice(["cuda", "interpret"]),
    default=None,
    help="Only rows from this runner (cuda rows are the measured ones).",
)
@click.option("--status", default=None, help="Only rows with this status (e.g. ok).")
@DB
def export(csv_path, runner, status, db):
    """Write the tuning database's rows (every column, with device and versions) to a CSV file."""
    from kt.autotune.database import Database

    where = {k: v for k, v in (("runner", runner), ("status", status)) if v is not None}
    with Database(db, create=False) as database:
        count = database.export_csv(csv_path, **where)
        out.print(f"{count} rows from {database.path} -> {csv_path}")


@main.command()
def devices():
    """List the built-in device profiles."""
    from kt.device import BUILTIN

    table = Table(title="built-in device profiles (datasheet figures)")
    for name in ("name", "GPU", "SMs", "smem/block KiB", "L2 MiB", "DRAM TB/s", "fp16 TFLOP/s", "TDP W"):
        table.add_column(name)
    for p in BUILTIN.values():
        table.add_row(
            p.name,
            p.gpu_name,
            str(p.sm_count),
            str(p.smem_per_block // 1024),
            f"{p.l2_bytes / 2**20:.0f}",
            f"{p.dram_bandwidth / 1e12:.2f}",
            f"{p.peak_flops['float16'] / 1e12:.0f}",
            f"{p.tdp_w:.0f}",
        )
    out.print(table)


if __name__ == "__main__":
    main()
