"""Reading untrusted files without running code from them, and writing files atomically.

Every data set and checkpoint may come from the internet, so nothing here lets a file choose what
code runs: pickles go through :class:`RestrictedUnpickler` (plain containers and numpy arrays only),
``torch.load`` always uses ``weights_only=True``, and safetensors headers are checked before the
library parses them. Errors are the project's :class:`~normfree.errors.CheckpointError` /
:class:`~normfree.errors.DataError` with one line naming the file.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import tempfile
from pathlib import Path
from typing import IO, Any

from .errors import CheckpointError, NormfreeError

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    # protocol-2 pickles store bytes as latin-1 text plus a call of _codecs.encode that turns them back
    ("_codecs", "encode"),
}
_PLAIN = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "complex")} | {
    ("collections", "OrderedDict"), ("__builtin__", "set")}
ALLOWED_GLOBALS = frozenset(_NUMPY_GLOBALS | _PLAIN)
"""``(module, name)`` pairs a pickle may reference: constructors of containers and numpy arrays."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` only resolves :data:`ALLOWED_GLOBALS` (numpy's ``dtype`` objects
    are accepted under ``numpy.dtypes`` names too), so a crafted file cannot call ``os.system`` & co."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            import importlib

            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"it references {module}.{name}, which a data file never needs "
                                     "(only containers and numpy arrays are allowed)")


def restricted_load(fh: IO[bytes], source: str | os.PathLike, error: type[NormfreeError] = CheckpointError,
                    encoding: str = "ASCII") -> Any:
    """Unpickle ``fh`` with :class:`RestrictedUnpickler`; any failure is one ``error`` line naming ``source``."""
    try:
        return RestrictedUnpickler(fh, encoding=encoding).load()
    except Exception as err:  # noqa: BLE001 - nothing from the file ran, so any failure means a bad file
        raise error(f"refusing to load {os.fspath(source)}: not a plain pickle of arrays: "
                    f"{type(err).__name__}: {one_line(err)}") from None


def one_line(err: BaseException | str) -> str:
    """An exception's message on one line (library messages sometimes span several)."""
    return " ".join(str(err).split())


MAX_SAFETENSORS_HEADER = 100 * 2**20


def check_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed JSON header of a safetensors file, after checking its framing (8-byte length, a header
    that fits in the file, a JSON object whose tensors lie inside the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file ({size} bytes, too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise CheckpointError(f"{path} is not a safetensors file or is truncated (header length {n} "
                                  f"with {size} bytes in the file)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    data = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise CheckpointError(f"{path} is truncated or corrupt: tensor {key!r} lies outside the file")
    return header


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a validated safetensors file (torch tensors on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {one_line(err)}") from None


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` (tensors and containers only) with one-line errors."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as err:
        text = one_line(err)
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.I)
        why = f"it references {found.group(1)}, which weights never need" if found else text.split(". ")[0]
        raise CheckpointError(f"cannot load {os.fspath(path)} as a torch state dict: {why}") from None


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, fsync it, then rename it over ``path``:
    a crash mid-write leaves the previous file intact. Temp names are ``.NAME.*.tmp``
    (see :func:`clean_stale_temps`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def clean_stale_temps(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Remove the temp files of writes to ``names`` in ``folder`` that a killed process left behind."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
