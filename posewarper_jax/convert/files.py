"""Reading weight files: ``.pth``/``.pt`` (PyTorch) and ``.npz`` files into ``{key: ndarray}``.

A file may hold the ``state_dict`` itself or a dict with a ``'state_dict'`` entry (training
checkpoints, mmpose's ``{'meta', 'state_dict', ...}``); a ``module.`` prefix on every key
(``nn.DataParallel``) is removed. ``.npz`` files holding the ``state_dict``'s arrays need no
PyTorch; ``.pth`` files are read with ``torch.load(weights_only=True)`` (numpy scalars and
arrays allowed, as mmpose's metadata holds them), or with full unpickling when asked
(``--unsafe-pickle``, trusted files only). A file that cannot be read raises
``WeightFileError`` naming the reason (empty, truncated, damaged, not a checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from posewarper_jax.convert.errors import WeightFileError

MODULE_PREFIX = "module."


def _to_numpy(value: Any) -> Any:
    """A torch tensor (duck-typed, torch is not imported here) or array-like -> ndarray."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        t = value.detach().cpu()
        # NumPy has no bfloat16: widen every non-native float (float32 is the target anyway).
        if t.is_floating_point() and str(t.dtype) not in ("torch.float32", "torch.float64"):
            t = t.float()
        return t.numpy()
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    return value  # rejected by _value_problems with its type


