"""Read a PyTorch checkpoint's tensors into NumPy arrays, without torch and without running code.

Three file formats are understood:

* ``torch.save``'s zip format (the default since torch 1.6): a zip archive with one top folder
  holding ``data.pkl`` (the pickled object), ``data/<key>`` (the raw bytes of each storage), and
  perhaps ``byteorder`` ("little" or "big") and ``version``.
* ``torch.save``'s legacy format (``_use_new_zipfile_serialization=False``, and many checkpoints
  published before 2020): a pickled magic number, protocol version and system info, then the
  pickled object, then a pickled list of storage keys, then for each key an 8-byte little-endian
  element count followed by that storage's little-endian bytes.
* ``.safetensors``: an 8-byte little-endian header length, a JSON header giving each tensor's
  dtype, shape and byte range, then the data.

Why not ``torch.load``: a pickle can name any Python callable and have it called while loading,
so loading an untrusted checkpoint can run arbitrary code (and it would make torch a dependency).
Here the unpickler resolves only an explicit allow-list of names (containers, torch's tensor
rebuild functions, storage types and dtypes), each mapped to kdetect's own stand-ins
(:mod:`kdetect.pretrained.torch_pickle`); tensors are rebuilt by NumPy from the storage bytes.
Anything else is refused with ``CheckpointError``.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from kdetect.plumbing.errors import CheckpointError
from kdetect.pretrained.torch_pickle import (
    DTYPES,
    Storage,
    TensorRef,
    materialise,
    one_line,
    select_tensors,
    storage_key,
    unpickle,
)

__all__ = ["read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")


def _read_zip(name: str, path: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(
            f"{name}: truncated or corrupt zip archive ({one_line(exc)})"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError(f"{name}: a zip file without <folder>/data.pkl, not torch.save's")
        prefix = pickles[0][: -len("data.pkl")]

        def read(member: str) -> bytes:
            try:
                return archive.read(member)
            except KeyError:
                raise CheckpointError(f"{name}: {member} missing from the archive") from None
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                ValueError,
                NotImplementedError,
                zlib.error,
            ) as exc:
                raise CheckpointError(
                    f"{name}: corrupt zip member {member} ({one_line(exc)})"
                ) from None

        byteorder = "little"
        if prefix + "byteorder" in archive.namelist():
            byteorder = read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{name}: unknown byteorder {byteorder!r:.20}")
        storages: dict[str, Storage] = {}

        def load_storage(pid) -> Storage:
            storage_type, key, numel, _ = storage_key(name, pid, legacy=False)
            if key not in storages:
                storage = Storage(storage_type.dtype, numel)
                storage.buffer = read(f"{prefix}data/{key}")
                if len(storage.buffer) < numel * storage.dtype.itemsize:
                    raise CheckpointError(f"{name}: storage {key} is shorter than its tensor data")
                storages[key] = storage
            return storages[key]

        obj = unpickle(name, io.BytesIO(read(prefix + "data.pkl")), load_storage)
        return {
            k: materialise(name, ref, byteorder) for k, ref in select_tensors(name, obj).items()
        }


def _read_legacy(name: str, path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as file:
        blob = file.read()  # in memory, so a corrupt length can only read to the end
    stream = io.BytesIO(blob)
    if unpickle(name, stream) != _LEGACY_MAGIC:
        raise CheckpointError(f"{name}: a pickle, but not a torch.save checkpoint (no magic)")
    version = unpickle(name, stream)
    if version != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{name}: unsupported legacy protocol version {version!r:.20}")
    unpickle(name, stream)  # system info: the data itself is always little-endian
    storages: dict[str, Storage] = {}

    def load_storage(pid) -> Storage:
        storage_type, key, numel, view = storage_key(name, pid, legacy=True)
        if key not in storages:
            storages[key] = Storage(storage_type.dtype, numel)
        if view is None:
            return storages[key]
        if not (
            isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])
        ):
            raise CheckpointError(f"{name}: malformed storage view {view!r:.80}")
        return storages[key].view(view[1], view[2])

    obj = unpickle(name, stream, load_storage)
    keys = unpickle(name, stream)
    if not isinstance(keys, list) or not all(isinstance(k, str) and k in storages for k in keys):
        raise CheckpointError(f"{name}: storage key list does not match the pickle")
    position = stream.tell()
    for key in keys:
        storage = storages[key]
        if position + 8 > len(blob):
            raise CheckpointError(f"{name}: truncated checkpoint (storage {key} missing)")
        (count,) = struct.unpack_from("<q", blob, position)
        if count != storage.numel:
            raise CheckpointError(f"{name}: storage {key} holds {count}, not {storage.numel}")
        storage.buffer, storage.offset = blob, position + 8
        position += 8 + count * storage.dtype.itemsize
        if position > len(blob):
            raise CheckpointError(f"{name}: truncated checkpoint (storage {key} cut short)")
    if any(s.buffer is None for s in storages.values()):
        raise CheckpointError(f"{name}: storage key list does not match the pickle")
    return {k: materialise(name, ref, "little") for k, ref in select_tensors(name, obj).items()}


_SAFETENSORS_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
}


def _read_safetensors(name: str, path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as file:
        blob = file.read()
    if len(blob) < 8:
        raise CheckpointError(f"{name}: truncated safetensors file (no header length)")
    (length,) = struct.unpack("<Q", blob[:8])
    if 8 + length > len(blob):
        raise CheckpointError(f"{name}: truncated safetensors file (header cut short)")
    try:
        header = json.loads(blob[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{name}: corrupt safetensors header ({one_line(exc)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: corrupt safetensors header (not a JSON object)")
    data = memoryview(blob)[8 + length :]
    tensors: dict[str, np.ndarray] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = DTYPES[_SAFETENSORS_DTYPES[entry["dtype"]]]
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            ok = all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{name}: bad safetensors entry for {key!r:.60}") from None
        if not ok or end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{name}: bad safetensors entry for {key!r:.60}")
        if end > len(data):
            raise CheckpointError(f"{name}: truncated safetensors file (data cut short)")
        ref = Storage(dtype, (end - begin) // dtype.itemsize)
        ref.buffer, ref.offset = data, begin
        contiguous = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        tensors[key] = materialise(name, TensorRef(ref, 0, shape, contiguous), "little")
    if not tensors:
        raise CheckpointError(f"{name}: no tensors found in the checkpoint")
    return tensors


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint (zip or legacy ``torch.save``, or ``.safetensors``).

    A checkpoint that wraps its state dict under "model" or "state_dict" gives that dict's
    tensors; non-tensor entries are skipped. bfloat16 comes back as float32. Raises
    ``CheckpointError`` (one line, naming the file) for anything that is not a readable checkpoint.
    """
    path = os.fspath(path)
    name = path
    if not os.path.exists(path):
        raise CheckpointError(f"{name}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{name}: a directory, not a checkpoint file")
    try:
        with open(path, "rb") as file:
            head = file.read(16)
        size = os.path.getsize(path)
    except OSError as exc:
        raise CheckpointError(f"{name}: cannot read ({one_line(exc)})") from None
    if not head:
        raise CheckpointError(f"{name}: empty file, not a checkpoint")
    if head.startswith(_ZIP_SIGNATURES):
        return _read_zip(name, path)
    if head.startswith(b"\x80"):
        return _read_legacy(name, path)
    declared = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
    if path.endswith(".safetensors") or (head[8:9] == b"{" and declared <= size - 8):
        return _read_safetensors(name, path)
    raise CheckpointError(f"{name}: not a PyTorch checkpoint (zip, legacy pickle or safetensors)")


def first_non_finite(arrays: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point array of ``(name, array)`` pairs holding NaN or
    infinity, ``None`` when every one is finite. Such weights make a model predict nothing (or
    garbage), so importing and loading refuse them."""
    for name, value in arrays:
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return name
    return None


NON_FINITE = "holds NaN or infinite values (diverged or corrupt weights); refusing it"
