"""torch.save's pickled tensors, unpickled without torch and without running code.

A pickle can name any Python callable and have it called while loading, so the unpickler here
resolves only an explicit allow-list of names (containers, torch's tensor rebuild functions,
storage types and dtypes), each mapped to a stand-in: a rebuilt tensor is a :class:`TensorRef`
(storage, offset, size, stride), and :func:`materialise` turns it into a NumPy array from the
storage's bytes once the reader has them (:mod:`kdetect.pretrained.state_dict`). Anything else,
and every malformed record, is refused with ``CheckpointError``.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

from kdetect.plumbing.errors import CheckpointError

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


DTYPES = {
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
    name: _StorageType(name, DTYPES[dtype] if dtype else None)
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


class Storage:
    """One storage: ``numel`` elements of ``dtype`` from byte ``offset`` of ``buffer`` (or of its
    ``root`` storage's buffer, for the legacy format's storage views)."""

    def __init__(self, dtype: _DType, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.buffer: bytes | memoryview | None = None
        self.offset = 0
        self.root: Storage | None = None

    def view(self, offset: int, numel: int) -> Storage:
        """A storage over part of this one (legacy storage views), sharing its buffer."""
        part = Storage(self.dtype, numel)
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


class TensorRef:
    """A tensor to rebuild once its storage's bytes are read."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_):
    return TensorRef(storage, storage_offset, size, stride, dtype)


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
    **{("torch", name): dtype for name, dtype in DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED`` names; storages come from ``load_storage``."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[tuple], Storage] | None = None):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if module == "__builtin__":
            module = "builtins"
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(one_line(f"{module}.{name}")[:120]) from None

    def persistent_load(self, pid):
        if self._load_storage is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._load_storage(pid)


class _Refused(Exception):
    """A pickle asked for a name outside the allow-list."""


def one_line(exc: object) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def unpickle(name: str, file: BinaryIO, load_storage=None):
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
        raise CheckpointError(f"{name}: corrupt checkpoint pickle ({one_line(exc)})") from None


def storage_key(name: str, pid, legacy: bool) -> tuple[_StorageType, str, int, Any]:
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


def materialise(name: str, ref: TensorRef, byteorder: str) -> np.ndarray:
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
        isinstance(storage, Storage)
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
        raise CheckpointError(f"{name}: cannot rebuild a tensor ({one_line(exc)})") from None
    if dtype.name == "bfloat16":
        return (out.astype(np.uint32) << 16).view(np.float32)
    if dtype.name == "bool":
        return out != 0
    return out


def select_tensors(name: str, obj) -> dict[str, TensorRef]:
    """The model's tensors: the checkpoint itself, or its "model" / "state_dict" entry."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, TensorRef) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, TensorRef)}
    if not tensors:
        raise CheckpointError(f"{name}: no tensors found in the checkpoint")
    return tensors
