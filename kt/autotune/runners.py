"""Runners: how candidates are checked and measured. Each is a short pipeline of stages over a worker pool.

- `interpret` (no GPU): Triton's interpreter checks correctness on a reduced problem that still hits every
  edge, then the kernel is compiled for the target GPU's architecture to catch what only the GPU compiler sees
  (rejections, shared memory over the limit). It never reports a time.
- `cuda`: kernels compile in parallel worker processes (no GPU work, so nothing disturbs a timing), then one
  GPU worker checks each against the reference on the full problem and times it, alone on the card.
- `dryrun` (no GPU): the `cuda` runner's pipeline and worker code, with Triton's interpreter as the device and
  a wall-clock timer whose figures are never stored or reported as runtimes. It exists so that everything the
  GPU path does (allocating inputs and outputs from the family, the full-problem check, the measure step, the
  row, the energy columns, crashes and timeouts) runs in CI on small problems.

A candidate's result is final at its first failed stage or after its last stage. A runner used as a context
manager keeps its workers between `run` calls (a tune's rounds); otherwise each call starts its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from kt.autotune.compile import (
    target_compiler_available,  # noqa: F401 - tests import it from here
    target_compiler_missing,
)
from kt.autotune.pool import Outcome, Task, WorkerPool, default_workers
from kt.autotune.timing import DEFAULT_TIMING, DRY_RUN_TIMING, TimingSettings
from kt.codegen import Config, family_for
from kt.device import DeviceProfile
from kt.ir.problems import Problem

INTERPRETER_DEVICE = "cpu (Triton interpreter)"
DRY_RUN_DEVICE = "cpu (Triton interpreter, dry run of the GPU measure path)"


@dataclass
class Candidate:
    problem: Problem
    config: Config
    source_path: str
    predicted_ms: float | None = None
    # the reduced problems the interpreter checks (default: the family's for this config)
    checks: list[Problem] | None = None
    # the module's text: a worker writes it again where the cache's file is gone (kernels/ may be deleted while
    # a tune runs; every candidate was stored as a crash that no later tune retried)
    source: str | None = None
    # its check (and timing) inputs' seed: its tune's own, which a runner shared by several tunes has not (every
    # op's checks drew the first op's inputs while each recorded its own seed); None: the runner's
    seed: int | None = None


@dataclass
class Result:
    candidate: Candidate
    status: str
    values: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    wall_s: float = 0.0


@dataclass(frozen=True)
class Stage:
    group: str
    kind: str


def compile_payload(candidate: Candidate, arch: int, smem_limit: int) -> dict[str, Any]:
    """A worker's compile task for `candidate`: build it for `arch` on the full problem, held to `smem_limit`
    bytes of shared memory (and refused if it spills)."""
    problem = candidate.problem
    return {
        "family": problem.family,
        "source_path": candidate.source_path,
        "source": candidate.source,
        "problem": problem.to_dict(),
        "arch": arch,
        "smem_limit": smem_limit,
    }


def compile_pool(workers: int = 2, timeout_s: float = 900.0) -> WorkerPool:
    """Compile workers for `compile_builds` (Triton's interpreter off), to keep across several calls."""
    return WorkerPool({"compile": (workers, {"TRITON_INTERPRET": "0"})}, timeout_s=timeout_s)


def compile_builds(
    jobs: list[tuple[Candidate, DeviceProfile]], pool: WorkerPool | None = None
) -> list[Outcome]:
    """Compile each candidate for its profile's architecture in kt's compile workers (`pool`, else a
    `compile_pool` of its own), held to the profile's shared memory and refused if it spills, as a tune's compile
    stage does; the outcomes in the order of `jobs` (`values` has the evidence: smem_bytes, registers,
    local_bytes). For studies of builds, no GPU needed."""
    tasks = [
        Task(index, "compile", compile_payload(candidate, p.compute_capability, p.smem_per_block), "compile")
        for index, (candidate, p) in enumerate(jobs)
    ]
    if not tasks:
        return []
    if pool is None:
        with compile_pool() as own:
            return compile_builds(jobs, own)
    return sorted(pool.run(tasks), key=lambda outcome: outcome.task.id)


def labelled_builds(jobs: list[tuple[Candidate, DeviceProfile]], rows: list[dict], arch: int) -> list[dict]:
    """`compile_builds` of `jobs`, each build's outcome added to its row of `rows` (a study's record of one build:
    benchmarks/*_builds.py): the Triton version, `arch`, the compile stage's status, registers and local memory
    bytes. Says on stderr how many it compiles."""
    import sys

    import triton

    print(f"compiling {len(jobs)} builds for sm_{arch} (Triton {triton.__version__})", file=sys.stderr)
    for row, outcome in zip(rows, compile_builds(jobs)):
        values = outcome.values or {}
        row.update(
            triton=triton.__version__,
            arch=arch,
            status=outcome.status,
            registers=values.get("registers"),
            local=values.get("local_bytes"),
        )
    return rows


class Runner(ABC):
    name: str
    measures_time: bool
    device: str  # where candidates run, as recorded in the database
    pool: WorkerPool | None = None  # the workers kept between runs while the runner is entered
    ray: str | None = None  # a Ray address ("local", "auto", host:port): workers are Ray actors (raypool)

    def __init__(
        self, profile: DeviceProfile, workers: int | None = None, seed: int = 0, timeout_s: float = 300.0
    ):
        self.profile, self.seed, self.timeout_s = profile, seed, timeout_s
        self.workers = workers or default_workers()

    @property
    @abstractmethod
    def stages(self) -> list[Stage]:
        """The stages every candidate goes through, in order."""

    @abstractmethod
    def groups(self) -> dict[str, tuple[int, dict[str, str]]]:
        """Worker groups: name -> (how many, environment)."""

    @abstractmethod
    def payload(self, stage: Stage, candidate: Candidate) -> dict[str, Any]:
        """What the worker needs for `candidate` at `stage`."""

    def compile_payload(self, candidate: Candidate, arch: int) -> dict[str, Any]:
        return compile_payload(candidate, arch, self.profile.smem_per_block)

    def refuse_unfit(self, problem: Problem) -> None:
        """A DeviceError where `problem` cannot run where this runner runs it (CudaRunner: its operands alone
        exceed a measuring GPU's memory); nothing here."""
        return None

    def _task(self, index: int, stage_index: int, candidate: Candidate) -> Task:
        stage = self.stages[stage_index]
        return Task(index, stage.kind, self.payload(stage, candidate), stage.group, context=stage_index)

    # True: a candidate moves to its next stage as soon as it passes one. False: every candidate finishes a
    # stage before any starts the next (so nothing compiles on the host while the GPU is being timed).
    pipelined = True

    def run(
        self,
        candidates: list[Candidate],
        deadline: float | None = None,
        retry: Callable[[Candidate, str], Candidate | None] | None = None,
    ) -> Iterator[Result]:
        """Yield each candidate's final Result as soon as it is known. After `deadline` (time.monotonic())
        nothing new starts, and candidates not finished by then get no Result.

        `retry(candidate, status)`, asked when a candidate ends at its first stage (its build refused, say; not
        at a later one, which a run that finishes each stage first could not go back to), may give a candidate
        to run in its place: it joins this run at once, its first stage queued with the others', its later
        stages in the place of the candidate it replaces, and yields its own Result (`kt bench`'s smoke: the
        next ranked config after a spill). A stage that every candidate finishes before the next starts
        (`pipelined` False) takes them in the order given, not in the order the stage before ended them."""
        if not candidates:
            return
        candidates = list(candidates)  # a retry's candidate is added to the run's
        merged: dict[int, Result] = {i: Result(c, "ok") for i, c in enumerate(candidates)}
        # each candidate's place in the order given (a retry's: the place of the candidate it replaces)
        place = list(range(len(candidates)))
        last = len(self.stages) - 1

        def passed_on(outcome: Outcome) -> bool:
            return outcome.status == "ok" and outcome.task.context < last

        def follow_up(outcome: Outcome) -> list[Task]:
            if self.pipelined and passed_on(outcome):
                return [self._task(outcome.task.id, outcome.task.context + 1, candidates[outcome.task.id])]
            if retry is not None and outcome.task.context == 0 and not passed_on(outcome):
                again = retry(candidates[outcome.task.id], outcome.status)
                if again is not None:
                    merged[len(candidates)] = Result(again, "ok")
                    place.append(place[outcome.task.id])
                    candidates.append(again)
                    return [self._task(len(candidates) - 1, 0, again)]
            return []

        with contextlib.ExitStack() as stack:
            pool = self.pool or stack.enter_context(self.start_pool())
            active = list(range(len(candidates)))
            for stage_index in range(len(self.stages)) if not self.pipelined else [0]:
                active.sort(key=lambda i: (place[i], i))
                tasks = [self._task(i, stage_index, candidates[i]) for i in active]
                active = []
                for outcome in pool.run(tasks, follow_up, deadline):
                    result = merged[outcome.task.id]
                    result.values.update(outcome.values)
                    result.wall_s += outcome.wall_s
                    result.status, result.message = outcome.status, outcome.message
                    if passed_on(outcome):
                        active.append(outcome.task.id)
                    else:
                        self.ended(result)
                        yield result

    def ended(self, result: Result) -> None:  # noqa: B027  a hook: most runners check nothing
        """A candidate's final Result, as `run` is about to yield it: a runner's check of what came back."""

    def __enter__(self) -> Runner:
        self.pool = self.start_pool()
        if self.pool is not None:
            self.pool.warm()  # the workers import torch and Triton while the caller plans
        return self

    def __exit__(self, *exc) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    @contextlib.contextmanager
    def shared(self):
        """While entered, `run` may be called from several threads at once (the tunes of several ops), all
        served by this entered runner's workers through the dispatcher it gives (kt.autotune.dispatch). An
        error or Ctrl-C in the caller stops every run at once."""
        from kt.autotune.dispatch import Dispatcher

        if self.pool is None:
            raise RuntimeError("a runner is shared while it is entered (with runner: ...)")
        pool = self.pool
        dispatcher = Dispatcher(pool)
        self.pool = dispatcher
        try:
            with dispatcher:
                try:
                    yield dispatcher
                except BaseException:
                    dispatcher.abort()
                    raise
        finally:
            self.pool = pool

    def start_pool(self) -> WorkerPool:
        if self.ray is not None:
            from kt.autotune.raypool import RayPool

            gpu = [
                name
                for name, (_, env) in self.groups().items()
                if any(e.get("KT_WORKER_GPU") == "1" for e in (env if isinstance(env, list) else [env]))
            ]
            return RayPool(self.groups(), timeout_s=self.timeout_s, address=self.ray, gpu_groups=gpu)
        return WorkerPool(self.groups(), timeout_s=self.timeout_s)


class InterpretRunner(Runner):
    name = "interpret"
    measures_time = False

    def __init__(
        self,
        profile: DeviceProfile,
        workers: int | None = None,
        seed: int = 0,
        timeout_s: float = 300.0,
        compile_target: bool = True,
    ):
        super().__init__(profile, workers, seed, timeout_s)
        # why the compile stage cannot run here (a tool Triton or kt needs for the target), for the tune's notes
        self.compile_missing = target_compiler_missing() if compile_target else None
        self.compile_target = compile_target and self.compile_missing is None
        # Rows checked with and without the target compile are different evidence: keep them apart.
        suffix = f" + sm_{profile.compute_capability} compile" if self.compile_target else ""
        self.device = INTERPRETER_DEVICE + suffix

    @property
    def stages(self) -> list[Stage]:
        check = [Stage("interpret", "check")]
        return check + [Stage("compile", "compile")] if self.compile_target else check

    def groups(self):
        groups = {"interpret": (self.workers, {"TRITON_INTERPRET": "1"})}
        if self.compile_target:
            groups["compile"] = (self.workers, {"TRITON_INTERPRET": "0"})
        return groups

    def payload(self, stage: Stage, candidate: Candidate) -> dict[str, Any]:
        if stage.kind == "compile":
            return self.compile_payload(candidate, self.profile.compute_capability)
        problem = candidate.problem
        small = candidate.checks or family_for(problem).check_problems(problem, candidate.config)
        return {
            "family": problem.family,
            "source_path": candidate.source_path,
            "source": candidate.source,
            "problems": [p.to_dict() for p in small],
            "device": "cpu",
            "seed": self.seed if candidate.seed is None else candidate.seed,
        }


class MeasureRunner(Runner):
    """Compile every candidate in parallel workers, then check each on the full problem and time it in one
    measuring worker: the `cuda` runner's pipeline, and the dry run's (`device_type` cpu, the interpreter)."""

    device_type = "cuda"
    arch: int
    pipelined = False  # compile everything first: the device is timed with the host otherwise idle

    def __init__(
        self,
        profile: DeviceProfile,
        workers: int | None = None,
        seed: int = 0,
        timeout_s: float = 300.0,
        timing: TimingSettings = DEFAULT_TIMING,
    ):
        super().__init__(profile, workers, seed, timeout_s)
        self.timing = timing

    compiles = True

    @property
    def stages(self) -> list[Stage]:
        measure = [Stage("measure", "measure")]
        return [Stage("compile", "compile"), *measure] if self.compiles else measure

    def measure_env(self) -> dict[str, str]:
        return {"TRITON_INTERPRET": "0", "KT_WORKER_GPU": "1"}

    def measure_envs(self) -> list[dict[str, str]]:
        """One environment per measuring worker (one worker unless a runner measures on several GPUs)."""
        return [self.measure_env()]

    def groups(self):
        envs = self.measure_envs()
        groups = {"measure": (len(envs), envs)}
        if self.compiles:
            groups["compile"] = (self.workers, {"TRITON_INTERPRET": "0"})
        return groups

    def payload(self, stage: Stage, candidate: Candidate) -> dict[str, Any]:
        if stage.kind == "compile":
            return self.compile_payload(candidate, self.arch)
        problem = candidate.problem
        return {
            "family": problem.family,
            "source_path": candidate.source_path,
            "source": candidate.source,
            "problem": problem.to_dict(),
            "seed": self.seed if candidate.seed is None else candidate.seed,
            "timing": asdict(self.timing),
            "device": self.device_type,
        }


class CudaRunner(MeasureRunner):
    """Measures with one GPU worker per GPU: `gpus` (indices in torch's numbering here), or every visible GPU
    of cuda:0's model. Each worker sees its GPU alone (CUDA_VISIBLE_DEVICES) and takes whichever candidate is
    next, and each row records the GPU's index and UUID. The GPUs are named by NVML (kt.autotune.gpuinfo), so
    this process never holds a CUDA context: in exclusive-process mode the GPU worker's is the only one."""

    name = "cuda"
    measures_time = True

    def __init__(self, profile: DeviceProfile, *args, gpus: list[int] | None = None, **kwargs):
        from kt.autotune.gpuinfo import machine_gpus

        super().__init__(profile, *args, **kwargs)
        self.gpus = machine_gpus(gpus)
        gpu = self.gpus[0].info
        self.device, self.arch = gpu.name, gpu.compute_capability
        self.cluster_gpu: str | None = None  # under Ray: the model the first measuring GPU was

    def measure_envs(self) -> list[dict[str, str]]:
        return [
            {**self.measure_env(), "CUDA_VISIBLE_DEVICES": gpu.visible, "KT_GPU_INDEX": str(gpu.index)}
            for gpu in self.gpus
        ]

    def refuse_unfit(self, problem: Problem) -> None:
        """A DeviceError where the problem's arguments and output alone (`operand_bytes`) take more than a
        measuring GPU's whole memory: every candidate's check and run would fail for want of memory, each after
        its compile. Where they fit, the kernel's workspace or the check's float64 reference can still exceed
        what is free; that candidate is then out_of_resources. Under Ray the GPUs are the cluster's, unknown
        here."""
        if self.ray is not None:
            return
        for gpu in self.gpus:
            refuse_over(problem, gpu.info.memory_bytes, f"of GPU {gpu.index} ({gpu.info.name}),")

    def ended(self, result: Result) -> None:
        """Under Ray the cluster's GPUs must be one model: Ray places each GPU actor on any node, so the first
        GPU that measures sets the model and one of another model stops the tune."""
        if self.ray is not None:
            self.cluster_gpu = same_gpu_model(self.cluster_gpu, result)


def same_gpu_model(expected: str | None, result: Result) -> str | None:
    """The GPU model measurements so far came from (`expected`, None before the first), after `result`; a
    result measured on another model is refused (its row is not stored: it would be filed under the wrong GPU,
    and the cost model refits only on one model's rows)."""
    from kt.errors import DeviceError

    name = result.values.get("gpu_name")
    if name is None or expected is None or name == expected:
        return expected or name
    raise DeviceError(
        f"--ray: the cluster's GPUs are not one model: {result.values.get('gpu_uuid') or 'a GPU'} is a {name}, "
        f"earlier measurements ran on a {expected}; give the tune a cluster (or Ray resources) of one GPU model"
    )


class DryRunner(MeasureRunner):
    """The `cuda` runner's pipeline on a machine without a GPU: candidates compile for the target's
    architecture (when Triton's ptxas and cuobjdump are installed, unless `compile_target` is False, as
    InterpretRunner's),
    then one worker checks each on the full problem in Triton's interpreter and runs the measure step with the
    wall-clock timer (kt.autotune.timing.time_wall).
    Nothing it produces is a runtime: its rows carry no runtime_ms, and a tune through it is `measured: false`."""

    name = "dryrun"
    measures_time = False
    device_type = "cpu"
    device = DRY_RUN_DEVICE

    def __init__(
        self,
        profile: DeviceProfile,
        *args,
        timing: TimingSettings = DRY_RUN_TIMING,
        compile_target: bool = True,
        **kwargs,
    ):
        super().__init__(profile, *args, timing=timing, **kwargs)
        self.arch = profile.compute_capability
        self.compile_missing = target_compiler_missing() if compile_target else None
        self.compiles = compile_target and self.compile_missing is None
        if self.compiles:  # rows checked with and without the target compile are different evidence
            self.device = f"{DRY_RUN_DEVICE} + sm_{self.arch} compile"

    @property
    def compile_target(self) -> bool:
        return self.compiles

    def refuse_unfit(self, problem: Problem) -> None:
        """A DeviceError where the problem's arguments and output alone take more than this machine's memory:
        the dry run checks and runs the full problem on the CPU (a worker that ran out was killed, a crash)."""
        if self.ray is not None:  # under Ray the workers are the cluster's
            return
        where = "of this machine's memory (the dry run checks the full problem on the CPU),"
        refuse_over(problem, physical_memory(), where)

    def measure_env(self) -> dict[str, str]:
        return {"TRITON_INTERPRET": "1"}


BACKENDS = ("auto", "cuda", "interpret", "dryrun")


def check_gpus(backend: str, gpus: list[int] | None, ray: str | None = None) -> None:
    """Refuse the cuda backend on a machine without a GPU or without Triton's compiler tools (outside Ray), and
    `gpus` (--gpus) where nothing measures on named GPUs: a backend other than cuda (auto resolved as
    make_runner resolves it) or a Ray cluster, where Ray places the GPU actors."""
    import torch

    from kt.errors import DeviceError, option

    if backend == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"backend: cuda needs a CUDA GPU and this machine has none; use {option('backend', 'interpret')}"
        )
    measures = backend == "cuda" or (backend == "auto" and torch.cuda.is_available())
    missing = target_compiler_missing() if measures and ray is None else None  # Ray's nodes have their own
    if missing:  # else every candidate's compile failed, each reported as a crash to retry
        raise DeviceError(
            f"backend: cuda compiles each candidate before it times it, and {missing}; reinstall triton (its "
            "wheel ships ptxas and cuobjdump)"
        )
    if gpus is None:
        return
    if ray is not None:
        raise DeviceError(
            f"{option('gpus')}: with {option('ray')}, Ray chooses each GPU actor's GPU; drop {option('gpus')}"
        )
    if backend == "auto":
        backend = "cuda" if torch.cuda.is_available() else "interpret"
    if backend != "cuda":
        raise DeviceError(
            f"{option('gpus')}: the {backend} backend measures on no GPU; {option('gpus')} needs "
            f"{option('backend', 'cuda')}"
        )