def prepare_state_dict(obj: Any, source: str | None = None) -> dict[str, Any]:
    """Unwrap a loaded checkpoint into ``{key: ndarray}``.

    Accepts a ``state_dict`` or a dict holding one under ``'state_dict'``; strips a
    ``module.`` prefix present on every key; torch tensors become NumPy arrays (non-native
    float dtypes such as bfloat16 widened to float32).

    Raises:
      ValueError: for an object that is not a mapping of string keys.
    """
    what = source if source is not None else "the checkpoint"
    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, Mapping):
        obj = obj.state_dict()  # a pickled nn.Module (only with full unpickling)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what}: expected a state_dict (a mapping), got {type(obj).__name__}")
    bad = [repr(k) for k in obj if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{what}: state_dict keys must be strings, got {', '.join(bad[:10])}")
    keys = list(obj)
    strip = bool(keys) and all(k.startswith(MODULE_PREFIX) for k in keys)
    return {(k[len(MODULE_PREFIX) :] if strip else k): _to_numpy(v) for k, v in obj.items()}


def _numpy_safe_globals() -> list:
    """NumPy scalar/array reconstruction, allowed in ``torch.load(weights_only=True)``."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray

    allowed: list = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # Files pickled under NumPy 1.x name these functions numpy.core.multiarray.*.
    allowed += [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return allowed


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_PROTO = 0x80  # the first opcode of a pickle of protocol 2 or later (torch's legacy)


def _zip_problem(path: str, kind: str) -> str | None:
    """Why the zip archive at ``path`` (torch's format or .npz) does not read, or None."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return (
            f"is truncated or damaged: a {kind} zip archive without its central directory "
            "(the file was cut short); fetch or copy it again"
        )
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # every member's CRC
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"is damaged ({kind} zip archive: {e}); fetch or copy it again"
    if bad is not None:
        return f"is damaged: member {bad!r} of its zip archive fails its CRC check; fetch it again"
    if kind == "torch" and not any(n.endswith("data.pkl") for n in names):
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        return f"is a zip archive but not a PyTorch checkpoint (no data.pkl; holds {shown})"
    return None


def _first_bytes(head: bytes) -> str:
    return " ".join(f"{b:02x}" for b in head[:8]) or "none"


def _read_npz(path: str, head: bytes) -> dict[str, Any]:
    if head.startswith(_NPY_MAGIC):
        raise WeightFileError(
            f"{path}: is a single .npy array, not an .npz archive of a state_dict (write one "
            "with np.savez(path, **{key: tensor.numpy() for key, tensor in state_dict.items()}))"
        )
    if not head.startswith(_ZIP_MAGIC):
        raise WeightFileError(
            f"{path}: is not an .npz archive (no zip header; first bytes {_first_bytes(head)})"
        )
    problem = _zip_problem(path, ".npz")
    if problem:
        raise WeightFileError(f"{path}: {problem}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise WeightFileError(
                f"{path}: holds object arrays (pickled Python objects), not plain numeric "
                "arrays; save the state_dict's tensors as NumPy arrays (tensor.numpy())"
            ) from e
        raise WeightFileError(f"{path}: cannot be read as .npz: {e}") from e
    except (OSError, EOFError) as e:
        raise WeightFileError(f"{path}: is damaged ({e}); fetch or copy it again") from e
    return prepare_state_dict(arrays, path)


def read_checkpoint(path: str | os.PathLike, unsafe_pickle: bool = False) -> dict[str, Any]:
    """Read a ``.pth``/``.pt`` (torch) or ``.npz`` file into ``{key: ndarray}`` (see
    ``prepare_state_dict``). PyTorch is imported here, only for torch files.

    The file is looked at before it is unpickled, so that the error says what is wrong: empty,
    truncated (a zip archive without its central directory, a pickle that ends early),
    damaged (a member failing its CRC check), not a checkpoint at all (neither torch's zip
    format nor a pickle), or a valid pickle holding objects other than tensors, the only case
    where ``--unsafe-pickle`` can help.

    Args:
      path: the file.
      unsafe_pickle: load torch files with full unpickling (``weights_only=False``), which
        can run code from the file: only for trusted files that the restricted loader
        refuses.

    Raises:
      WeightFileError: unreadable file, missing PyTorch, or a file that is not a state_dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"checkpoint file {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise WeightFileError(
            f"{path}: is empty (0 bytes); the download or copy did not finish, fetch it again"
        )
    if path.endswith(".npz"):
        return _read_npz(path, head)
    if head.startswith(_ZIP_MAGIC):
        problem = _zip_problem(path, "torch")
        if problem:
            raise WeightFileError(f"{path}: {problem}")
    elif head[0] != _PICKLE_PROTO:
        kind = "an .npy array" if head.startswith(_NPY_MAGIC) else "random or other data"
        raise WeightFileError(
            f"{path}: is not a PyTorch checkpoint (neither torch's zip format nor a pickle; "
            f"first bytes {_first_bytes(head)}: {kind})"
        )
    try:
        import torch
    except ImportError:
        raise WeightFileError(
            f"reading {path!r} needs PyTorch (pip install 'posewarper_jax[convert]'); "
            "without it, save the state_dict's arrays to an .npz file and convert that"
        ) from None
    try:
        if unsafe_pickle:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            # torch < 2.5 has no allow-list: its restricted loader then refuses NumPy values.
            safe = getattr(torch.serialization, "safe_globals", None)
            with safe(_numpy_safe_globals()) if safe else contextlib.nullcontext():
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a broken file; all are reported
        refused = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if refused and not unsafe_pickle:
            raise WeightFileError(
                f"{path!r} holds objects other than tensors, numbers, strings and NumPy "
                f"arrays (refused: {', '.join(refused)}), which the restricted loader does "
                "not unpickle; if you trust the file, convert with --unsafe-pickle "
                "(unsafe_pickle=True)"
            ) from e
        text = " ".join(str(e).split())
        if isinstance(e, EOFError) or "truncated" in text or "EOF" in text:
            raise WeightFileError(
                f"{path}: is truncated (the pickle ends early: {text or type(e).__name__}); "
                "fetch or copy it again"
            ) from e
        raise WeightFileError(
            f"{path}: cannot be read as a PyTorch checkpoint "
            f"({type(e).__name__}: {text[:200] or 'no message'})"
        ) from e
    return prepare_state_dict(obj, path)
