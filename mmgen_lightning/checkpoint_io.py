"""Checkpoint files that are never half-written and never run code when loaded.

:class:`AtomicCheckpointIO` is the ``CheckpointIO`` plugin the ``mmgen`` command gives every
Trainer. Lightning's ``TorchCheckpointIO`` buffers the whole checkpoint in memory and, on a local
disk, lets fsspec write it to the system temp folder and *move* it into place; when that folder is
on another file system the move is a copy, so a crash mid-copy leaves a truncated ``last.ckpt``
behind. Here the checkpoint streams into a temporary file beside its target, is flushed to disk,
and replaces the target with one ``os.replace`` (atomic on POSIX and Windows): a reader sees the
old file or the new one, never a mixture. Object-store paths (``s3://`` ...) keep Lightning's
behaviour, as an object upload is already all-or-nothing.

Loading always uses ``torch.load(weights_only=True)``, also when resuming with
``--ckpt_path``: a checkpoint that needs arbitrary pickles (a pickled class, a lambda) is refused
with an error naming the file, instead of running code from it.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then ``os.replace``-s it into place;
    loads with ``weights_only=True`` only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local files, got {storage_options!r}")
        save_atomically(checkpoint, path)
        return None

    def load_checkpoint(self, path: str | Path, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(f"{path}: mmgen-lightning loads checkpoints with weights_only=True only")
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return load_weights_only(path, map_location)


def save_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a temporary file in ``path``'s folder and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    # the rename itself is durable only once the folder's entry is on disk
    if hasattr(os, "O_DIRECTORY"):
        folder = os.open(target.parent, os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def load_weights_only(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` (local or fsspec path), with an error naming the file
    when it holds something other than tensors and plain containers."""
    try:
        return pl_load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as error:
        raise ValueError(f"{path}: refusing to load this checkpoint with weights_only=True: it is truncated or "
                         f"needs arbitrary pickles, which could run code ({error})") from error


_SIZE_MISMATCH = re.compile(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                            r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: ((?:\"[^\"]+\"(?:, )?)+)")


def state_dict_mismatch(message: str) -> str | None:
    """The first difference in torch's ``load_state_dict`` error (which lists every one, a line each) as a
    phrase, with how many more there are; ``None`` when ``message`` is not such an error.

    Parsed from the message because Lightning loads the state dict inside ``Trainer.fit``, after the
    family's ``on_load_checkpoint`` may have converted an older checkpoint: only the error sees what was
    really compared."""
    if not message.startswith("Error(s) in loading state_dict for"):
        return None
    sizes = _SIZE_MISMATCH.findall(message)
    keys = {kind: re.findall(r"\"([^\"]+)\"", names) for kind, names in _KEYS.findall(message)}
    count = len(sizes) + sum(len(names) for names in keys.values())
    if sizes:
        name, stored, built = sizes[0]
        first = f"{name} has shape ({stored}) in the checkpoint but ({built}) in the model"
    elif keys.get("Missing"):
        first = f"the model's {keys['Missing'][0]} is not in the checkpoint"
    elif keys.get("Unexpected"):
        first = f"the checkpoint's {keys['Unexpected'][0]} is not in the model"
    else:
        return None
    return first + (f" (and {count - 1} more differences)" if count > 1 else "")
