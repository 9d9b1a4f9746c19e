"""Atomic, checksummed files: nothing stored is ever half-written or used silently when damaged.

Every file is written to a temporary name in the same directory, flushed to disk and renamed into
place, so a reader sees the old file or the new one, never a mix. Tensor files (``.pt``) start with
a header holding their size and sha256; :func:`load_tensors` refuses a file that does not match it,
and unpickles tensors and plain containers only (``weights_only=True``), so that a crafted file
with a valid header never runs code. torch is imported by the two tensor functions only, so that
reading a run's JSON files (``mexit runs list``) does not wait for it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any


_MAGIC = "mexit-ckpt-v1"


class CorruptCheckpointError(RuntimeError):
    """A stored checkpoint is truncated, altered or not a mexit checkpoint."""


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it 0600): a shared store stays readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, value: Any) -> None:
    """``value`` as JSON, atomically, as ``{"sha256": ..., "value": ...}``: the hash of the value's
    canonical JSON, which :func:`read_json` checks (a changed digit is noticed, not used)."""
    plain = json.loads(json.dumps(value, default=str))  # what a reader gets back
    record = {"sha256": _json_digest(plain), "value": plain}
    write_bytes_atomic(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """The value :func:`write_json` stored; raises :class:`CorruptCheckpointError` naming the file
    when it does not parse or its value no longer matches its sha256."""
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise CorruptCheckpointError(f"{path}: does not parse ({str(error)[:80]}); remove it to recompute") from None
    if not isinstance(record, dict) or set(record) != {"sha256", "value"}:
        raise CorruptCheckpointError(f"{path}: not a mexit JSON file (no sha256 and value); remove it to recompute")
    if _json_digest(record["value"]) != record["sha256"]:
        raise CorruptCheckpointError(f"{path}: its content no longer matches its sha256; remove it to recompute")
    return record["value"]


def _json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def save_tensors(path: Path, value: Any) -> None:
    """``torch.save`` ``value`` atomically, behind a header holding its size and sha256."""
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    payload = buffer.getvalue()
    header = f"{_MAGIC} {len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    write_bytes_atomic(path, header + payload)


def load_tensors(path: Path) -> Any:
    """Load what :func:`save_tensors` wrote, after checking its size and hash."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    header, _, payload = path.read_bytes().partition(b"\n")
    fields = header.decode(errors="replace").split(" ")
    if len(fields) != 3 or fields[0] != _MAGIC or not fields[1].isdigit():
        raise CorruptCheckpointError(f"{path} is not a mexit checkpoint (bad header); remove it to retrain")
    size, digest = int(fields[1]), fields[2]
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptCheckpointError(
            f"{path} is corrupted ({len(payload)} bytes, expected {size} with sha256 {digest[:12]}...); "
            "remove it (mexit runs remove KEY) to retrain"
        )
    import torch

    try:  # tensors and plain containers only: a stored file never runs code, whatever its checksum says
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CorruptCheckpointError(
            f"{path} holds more than tensors and plain values, which mexit never writes; refused without running it "
            f"({str(error).splitlines()[0][:120]}); remove it to retrain"
        ) from None


def load_or_quarantine(path: Path) -> Any | None:
    """What :func:`load_tensors` reads at ``path``; ``None`` if there is no file there.

    A damaged file is reported on stderr and moved aside to ``<name>.corrupt`` (kept for
    inspection, never used), and ``None`` is returned so that the caller recomputes it.
    """
    if not path.exists():
        return None
    try:
        return load_tensors(path)
    except CorruptCheckpointError as error:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        print(f"mexit: {error}; moved it to {aside.name} and recomputing", file=sys.stderr, flush=True)
        return None
