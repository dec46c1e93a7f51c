"""Device profiles: the limits and peaks that codegen (legality), the cost model (roofline) and autotune read.

The ground floor of kt: this module imports nothing of kt's. Built-in profiles come from the vendor's datasheets
(marked `source: datasheet`); `kt calibrate` measures a real card and writes a profile JSON that a spec or the
CLI can name instead (`device: path/to/profile.json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kt.errors import shown

# Peak keys: one per math path a kernel can take. "tf32" is fp32 operands on the tensor cores; "float32" the
# plain FMA path (what `input_precision="ieee"` gets).
PEAK_KEYS = ("float16", "bfloat16", "tf32", "float32")


class ProfileError(ValueError):
    """A device profile name is unknown or a profile file is malformed (kt wraps it into its DeviceError)."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str  # short id: "h100", "h200", or the name given at calibration
    gpu_name: str  # what the driver calls the card, e.g. "NVIDIA H100 80GB HBM3"
    sm_count: int
    smem_per_block: int  # bytes of shared memory one program may use (the opt-in maximum)
    smem_per_sm: int  # bytes
    regs_per_sm: int  # 32-bit registers
    max_regs_per_thread: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    l2_bytes: int
    dram_bandwidth: float  # bytes/s
    peak_flops: dict[str, float] = field(default_factory=dict)  # FLOP/s per PEAK_KEYS entry (dense math)
    tdp_w: float = 0.0  # W; 0: not known (a calibrated card whose NVML reports no power limit)
    compute_capability: int = 90  # 10 * major + minor: 90 is Hopper (sm_90)
    warp_size: int = 32
    source: str = "datasheet"  # "datasheet" or "calibrated on <date> with <command>"

    def peak(self, dtype: str, precision: str = "ieee") -> float:
        """Peak FLOP/s for operands of `dtype`; float32 uses the tensor cores only with precision tf32."""
        key = "tf32" if dtype == "float32" and precision == "tf32" else dtype
        return self.peak_flops[key]

    @property
    def acc_regs_limit(self) -> int:
        """Accumulator registers a thread may hold: half the register file, the rest is addresses and operands."""
        return (self.max_regs_per_thread + 1) // 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def smem_limit_text(self) -> str:
        """The per-program shared-memory limit in words: whole KiB, else bytes (100000 read "97 KiB")."""
        limit = self.smem_per_block
        return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"

    @property
    def label(self) -> str:
        """The name to show: the key where a calibrated profile bears a built-in's name (an A100 profile named
        h100 showed as "h100" in every heading, "h100 is sm_80" among them), else the name."""
        builtin = BUILTIN.get(self.name.lower())  # (one named "H100" is read as the built-in h100 too)
        return self.key if builtin is not None and builtin != self else self.name

    @property
    def key(self) -> str:
        """The name for a built-in profile, else the name plus a hash of every field (calibrated ones differ)."""
        if BUILTIN.get(self.name) == self:
            return self.name
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    @classmethod
    def from_dict(cls, data: dict, where: str = "profile") -> DeviceProfile:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ProfileError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f))
        if missing:
            raise ProfileError(f"{where}: missing key {missing[0]!r}")
        peaks = data.get("peak_flops", {})
        if not isinstance(peaks, dict) or set(peaks) != set(PEAK_KEYS):
            raise ProfileError(f"{where}: peak_flops must map exactly {', '.join(PEAK_KEYS)} to FLOP/s")
        for key, value in peaks.items():
            if not _in_range(value):
                raise ProfileError(f"{where}: peak_flops.{key} must be a number {RANGE}, got {value!r}")
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "tdp_w" and value == 0 and not isinstance(value, bool):
                continue  # not known: what `kt calibrate` records where NVML gives no power limit (it wrote 0.0,
                # which this check then refused: the calibration was lost)
            if f.type == "int" and not (_in_range(value) and isinstance(value, int)):
                raise ProfileError(f"{where}: {f.name} must be an integer {RANGE}, got {value!r}")
            if f.type == "float" and not _in_range(value):
                unknown = " (or 0: not known)" if f.name == "tdp_w" else ""
                raise ProfileError(f"{where}: {f.name} must be a number {RANGE}{unknown}, got {value!r}")
            if f.type == "str" and (not isinstance(value, str) or not value):
                raise ProfileError(f"{where}: {f.name} must be a non-empty string, got {value!r}")
        capability = data.get("compute_capability", 90)
        if capability not in CAPABILITIES:
            raise ProfileError(
                f"{where}: compute_capability must be 10 * major + minor of an NVIDIA GPU (80 for sm_80, 90 for "
                f"sm_90), one of {', '.join(map(str, CAPABILITIES))}: the architectures whose MMA kt's legality "
                f"and cost model know (mma.sync, wgmma); got {capability!r}"
            )
        regs = data.get("max_regs_per_thread", 255)
        if not 32 <= regs <= 255:  # 1 passed: "an accumulator over 0 registers per thread"
            raise ProfileError(
                f"{where}: max_regs_per_thread must be from 32 to 255 (255 on every GPU kt knows), got {regs!r}"
            )
        name = data.get("name")
        if isinstance(name, str) and (why := name_problem(name)):
            raise ProfileError(f"{where}: {why}")
        threads, regs_per_sm = data.get("max_threads_per_sm"), data.get("regs_per_sm")
        if isinstance(threads, int) and not (1024 <= threads <= 2048 and threads % 32 == 0):
            # 1 passed (less than a warp), and the occupancy estimate then ran one program per SM
            raise ProfileError(
                f"{where}: max_threads_per_sm must be a multiple of 32 from 1024 to 2048 (1536 or 2048 on every "
                f"GPU of {', '.join(map(str, CAPABILITIES))}), got {threads!r}"
            )
        if isinstance(regs_per_sm, int) and isinstance(threads, int) and regs_per_sm < 32 * threads:
            raise ProfileError(
                f"{where}: regs_per_sm must be at least 32 per thread of max_threads_per_sm ({32 * threads}; "
                f"65536 on every GPU of {', '.join(map(str, CAPABILITIES))}), got {regs_per_sm!r}"
            )
        if data.get("warp_size", 32) != 32:  # 64 passed: legality then counted half the registers per thread
            raise ProfileError(
                f"{where}: warp_size must be 32 (every NVIDIA GPU of {', '.join(map(str, CAPABILITIES))}; kt "
                f"compiles for 32-thread warps), got {data['warp_size']!r}"
            )
        block, per_sm = data.get("smem_per_block"), data.get("smem_per_sm")
        if block is not None and per_sm is not None and block > per_sm:  # made 240 KiB tiles legal
            raise ProfileError(
                f"{where}: smem_per_block ({block}) must not exceed smem_per_sm ({per_sm}): one program's "
                "shared memory lives on one SM"
            )
        # whole numbers where a float belongs are floats: 700 and 700.0 are one profile, and its key (the rows'
        # target, its model file's name) hashed them apart, so a profile pretty-printed by jq was another device
        floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
        data = {k: float(v) if k in floats else v for k, v in data.items()}
        if "peak_flops" in data:
            data["peak_flops"] = {k: float(v) for k, v in data["peak_flops"].items()}
        return cls(**data)


