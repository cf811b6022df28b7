"""Verified torch files: written atomically with a ``<file>.blake2b`` checksum written last, read only when the
bytes match it. The one helper for checkpoints, cached refined features and any other torch state that a killed
run, a full disk or a copied-in file could leave truncated."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..hashing import checksum_path, verify_checksum, write_checksum
from .atomic import atomic_path


def save_verified(obj: Any, path: str | Path) -> None:
    """``torch.save`` into ``path`` atomically; the checksum sidecar is removed first and written last, so a file
    without a matching one is always treated as incomplete."""
    path = Path(path)
    checksum_path(path).unlink(missing_ok=True)  # never a stale checksum beside a new file
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    write_checksum(path)


def load_verified(path: str | Path) -> Any:
    """The object saved by ``save_verified`` (tensors and plain data only: ``weights_only=True``); ValueError
    saying why when the file does not match its checksum."""
    why = verify_checksum(path)
    if why is not None:
        raise ValueError(why)
    return torch.load(path, map_location="cpu", weights_only=True)


def remove_verified(path: str | Path) -> None:
    """Delete a file and its checksum sidecar."""
    Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)
