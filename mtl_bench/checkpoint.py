"""Atomic, verified checkpoint files that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and Python primitives: no ``DictConfig`` (stored as a container),
no numpy arrays.  It is written to ``<name>.tmp`` in the same directory, flushed, fsync'ed and renamed
over the target, so an interruption never leaves a truncated file under the checkpoint's name.

**Integrity.**  The SHA-256 of the file's bytes is computed while it is written and stored beside it as
``<name>.sha256`` in ``sha256sum`` format (``sha256sum -c last.pt.sha256`` checks it by hand).
:func:`load_checkpoint` verifies the digest before unpickling anything: a flipped byte, a truncated or a
replaced file, or a checkpoint without its digest, is a :class:`CheckpointError` naming the file and the way
out — never a file silently loaded and later called "good".  Order of the writes: data ``.tmp`` and digest
``.tmp`` (both fsync'ed), then data renamed, then digest renamed, then the directory fsync'ed; a crash between
the two renames leaves the new digest in ``<name>.sha256.tmp``, which the loader accepts when it matches.

**Full disk.**  An ``OSError`` while writing (``ENOSPC`` and the like) removes the temporary files and raises
:class:`StorageError` (one line: the file, the cause); the previous checkpoint under the same name is untouched.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from mtl_bench.errors import CheckpointError, storage_error

log = logging.getLogger(__name__)

DIGEST_SUFFIX = ".sha256"


def digest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


class _HashingWriter:
    """A binary file that hashes what is written through it (torch.save writes sequentially)."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha = f, hashlib.sha256()
        self.error: OSError | None = None  # torch's zip writer reports a failed write as a RuntimeError

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _tmp(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place."""
    return path.with_name(path.name + ".tmp")


def _write_synced(path: Path, write: Any) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError as e:  # a cleanup failure must not hide the error being reported
            log.warning("could not remove %s: %s", p, e)


def previous_path(path: str | os.PathLike) -> Path:
    """``last.pt`` -> ``last.prev.pt``: the checkpoint :func:`save_checkpoint` replaced (``keep_previous``)."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def _keep_previous(path: Path) -> None:
    """Hard-link the current ``path`` as the previous checkpoint, with a digest file naming it (no copy: the old bytes
    stay on disk until the next rotation).  A file system without hard links keeps no previous checkpoint."""
    digests = _expected_digests(path)[:1]
    if not path.is_file() or not digests:
        return
    prev = previous_path(path)
    tmp = _tmp(prev)
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        log.warning("no previous checkpoint kept beside %s (hard links unavailable: %s)", path, e.strerror or e)
        return
    os.replace(tmp, prev)
    sidecar = digest_path(prev)
    _write_synced(_tmp(sidecar), lambda f: f.write(f"{digests[0]}  {prev.name}\n".encode()))
    os.replace(_tmp(sidecar), sidecar)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, keep_previous: bool = False) -> Path:
    """Write ``state`` to ``path`` atomically with its digest; ``keep_previous``: the checkpoint it replaces stays as
    ``<stem>.prev<suffix>`` (a way out if the newest one is ever damaged).  :class:`StorageError` (temporary files
    removed, the previous checkpoint intact) when the disk is full or the folder unwritable."""
    path = Path(path)
    tmp, sidecar = _tmp(path), digest_path(path)
    sidecar_tmp = _tmp(sidecar)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        hashing: list[_HashingWriter] = []

        def write_state(f: BinaryIO) -> None:
            hashing.append(_HashingWriter(f))
            try:
                torch.save(state, hashing[0])
            except RuntimeError:
                if hashing[0].error is not None:  # the file write underneath failed (e.g. ENOSPC)
                    raise hashing[0].error from None
                raise

        _write_synced(tmp, write_state)
        line = f"{hashing[0].sha.hexdigest()}  {path.name}\n".encode()
        _write_synced(sidecar_tmp, lambda f: f.write(line))
        if keep_previous:
            _keep_previous(path)
        os.replace(tmp, path)
        os.replace(sidecar_tmp, sidecar)
        _fsync_dir(path.parent)
    except OSError as e:
        remove_quietly(tmp, sidecar_tmp)
        raise storage_error(path, e) from None
    except BaseException:  # e.g. a second Ctrl-C while writing: leave no temporary file behind
        remove_quietly(tmp, sidecar_tmp)
        raise
    return path


def _expected_digests(path: Path) -> list[str]:
    out = []
    for candidate in (digest_path(path), _tmp(digest_path(path))):
        try:
            text = candidate.read_text().split()
        except OSError:
            continue
        if text:
            out.append(text[0].lower())
    return out


def way_out(path: Path) -> str:
    """What a user can do about an unusable checkpoint: start over, or an earlier verified copy if one is kept."""
    previous = previous_path(path)
    hint = "start over with trainer.resume=never"
    if previous.is_file():
        hint += f", or resume from the previous checkpoint with trainer.resume={previous}"
    return hint


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror or e}); {way_out(path)}") from None


def read_verified(path: str | os.PathLike) -> bytes:
    """The bytes of ``path`` after checking them against its ``.sha256`` digest (:class:`CheckpointError` if absent,
    unreadable or different)."""
    path = Path(path)
    data = _read_bytes(path)
    expected = _expected_digests(path)
    if not expected:
        raise CheckpointError(
            f"checkpoint {path} has no digest file {digest_path(path).name} (written by an older mtl_bench, or copied without "
            f"it), so its integrity cannot be verified; {way_out(path)}"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual not in expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({len(data)} bytes, SHA-256 differs from {digest_path(path).name}: truncated or "
            f"modified after it was written); {way_out(path)}"
        )
    return data


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, verified first; ``verify=False`` for files from elsewhere
    (a user-supplied source checkpoint without a digest): then only a file that cannot be unpickled is an error."""
    path = Path(path)
    data = read_verified(path) if verify else _read_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({first}); {way_out(path)}") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
