"""Software versions recorded with every measurement and artifact (read without importing Triton)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def software_versions() -> dict[str, str | None]:
    import torch

    from kt import __version__

    return {
        "kt": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton") or _version("pytorch-triton"),
        "cuda": torch.version.cuda,
    }
