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
rebuild functions, storage types and dtypes), each mapped to kdetect's own stand-ins; tensors are
rebuilt by NumPy from the storage bytes. Anything else is refused with ``CheckpointError``.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

from kdetect.errors import CheckpointError

__all__ = ["read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
# A tensor may repeat its storage's bytes (stride 0, e.g. from expand()) up to this factor, or be
# any size up to the second bound: a few bytes of pickle must not ask for terabytes.
_MAX_EXPANSION = 1024
_ALWAYS_ALLOWED_BYTES = 1 << 30


class _DType:
    """A torch dtype as NumPy sees its bytes (bfloat16 is read as uint16, bool as uint8)."""

    def __init__(self, name: str, code: str):
        self.name = name
        self.code = code
        self.itemsize = np.dtype(code).itemsize

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_DTYPES = {
    name: _DType(name, code)
    for name, code in [
        ("float32", "f4"),
        ("float16", "f2"),
        ("bfloat16", "u2"),
        ("float64", "f8"),
        ("int64", "i8"),
        ("int32", "i4"),
        ("int16", "i2"),
        ("int8", "i1"),
        ("uint8", "u1"),
        ("bool", "u1"),
        ("uint16", "u2"),
        ("uint32", "u4"),
        ("uint64", "u8"),
    ]
}


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class; ``dtype`` is None for TypedStorage itself."""

    def __init__(self, name: str, dtype: _DType | None):
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_STORAGE_TYPES = {
    name: _StorageType(name, _DTYPES[dtype] if dtype else None)
    for name, dtype in [
        ("FloatStorage", "float32"),
        ("HalfStorage", "float16"),
        ("BFloat16Storage", "bfloat16"),
        ("DoubleStorage", "float64"),
        ("LongStorage", "int64"),
        ("IntStorage", "int32"),
        ("ShortStorage", "int16"),
        ("CharStorage", "int8"),
        ("ByteStorage", "uint8"),
        ("BoolStorage", "bool"),
        ("UntypedStorage", "uint8"),
        ("TypedStorage", None),
    ]
}


class _Storage:
    """One storage: ``numel`` elements of ``dtype`` from byte ``offset`` of ``buffer`` (or of its
    ``root`` storage's buffer, for the legacy format's storage views)."""

    def __init__(self, dtype: _DType, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.buffer: bytes | memoryview | None = None
        self.offset = 0
        self.root: _Storage | None = None

    def view(self, offset: int, numel: int) -> _Storage:
        """A storage over part of this one (legacy storage views), sharing its buffer."""
        part = _Storage(self.dtype, numel)
        part.root, part.offset = self, offset * self.dtype.itemsize
        return part

    def data(self) -> tuple[bytes | memoryview, int]:
        """The buffer and this storage's byte offset in it."""
        if self.root is not None:
            buffer, offset = self.root.data()
            return buffer, offset + self.offset
        if self.buffer is None:
            raise CheckpointError("storage data missing")  # the readers fill every storage
        return self.buffer, self.offset


class _TensorRef:
    """A tensor to rebuild once its storage's bytes are read."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_):
    return _TensorRef(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, *_):
    return data


class _Opaque:
    """Inert stand-in for plain records a checkpoint may carry (``argparse.Namespace``)."""

    def __setstate__(self, state):
        self.state = state


def _encode(text, encoding="latin1"):
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, "latin1")``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("unexpected _codecs.encode arguments")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    # MultiStepLR's state (torchvision's reference training script saves it beside the model)
    ("collections", "Counter"): Counter,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _STORAGE_TYPES["UntypedStorage"],
    ("torch.storage", "TypedStorage"): _STORAGE_TYPES["TypedStorage"],
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _encode,
    ("argparse", "Namespace"): _Opaque,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
    **{("torch", name): dtype for name, dtype in _DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED`` names; storages come from ``load_storage``."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[tuple], _Storage] | None = None):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if module == "__builtin__":
            module = "builtins"
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(_one_line(f"{module}.{name}")[:120]) from None

    def persistent_load(self, pid):
        if self._load_storage is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._load_storage(pid)


class _Refused(Exception):
    """A pickle asked for a name outside the allow-list."""


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _unpickle(name: str, file: BinaryIO, load_storage=None):
    """One pickle from ``file``; every failure becomes a CheckpointError naming ``name``."""
    try:
        return _Unpickler(file, load_storage).load()
    except _Refused as exc:
        raise CheckpointError(
            f"refusing to load {exc} from {name}: not a tensor or plain container "
            "(checkpoints are read without running pickled code)"
        ) from None
    except CheckpointError:
        raise
    except EOFError:
        raise CheckpointError(f"{name}: truncated checkpoint (pickle data cut short)") from None
    except Exception as exc:  # whatever a hostile pickle triggers is a bad file
        raise CheckpointError(f"{name}: corrupt checkpoint pickle ({_one_line(exc)})") from None


def _storage_key(name: str, pid, legacy: bool) -> tuple[_StorageType, str, int, Any]:
    """Check a ``('storage', type, key, location, numel[, view])`` persistent id."""
    size = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage"):
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise CheckpointError(f"{name}: holds a whole pickled nn.Module, not a state dict")
        raise CheckpointError(f"{name}: unexpected persistent id in pickle: {pid!r:.80}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, _StorageType) or storage_type.dtype is None:
        raise CheckpointError(f"{name}: unsupported storage type {storage_type!r:.80}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"{name}: malformed storage reference {pid!r:.80}")
    return storage_type, key, numel, pid[5] if legacy else None


def _materialise(name: str, ref: _TensorRef, byteorder: str) -> np.ndarray:
    """Rebuild one tensor from its storage with its offset, size and stride (all in elements)."""
    storage, offset, size, stride = ref.storage, ref.offset, ref.size, ref.stride
    dtype = ref.dtype if ref.dtype is not None else getattr(storage, "dtype", None)
    ints = (
        isinstance(offset, int)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
    )
    if not (
        isinstance(storage, _Storage)
        and isinstance(dtype, _DType)
        and ints
        and len(size) == len(stride)
    ):
        raise CheckpointError(f"{name}: malformed tensor record")
    if dtype is not storage.dtype and storage.dtype is not _STORAGE_TYPES["UntypedStorage"].dtype:
        raise CheckpointError(f"{name}: a {dtype!r} tensor on a {storage.dtype!r} storage")
    buffer, start = storage.data()
    nbytes = storage.numel * storage.dtype.itemsize
    if start + nbytes > len(buffer):
        raise CheckpointError(f"{name}: a storage view reaches past the end of its storage")
    itemsize = dtype.itemsize
    file_dtype = np.dtype(dtype.code).newbyteorder("<" if byteorder == "little" else ">")
    out_bytes = math.prod(size) * itemsize
    if out_bytes > max(nbytes * _MAX_EXPANSION, _ALWAYS_ALLOWED_BYTES):
        raise CheckpointError(f"{name}: a tensor of shape {size!r:.80} is implausibly large")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if out_bytes and (last + 1) * itemsize > nbytes:
        raise CheckpointError(f"{name}: a tensor reaches past the end of its storage")
    try:
        if out_bytes == 0:
            out = np.zeros(size, dtype.code)
        else:
            flat = np.frombuffer(buffer, file_dtype, nbytes // itemsize, start)
            strides = [s * itemsize for s in stride]
            strided = as_strided(flat[offset:], size, strides, writeable=False)
            out = strided.astype(np.dtype(dtype.code), order="C", copy=True)
    except (ValueError, MemoryError) as exc:  # e.g. more dimensions than NumPy allows
        raise CheckpointError(f"{name}: cannot rebuild a tensor ({_one_line(exc)})") from None
    if dtype.name == "bfloat16":
        return (out.astype(np.uint32) << 16).view(np.float32)
    if dtype.name == "bool":
        return out != 0
    return out


def _select(name: str, obj) -> dict[str, _TensorRef]:
    """The model's tensors: the checkpoint itself, or its "model" / "state_dict" entry."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, _TensorRef) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, _TensorRef)}
    if not tensors:
        raise CheckpointError(f"{name}: no tensors found in the checkpoint")
    return tensors


def _read_zip(name: str, path: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(
            f"{name}: truncated or corrupt zip archive ({_one_line(exc)})"
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
                    f"{name}: corrupt zip member {member} ({_one_line(exc)})"
                ) from None

        byteorder = "little"
        if prefix + "byteorder" in archive.namelist():
            byteorder = read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{name}: unknown byteorder {byteorder!r:.20}")
        storages: dict[str, _Storage] = {}

        def load_storage(pid) -> _Storage:
            storage_type, key, numel, _ = _storage_key(name, pid, legacy=False)
            if key not in storages:
                storage = _Storage(storage_type.dtype, numel)
                storage.buffer = read(f"{prefix}data/{key}")
                if len(storage.buffer) < numel * storage.dtype.itemsize:
                    raise CheckpointError(f"{name}: storage {key} is shorter than its tensor data")
                storages[key] = storage
            return storages[key]

        obj = _unpickle(name, io.BytesIO(read(prefix + "data.pkl")), load_storage)
        return {k: _materialise(name, ref, byteorder) for k, ref in _select(name, obj).items()}


def _read_legacy(name: str, path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as file:
        blob = file.read()  # in memory, so a corrupt length can only read to the end
    stream = io.BytesIO(blob)
    if _unpickle(name, stream) != _LEGACY_MAGIC:
        raise CheckpointError(f"{name}: a pickle, but not a torch.save checkpoint (no magic)")
    version = _unpickle(name, stream)
    if version != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{name}: unsupported legacy protocol version {version!r:.20}")
    _unpickle(name, stream)  # system info: the data itself is always little-endian
    storages: dict[str, _Storage] = {}

    def load_storage(pid) -> _Storage:
        storage_type, key, numel, view = _storage_key(name, pid, legacy=True)
        if key not in storages:
            storages[key] = _Storage(storage_type.dtype, numel)
        if view is None:
            return storages[key]
        if not (
            isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])
        ):
            raise CheckpointError(f"{name}: malformed storage view {view!r:.80}")
        return storages[key].view(view[1], view[2])

    obj = _unpickle(name, stream, load_storage)
    keys = _unpickle(name, stream)
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
    return {k: _materialise(name, ref, "little") for k, ref in _select(name, obj).items()}


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
        raise CheckpointError(f"{name}: corrupt safetensors header ({_one_line(exc)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: corrupt safetensors header (not a JSON object)")
    data = memoryview(blob)[8 + length :]
    tensors: dict[str, np.ndarray] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _DTYPES[_SAFETENSORS_DTYPES[entry["dtype"]]]
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            ok = all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{name}: bad safetensors entry for {key!r:.60}") from None
        if not ok or end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{name}: bad safetensors entry for {key!r:.60}")
        if end > len(data):
            raise CheckpointError(f"{name}: truncated safetensors file (data cut short)")
        ref = _Storage(dtype, (end - begin) // dtype.itemsize)
        ref.buffer, ref.offset = data, begin
        contiguous = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        tensors[key] = _materialise(name, _TensorRef(ref, 0, shape, contiguous), "little")
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
        raise CheckpointError(f"{name}: cannot read ({_one_line(exc)})") from None
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
