"""Shared fixtures. Real data lives in ../shared (never copied into the repo)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COSETTLE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path to ../shared. Missing in CI is a failure, not a skip (CI always has it)."""
    if not (SHARED / "data").is_dir():
        msg = f"shared data folder missing: {SHARED}/data"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must provide ../shared)")
        pytest.skip(msg)
    return SHARED


@pytest.fixture(scope="session")
def davis_dir(shared_dir) -> Path:
    return shared_dir / "data" / "davis480" / "horsejump-high"


@pytest.fixture
def small_clip() -> np.ndarray:
    """A tiny deterministic clip: (6, 48, 64, 3) uint8, a textured square moving right 2 px/frame."""
    rng = np.random.default_rng(0)
    bg = (rng.random((48, 80, 3)) * 255).astype(np.uint8)
    frames = [np.roll(bg, 2 * t, axis=1)[:, :64] for t in range(6)]
    return np.stack(frames)



@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` threads inside the block, the previous count restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


# A fit is bit-reproducible at a fixed seed and thread count only (docs/tracking.md: 1 vs 2 threads differ). A test that
# compares a fit bit for bit with one made elsewhere (a child process that runs 1 thread) requests this;
# nothing sets the thread count for the whole session.
@pytest.fixture
def one_torch_thread():
    with torch_threads(1) as n:
        yield n