def refuse_over(problem: Problem, have: int | None, where: str) -> None:
    """The DeviceError of a runner's `refuse_unfit` where `problem`'s operands (`operand_bytes`) exceed `have`
    bytes (None: not known, nothing refused), `where` naming that memory."""
    from kt.errors import DeviceError
    from kt.ir.problems import operand_bytes

    need = operand_bytes(problem)
    if have is not None and need > have:
        raise DeviceError(
            f"shape: the op's inputs, weights and output take {need / 2**30:.1f} GiB, more than the "
            f"{have / 2**30:.1f} GiB {where} before any workspace or check; give a smaller shape"
        )


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the OS does not say."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows), or no such name
        return None


def make_runner(
    backend: str, profile: DeviceProfile, ray: str | None = None, gpus: list[int] | None = None, **options
) -> Runner:
    """`backend`: cuda, interpret, dryrun, or auto (cuda when a GPU is present, else interpret). `ray`: run the
    workers as actors of that Ray cluster ("local": one started in this process; kt.autotune.raypool). `gpus`:
    the GPUs the cuda runner measures on (default: every visible GPU of cuda:0's model)."""
    from kt.codegen.emit import no_triton, triton_installed

    if ray is None and not triton_installed():  # (a Ray cluster's nodes have their own)
        from kt.errors import DeviceError

        raise DeviceError(no_triton("tuning"))
    check_gpus(backend, gpus, ray)
    if gpus is not None:
        options["gpus"] = gpus
    runner = _make_runner(backend, profile, **options)
    runner.ray = ray
    return runner


