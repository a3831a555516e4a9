"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so it
loads with ``weights_only=True`` and cannot run code. It records how to rebuild its model
(``model_spec``: registry name, factory keywords, classes, input shape) and how its inputs were
normalized, so ``distill eval`` needs nothing but the file.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from distill.models import create_model
from distill.models.registry import ImportNotAllowedError

FORMAT = "distill.checkpoint/1"
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


TEMP_SUFFIX = ".tmp"
# ``.<target>.<8 random characters>.tmp``: the temporary files write_atomic makes (and, before it
# named them itself, tempfile.mkstemp made: 8 characters of [a-z0-9_])
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


class DiskFullError(OSError):
    """The disk (or the user's quota) was full while a file was written; the previous file is intact.
    ``errno`` is the original ``ENOSPC`` or ``EDQUOT``."""

    def __str__(self) -> str:
        return str(self.args[0])


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` beside ``path`` exclusively, with mode ``0o666`` less the
    umask (the mode ``open()`` gives any new file; ``mkstemp`` would give 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - 1 in 4 billion
            continue


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a crash leaves the previous file intact, never a half-written one.

    The file gets the usual mode of a new file (``0o666`` less the umask: 0644 under umask 022).
    A full disk or quota raises :class:`DiskFullError`, saying so, after removing the temporary
    file: the previous ``path``, if any, is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.errno in _DISK_FULL:
            kept = f"the previous {path} is intact" if path.exists() else f"nothing was written at {path}"
            err = DiskFullError(
                f"the disk is full (or the disk quota is used up) while writing {path} "
                f"({os.strerror(e.errno)}); {kept}. Free some space (or write elsewhere with --output-dir), "
                "then rerun: a training run continues from its last good checkpoint with --resume"
            )
            err.errno = e.errno
            raise err from e
        raise
    return path


def remove_orphan_temps(directory: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files a killed :func:`write_atomic` left in ``directory`` (only names of
    its own pattern, ``.<file>.<8 characters>.tmp``, for ``.pt``, ``.json``, ``.yaml`` and ``.npz``
    files); returns what was removed. Call it only where no other process is writing."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.rglob(f".*{TEMP_SUFFIX}") if recursive else directory.glob(f".*{TEMP_SUFFIX}"):
        m = _TEMP_NAME.match(p.name)
        if m and m["target"].endswith((".pt", ".json", ".yaml", ".npz")) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a crash leaves the previous file intact."""
    return write_atomic(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or contains non-allowed objects
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it may be truncated or not a distill checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a distill checkpoint (no 'model' entry)")
    return ckpt


def describe_spec(spec: dict[str, Any] | None) -> str:
    if not spec:
        return "an unrecorded model"
    kw = ", ".join(f"{k}={v}" for k, v in (spec.get("kwargs") or {}).items())
    return f"{spec.get('name')}({kw}) with {spec.get('num_classes')} classes, input {tuple(spec.get('in_shape') or ())}"


def load_model_weights(model: nn.Module, ckpt: dict[str, Any], path: str | Path = "<checkpoint>",
                       expected_spec: dict[str, Any] | None = None) -> None:
    """Load ``ckpt['model']`` into ``model``, explaining an architecture mismatch in words."""
    state = ckpt["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        saved = describe_spec(ckpt.get("model_spec"))
        wanted = describe_spec(expected_spec) if expected_spec else type(model).__name__
        details = []
        if wrong:
            details.append("shape mismatches: " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint {path} holds {saved}, which does not fit {wanted}: {'; '.join(details)}. "
            "Point the config at the model the checkpoint was trained with, or at the right checkpoint."
        )
    model.load_state_dict(state)


def build_model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, allow_import: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model recorded in a checkpoint and load its weights.

    The builder the file names must be a registered model (or one of the package's own builders):
    a builder given as an import path ``package.module:factory`` is refused unless ``allow_import``
    is True, because importing it runs code the file chose (as Hugging Face's ``trust_remote_code``).
    """
    ckpt = load_checkpoint(path, map_location)
    spec = ckpt.get("model_spec")
    if not spec or not spec.get("name"):
        raise CheckpointError(
            f"checkpoint {path} does not record its architecture (it was saved from a model passed in "
            "Python); build the model yourself and use distill.checkpoint.load_model_weights"
        )
    try:
        model = create_model(spec["name"], spec["num_classes"], tuple(spec["in_shape"]), allow_import=allow_import,
                             **(spec.get("kwargs") or {}))
    except ImportNotAllowedError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    load_model_weights(model, ckpt, path, spec)
    return model, ckpt