# Ampere (sm_80, sm_86, sm_87), Ada (sm_89) and Hopper (sm_90): kt reads tensor-core use as mma.sync below
# sm_90 and wgmma at sm_90. Blackwell (sm_100) builds use tcgen05.mma, which neither legality nor the cost
# model knows, and Triton gives sm_75 no mma.sync: profiles of those would be labelled wrong. The numbers
# between name no GPU (ptxas has no sm_85): a profile of one passed, then every build crashed.
CAPABILITIES = (80, 86, 87, 89, 90)
# Resident thread blocks per SM, which the driver does not report (CUDA C Programming Guide, "Technical
# Specifications per Compute Capability"): calibrate wrote 32 for every card it had no built-in of.
MAX_BLOCKS_PER_SM = {80: 32, 86: 16, 87: 16, 89: 24, 90: 32}


# Every number of a profile (counts, bytes, B/s, FLOP/s, W) lies in this range. Infinity passed once, then broke
# the cost model's features with a traceback; so did 1e40 SMs (over float32's range there), and 1e-300 B/s made
# every prediction inf. Real GPUs sit far inside it (an H100's fp16 peak: 9.9e14 FLOP/s).
LOWEST, HIGHEST = 1, 10**18
RANGE = f"from {LOWEST} to 1e18"


