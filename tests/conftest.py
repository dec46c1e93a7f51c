import os

import pytest
import torch

# Keep Triton's current default and silence its warning about 3.10 changing it.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from kt.codegen import FAMILIES, GemmConfig, load_source  # noqa: E402
from kt.ir import GemmProblem  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def kt_home(tmp_path_factory):
    """Every test run gets its own kernel cache and default database, never the user's."""
    home = tmp_path_factory.mktemp("kt-home")
    os.environ["KT_CACHE_DIR"] = str(home)
    os.environ["KT_DB"] = str(home / "tuning.db")
    return home


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def gemm_module(problem: GemmProblem, config: GemmConfig):
    """The generated module for (problem, config), imported for this machine (interpreter without a GPU)."""
    return load_source(FAMILIES["gemm"].render(problem, config))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((out.double() - ref).norm() / ref.norm())