def _make_runner(backend: str, profile: DeviceProfile, **options) -> Runner:
    import torch

    from kt.errors import DeviceError

    if backend == "auto":
        backend = "cuda" if torch.cuda.is_available() else "interpret"
    if backend == "cuda":  # check_gpus has refused it on a machine without a GPU
        options.pop("compile_target", None)
        return CudaRunner(profile, **options)
    if backend == "dryrun":
        # one call after one warm-up, whatever the GPU would do; the cooldown and regime kept, and compile_target,
        # which DryRunner honours (it was dropped, and the regime recorded l2_flushed always)
        timing = options.pop("timing", None) or DRY_RUN_TIMING
        kept = {"cooldown_ms": timing.cooldown_ms, "regime": timing.regime}
        return DryRunner(profile, timing=dataclasses.replace(DRY_RUN_TIMING, **kept), **options)
    if backend == "interpret":
        from kt.errors import on_command_line

        if options.pop("timing", None) is not None:  # --cooldown-ms was dropped without a word
            logging.getLogger("kt").warning(
                f"{'--cooldown-ms' if on_command_line() else 'timing'} is not used by the interpret "
                "backend: nothing is timed without a GPU"
            )
        return InterpretRunner(profile, **options)
    raise DeviceError(f"backend: {backend!r} is not supported; allowed: {', '.join(BACKENDS)}")