def _in_range(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and LOWEST <= value <= HIGHEST


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_KIB, _MIB = 1024, 1024 * 1024

# NVIDIA H100 SXM5 80GB datasheet: 989.4 TFLOP/s dense fp16/bf16, 494.7 tf32, 66.9 fp32; HBM3 3.35 TB/s;
# 132 SMs; 228 KiB shared memory per SM of which 227 KiB per block; 50 MiB L2; 700 W.
H100 = DeviceProfile(
    name="h100",
    gpu_name="NVIDIA H100 80GB HBM3",
    sm_count=132,
    smem_per_block=227 * _KIB,
    smem_per_sm=228 * _KIB,
    regs_per_sm=65536,
    max_regs_per_thread=255,
    max_threads_per_sm=2048,
    max_blocks_per_sm=32,
    l2_bytes=50 * _MIB,
    dram_bandwidth=3.35e12,
    peak_flops={"float16": 989.4e12, "bfloat16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    tdp_w=700.0,
)

# NVIDIA H200 SXM 141GB datasheet: the H100's compute with HBM3e at 4.8 TB/s. The L2 size is an assumption:
# NVIDIA's H200 datasheet does not state it; CUDA's device properties are commonly reported to give 60 for an H200
# in torch's print of them, whose "MB" is MiB (l2CacheSize / 2**20), as the H100's 50 is (52,428,800 bytes): it
# was taken as 60,000,000 bytes (the three H200 sessions of this project did not record it; `kt calibrate`, which
# reads it, has not run on one yet). Used only by the analytic model's reuse term.
H200 = dataclasses.replace(
    H100,
    name="h200",
    gpu_name="NVIDIA H200",
    l2_bytes=60 * _MIB,
    dram_bandwidth=4.8e12,
)

# NVIDIA H100 PCIe 80GB datasheet: 114 SMs; 756 TFLOP/s dense fp16/bf16 (1,513 with sparsity), 378 tf32, 51
# fp32; HBM2e 2.0 TB/s; 350 W.
H100_PCIE = dataclasses.replace(
    H100,
    name="h100-pcie",
    gpu_name="NVIDIA H100 PCIe",
    sm_count=114,
    dram_bandwidth=2.0e12,
    peak_flops={"float16": 756.0e12, "bfloat16": 756.0e12, "tf32": 378.0e12, "float32": 51.2e12},
    tdp_w=350.0,
)

# NVIDIA H100 NVL 94GB datasheet: 132 SMs; 835 TFLOP/s dense fp16/bf16 (1,671 with sparsity), 418 tf32, 60
# fp32; HBM3 3.9 TB/s; 400 W.
H100_NVL = dataclasses.replace(
    H100,
    name="h100-nvl",
    gpu_name="NVIDIA H100 NVL",
    dram_bandwidth=3.9e12,
    peak_flops={"float16": 835.5e12, "bfloat16": 835.5e12, "tf32": 417.5e12, "float32": 60.0e12},
    tdp_w=400.0,
)

# NVIDIA H200 NVL 141GB datasheet: the H100 NVL's compute with the H200's HBM3e at 4.8 TB/s; 600 W.
H200_NVL = dataclasses.replace(
    H100_NVL,
    name="h200-nvl",
    gpu_name="NVIDIA H200 NVL",
    l2_bytes=H200.l2_bytes,
    dram_bandwidth=4.8e12,
    tdp_w=600.0,
)

# NVIDIA A100 SXM4 80GB datasheet: 108 SMs; 312 TFLOP/s dense fp16/bf16, 156 tf32, 19.5 fp32; HBM2e 2.039 TB/s;
# 164 KiB shared memory per SM of which 163 KiB per block (166,912 bytes, what Inductor's A100 logs record); 40 MiB
# L2; 400 W; sm_80 (no warpgroup MMA: every tensor-core tile runs mma.sync). Which A100 variant Inductor's logs
# (../shared/data/autoheuristic) came from is not recorded: this profile is the assumption kt's A100 model uses.
A100 = DeviceProfile(
    name="a100",
    gpu_name="NVIDIA A100-SXM4-80GB",
    sm_count=108,
    smem_per_block=163 * _KIB,
    smem_per_sm=164 * _KIB,
    regs_per_sm=65536,
    max_regs_per_thread=255,
    max_threads_per_sm=2048,
    max_blocks_per_sm=32,
    l2_bytes=40 * _MIB,
    dram_bandwidth=2.039e12,
    peak_flops={"float16": 312e12, "bfloat16": 312e12, "tf32": 156e12, "float32": 19.5e12},
    tdp_w=400.0,
    compute_capability=80,
)

BUILTIN: dict[str, DeviceProfile] = {p.name: p for p in (H100, H200, H100_PCIE, H100_NVL, H200_NVL, A100)}
DEFAULT = "h100"

# What the driver calls each card (lower case, spaces removed) -> its profile. Matched whole, so a variant kt
# has no datasheet for (an H100 of another form factor, a GH200) is never taken for one it has.
_DRIVER_NAMES = {
    "nvidiah10080gbhbm3": "h100",  # SXM5
    "nvidiah100sxm5-80gb": "h100",
    "nvidiah100pcie": "h100-pcie",
    "nvidiah100nvl": "h100-nvl",
    "nvidiah200": "h200",  # SXM
    "nvidiah200nvl": "h200-nvl",
    "nvidiaa100-sxm4-80gb": "a100",
}
# Names that contain one of these are some variant of it: the nearest profile, used only as a stated guess.
_FAMILIES = {"h200": "h200", "h100": "h100", "a100": "a100"}


def get_profile(name_or_path: str | os.PathLike | None = None) -> DeviceProfile:
    """A built-in profile by name (`h100`, `h200`) or a calibrated one from a JSON file; None gives the default."""
    if name_or_path is None:
        return BUILTIN[DEFAULT]
    # one made in code (kt.build(spec, device=profile)), checked as a file's is (0 SMs gave NaN predictions,
    # compute capability 75 passed)
    if isinstance(name_or_path, DeviceProfile):
        return DeviceProfile.from_dict(name_or_path.to_dict(), "device")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ProfileError(
            f"expected {', '.join(BUILTIN)}, a profile .json file's path or a DeviceProfile, got "
            f"{type(name_or_path).__name__}"
        )
    key = str(name_or_path)
    # `--device=~/gpu.json`, which the shell leaves as it is, expanded (as kt's path options are)
    if key.startswith("~"):
        key = os.path.expanduser(key)
    if key.lower() in BUILTIN:
        return BUILTIN[key.lower()]
    path = Path(key)
    try:
        folder, there = path.is_dir(), path.exists()
    except OSError as exc:  # a name past the file system's limit (ENAMETOOLONG): a bare OSError in Python
        folder, there, why = False, False, exc.strerror
    else:
        why = None
    if key.lstrip().startswith("{") and not there:  # a profile written inline: taken for a file's name
        raise ProfileError(
            "a profile is read from a .json file, not from the command line: write the JSON to gpu.json and "
            "give gpu.json"
        )
    if why is not None:
        allowed = f"{', '.join(BUILTIN)} or a profile .json file"
        raise ProfileError(f"{shown(key)} is no profile ({why}); allowed: {allowed}")
    if key == "" or folder:  # Path("") is ".", a folder that exists
        raise ProfileError(
            f"{key!r} is {'empty' if key == '' else 'a folder'}; give {', '.join(BUILTIN)} or a profile .json file"
        )
    if key.endswith(".json") or there:
        return load_profile(path)
    raise ProfileError(
        f"unknown device profile {key!r}; allowed: {', '.join(BUILTIN)} or a profile .json file"
    )


def _driver_key(gpu_name: str) -> str:
    return gpu_name.lower().replace(" ", "")


def match_gpu(gpu_name: str) -> DeviceProfile | None:
    """The built-in profile of exactly the card the driver names `gpu_name` ("NVIDIA H100 PCIe" -> h100-pcie),
    or None (see `guess_gpu` for variants kt has no datasheet of)."""
    name = _DRIVER_NAMES.get(_driver_key(gpu_name))
    return BUILTIN[name] if name else None


def guess_gpu(gpu_name: str) -> DeviceProfile | None:
    """For a card kt has no profile of but whose family it knows (a GH200, another H100 form factor): the
    nearest built-in profile, to be used only with a warning that it is a guess. None for anything else, and for
    a MIG slice ("NVIDIA H100 80GB HBM3 MIG 1g.10gb"), a share of the board's SMs and bandwidth: it took the
    whole board's profile (132 SMs for a slice of 16)."""
    key = _driver_key(gpu_name)
    if re.search(r"\bmig\b", gpu_name.lower()):
        return None
    for family, name in _FAMILIES.items():
        if family in key:
            return BUILTIN[name]
    return None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a key given twice (json.loads keeps the last one)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def load_profile(path: str | os.PathLike) -> DeviceProfile:
    path = Path(path)
    if not path.is_file():
        what = (
            "is a folder, not a file"
            if path.is_dir()
            else "is not a regular file"  # /dev/null, a pipe: "not found"
            if path.exists()
            else "not found"
        )
        make = f" (make one with `kt calibrate --out {path}` on that GPU)" if not path.exists() else ""
        raise ProfileError(f"device profile file {str(path)!r} {what}{make}")
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"device profile {str(path)!r} is not valid JSON ({exc})") from None
    except _DuplicateKey as exc:  # json keeps the last value without a word, as op.yaml's reader does not
        raise ProfileError(
            f"device profile {str(path)!r}: {exc.args[0]!r} is given twice; give it once"
        ) from None
    # past 4,300 digits, nested past the recursion limit: tracebacks
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ProfileError(f"device profile {str(path)!r} is not valid JSON ({why})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"device profile {str(path)!r} must hold a JSON object")
    return DeviceProfile.from_dict(data, where=str(path))


def name_problem(name: str) -> str | None:
    """What is wrong with a profile's name, or None: it names kt's model files (`<key>.skops`), where a "/"
    reached into other folders. `kt calibrate --name` is checked before it measures."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        return None
    return f"name must be a letter or digit, then up to 63 letters, digits, _ . -, got {name!r}"


def save_profile(profile: DeviceProfile, path: str | os.PathLike) -> Path:
    """Write atomically: a crash leaves either the old file or the new one, never half of one. A profile that
    would not load back is refused first (minutes of `kt calibrate` were lost to one)."""
    from kt.files import atomic_write  # as every file kt writes for a user: the temporary file removed on an
    # error (ENOSPC left it, and named no file), the user's umask (mkstemp's 0600 stayed), a link written through

    DeviceProfile.from_dict(profile.to_dict(), f"{path}")
    atomic_write(path, lambda handle: handle.write(json.dumps(profile.to_dict(), indent=2) + "\n"))
    return Path(path)
