"""kdetect.pretrained.state_dict reads torch.save (zip and legacy) and safetensors files exactly as
torch wrote them, and turns every bad file into a one-line CheckpointError without running any
pickled code. Checkpoints come from a separate torch interpreter (tests/torch_peer.py)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch_peer import run_torch

from kdetect.plumbing.errors import CheckpointError
from kdetect.pretrained.state_dict import read_state_dict
from tests.pretrained_support import write_safetensors

MAKE_CHECKPOINTS = r"""
import argparse, os, sys
import numpy as np
import torch

out = sys.argv[1]
torch.manual_seed(0)
base = torch.arange(24, dtype=torch.float32) * 0.5
tensors = {
    "f32": torch.randn(3, 4),
    "f16": torch.randn(5).half(),
    "bf16": torch.randn(2, 3).to(torch.bfloat16),
    "f64": torch.randn(2, dtype=torch.float64),
    "i64": torch.arange(-3, 3),
    "i32": torch.tensor([-(2**31), 7], dtype=torch.int32),
    "i16": torch.tensor([-300, 300], dtype=torch.int16),
    "i8": torch.tensor([-128, 127], dtype=torch.int8),
    "u8": torch.tensor([0, 255], dtype=torch.uint8),
    "u16": torch.tensor([1, 65535]).to(torch.uint16),  # pickled via _rebuild_tensor_v3
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
    "transposed": torch.randn(3, 5).t(),
    "expanded": torch.tensor([1.0, 2.0, 3.0]).expand(2, 3),
    "view_a": base[2:8].view(2, 3),
    "view_b": base[10:22:2],
    "param": torch.nn.Parameter(torch.randn(2)),
}
assert tensors["view_a"].untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
assert not tensors["transposed"].is_contiguous()

model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
model(torch.randn(2, 3, 8, 8)).sum().backward()
# shaped like SGD(momentum=0.9).state_dict() after a step (torch.optim takes a second to import)
optimizer = {
    "state": {i: {"momentum_buffer": p.grad.clone()} for i, p in enumerate(model.parameters())},
    "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1, 2, 3], "foreach": None}],
}
module_sd = model.state_dict()
assert int(module_sd["1.num_batches_tracked"]) == 1

def save(obj, name, legacy=False):
    torch.save(obj, os.path.join(out, name), _use_new_zipfile_serialization=not legacy)

for legacy, suffix in ((False, "zip"), (True, "legacy")):
    save(tensors, f"tensors_{suffix}.pt", legacy)
    save(module_sd, f"module_{suffix}.pt", legacy)
    save({"epoch": 3, "name": "no tensors"}, f"no_tensors_{suffix}.pt", legacy)
    save(model, f"whole_module_{suffix}.pt", legacy)
args = argparse.Namespace(lr=0.02, data_path="/coco", epochs=26)
save({"model": module_sd, "optimizer": optimizer, "epoch": 3, "args": args},
     "wrapped_model_zip.pth")
save({"state_dict": module_sd, "epoch": 3}, "wrapped_state_dict_legacy.pth", legacy=True)
save({"w": torch.arange(4, dtype=torch.float32)}, "one_zip.pt")

def expected(sd):
    return {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
            for k, v in sd.items()}

np.savez(os.path.join(out, "tensors.npz"), **expected(tensors))
np.savez(os.path.join(out, "module.npz"), **expected(module_sd))
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torch_checkpoints")
    run_torch(MAKE_CHECKPOINTS, out)
    return out


def _expected(made: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(made / name) as npz:
        return {k: npz[k] for k in npz.files}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tensors_match_torch(made, fmt):
    got = read_state_dict(made / f"tensors_{fmt}.pt")
    _assert_same(got, _expected(made, "tensors.npz"))
    assert got["bf16"].dtype == np.float32 and got["bool"].dtype == np.bool_
    assert got["scalar"].shape == () and got["u16"].dtype == np.uint16
    got["view_a"][...] = -1  # copies, not views of one buffer
    assert got["view_b"].min() >= 0 and got["transposed"].flags.c_contiguous


@pytest.mark.parametrize(
    "name",
    ["module_zip.pt", "module_legacy.pt", "wrapped_model_zip.pth", "wrapped_state_dict_legacy.pth"],
)
def test_module_state_dicts_and_wrappers(made, name):
    got = read_state_dict(str(made / name))
    _assert_same(got, _expected(made, "module.npz"))
    assert got["1.num_batches_tracked"].dtype == np.int64


SAFETENSORS_ARRAYS = {
    "f32": ("F32", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
    "f16": ("F16", np.array([0.5, -2.0, 65504.0], np.float16)),
    "bf16": ("BF16", np.array([1.0, -0.15625, 2.0**100], np.float32)),
    "f64": ("F64", np.array([np.pi], np.float64)),
    "i64": ("I64", np.array([-(2**40), 5], np.int64)),
    "i32": ("I32", np.array([[1], [-2]], np.int32)),
    "u8": ("U8", np.array([0, 255], np.uint8)),
    "bool": ("BOOL", np.array([True, False])),
    "scalar": ("F32", np.array(4.25, np.float32)),
}


def _safetensors_file(path: Path) -> Path:
    arrays = dict(SAFETENSORS_ARRAYS)
    tag, bf16 = arrays["bf16"]
    arrays["bf16"] = (tag, (bf16.view(np.uint32) >> 16).astype(np.uint16))  # exact in bfloat16
    write_safetensors(path, arrays)
    return path


def test_safetensors(tmp_path):
    got = read_state_dict(_safetensors_file(tmp_path / "model.safetensors"))
    _assert_same(got, {k: a for k, (_, a) in SAFETENSORS_ARRAYS.items()})


def test_big_endian_zip(made, tmp_path):
    """A zip checkpoint whose byteorder record says "big" (written on a big-endian machine)."""
    target = tmp_path / "big.pt"
    with zipfile.ZipFile(made / "one_zip.pt") as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(info.filename, data)
    np.testing.assert_array_equal(read_state_dict(target)["w"], np.arange(4, dtype=np.float32))


# --- hand-made pickles, so tests can say what torch would never write ----------------------


def _op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _op_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor_pickle(
    numel: int, offset: int, size: tuple, stride: tuple, legacy_view: tuple | None = None
) -> bytes:
    """Protocol-2 pickle of {"w": _rebuild_tensor_v2(FloatStorage "0", offset, size, stride)}.

    ``legacy_view`` makes the persistent id legacy-style, with view metadata (key, offset, size)
    or, when empty, None.
    """
    pid = b"(" + _op_str("storage") + _op_global("torch", "FloatStorage") + _op_str("0")
    pid += _op_str("cpu") + _op_int(numel)
    if legacy_view is not None:
        key, start, count = legacy_view or ("0", None, None)
        pid += b"N" if start is None else b"(" + _op_str(key) + _op_int(start) + _op_int(count)
        pid += b"" if start is None else b"t"
    pid += b"tQ"
    args = b"(" + pid + _op_int(offset) + b"(" + b"".join(map(_op_int, size)) + b"t"
    args += b"(" + b"".join(map(_op_int, stride)) + b"t" + b"\x89}t"
    tensor = _op_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    return b"\x80\x02}(" + _op_str("w") + tensor + b"u."


def _zip_checkpoint(path: Path, pickled: bytes, storages: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return path


def _legacy_checkpoint(path: Path, pickled: bytes, storages: dict[str, bytes]) -> Path:
    """The legacy layout: magic, protocol, sys info, the object, storage keys, storage data."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    head = b"".join(pickle.dumps(v, 2) for v in (0x1950A86A20F9469CFC6C, 1001, info))
    data = b"".join(struct.pack("<q", len(v) // 4) + v for v in storages.values())
    path.write_bytes(head + pickled + pickle.dumps(list(storages), 2) + data)
    return path


@pytest.mark.parametrize(
    "view, want",
    [((), [[0, 2], [1, 3]]), (("1", 2, 4), [[2, 4], [3, 5]])],
    ids=["no_view", "storage_view"],
)
def test_hand_made_legacy_checkpoint_reads(tmp_path, view, want):
    """Legacy persistent ids carry view metadata (storages that are slices of others, torch<1.0)."""
    data = np.arange(6, dtype="<f4").tobytes()
    pickled = _tensor_pickle(6, 0, (2, 2), (1, 2), legacy_view=view)
    path = _legacy_checkpoint(tmp_path / "legacy.pt", pickled, {"0": data})
    np.testing.assert_array_equal(read_state_dict(path)["w"], want)


def test_hand_made_zip_checkpoint_reads(tmp_path):
    """The hand-made layout is sound, so the failures below are the ones they test."""
    data = np.arange(6, dtype="<f4").tobytes()
    path = _zip_checkpoint(tmp_path / "ok.pt", _tensor_pickle(6, 1, (2, 2), (1, 2)), {"0": data})
    np.testing.assert_array_equal(read_state_dict(path)["w"], [[1, 3], [2, 4]])


class _Evil:
    def __init__(self, command: str, call=os.system):
        self.command, self.call = command, call

    def __reduce__(self):
        return self.call, (self.command,)


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def _cut(made: Path, name: str, keep) -> bytes:
    data = (made / name).read_bytes()
    return data[: keep(len(data))]


def _drop_member(made: Path, name: str, member_part: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(made / name) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            if member_part not in info.filename:
                dst.writestr(info.filename, src.read(info))
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "JPEG")
    return buffer.getvalue()


def _other_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\x89HDF")
    return buffer.getvalue()


def _safetensors_cut(tmp_path: Path, keep) -> bytes:
    data = _safetensors_file(tmp_path / "full.safetensors").read_bytes()
    return data[: keep(data)]


# Each case: (file name, contents built from (made, tmp_path), part of the message). ``made()``
# gives the torch-made checkpoints' folder (only those cases need torch); contents ``None`` means
# no file, "DIR" a directory, "MADE" the torch-made file of that name.
BAD_INPUTS = {
    "missing": ("absent.pt", None, "no such"),
    "directory": ("adir.pt", "DIR", "directory"),
    "empty": ("empty.pt", lambda m, t: b"", "empty"),
    "jpeg": ("photo.pt", lambda m, t: _jpeg(), "not a PyTorch checkpoint"),
    "text": ("notes.pth", lambda m, t: b"hello checkpoint\n" * 20, "not a PyTorch checkpoint"),
    "zip_truncated": (
        "cut_zip.pt",
        lambda m, t: _cut(m(), "tensors_zip.pt", lambda n: n // 2),
        "zip",
    ),
    "zip_without_pickle": ("model.keras", lambda m, t: _other_zip(), "data.pkl"),
    "zip_storage_missing": (
        "nodata.pt",
        lambda m, t: _drop_member(m(), "one_zip.pt", "/data/0"),
        "missing",
    ),
    "zip_storage_short": (
        "short.pt",
        lambda m, t: _zip_checkpoint(
            t / "x", _tensor_pickle(6, 0, (6,), (1,)), {"0": b"\0" * 8}
        ).read_bytes(),
        "shorter",
    ),
    "zip_tensor_out_of_bounds": (
        "oob.pt",
        lambda m, t: _zip_checkpoint(
            t / "x", _tensor_pickle(4, 2, (100,), (1,)), {"0": b"\0" * 16}
        ).read_bytes(),
        "past the end",
    ),
    "legacy_truncated_pickle": (
        "cut_pickle.pt",
        lambda m, t: _cut(m(), "tensors_legacy.pt", lambda n: 300),
        "truncated",
    ),
    "legacy_truncated_data": (
        "cut_data.pt",
        lambda m, t: _cut(m(), "tensors_legacy.pt", lambda n: n - 5),
        "truncated",
    ),
    "plain_pickle": ("plain.pkl", lambda m, t: pickle.dumps({"a": 1}, 2), "not a torch.save"),
    "evil_plain_pickle": (
        "evil.pkl",
        lambda m, t: pickle.dumps(_Evil("true"), 2),
        "refusing to load posix.system",
    ),
    "whole_module_zip": ("whole_module_zip.pt", "MADE", "refusing to load torch.nn"),
    "whole_module_legacy": ("whole_module_legacy.pt", "MADE", "refusing to load torch.nn"),
    "no_tensors_zip": ("no_tensors_zip.pt", "MADE", "no tensors"),
    "no_tensors_legacy": ("no_tensors_legacy.pt", "MADE", "no tensors"),
    "zip_tensor_implausibly_large": (
        "huge.pt",
        lambda m, t: _zip_checkpoint(
            t / "x", _tensor_pickle(4, 0, (2**20, 2**20), (0, 0)), {"0": b"\0" * 16}
        ).read_bytes(),
        "implausibly large",
    ),
    "legacy_view_out_of_bounds": (
        "view.pt",
        lambda m, t: _legacy_checkpoint(
            t / "x", _tensor_pickle(6, 0, (2,), (1,), ("1", 5, 3)), {"0": b"\0" * 24}
        ).read_bytes(),
        "past the end",
    ),
    "legacy_bad_key_list": (
        "keys.pt",
        lambda m, t: _legacy_checkpoint(
            t / "x", _tensor_pickle(6, 0, (2,), (1,), ()), {"1": b"\0" * 24}
        ).read_bytes(),
        "storage key list",
    ),
    "safetensors_header_cut": (
        "head.safetensors",
        lambda m, t: _safetensors_cut(t, lambda d: 40),
        "header cut short",
    ),
    "safetensors_data_cut": (
        "data.safetensors",
        lambda m, t: _safetensors_cut(t, lambda d: len(d) - 3),
        "data cut short",
    ),
    "safetensors_length_only": ("len.safetensors", lambda m, t: b"\x10\0\0", "truncated"),
    "safetensors_bad_json": (
        "json.safetensors",
        lambda m, t: struct.pack("<Q", 5) + b"{oops",
        "corrupt",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_one_line_checkpoint_error(case, request, tmp_path):
    name, contents, message = BAD_INPUTS[case]
    path = tmp_path / name

    def made() -> Path:
        return request.getfixturevalue("made")

    if contents == "MADE":
        path = made() / name
    elif contents == "DIR":
        path.mkdir()
    elif contents is not None:
        path.write_bytes(_bytes(contents(made, tmp_path)))
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(path)
    text = str(caught.value)
    assert name in text and "\n" not in text
    assert message in text
    assert caught.value.__cause__ is None or isinstance(caught.value.__cause__, CheckpointError)


@pytest.mark.parametrize("call", [os.system, eval], ids=["os.system", "eval"])
def test_malicious_pickle_in_zip_layout_is_not_run(tmp_path, call):
    marker = tmp_path / "MARKER"
    command = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w')"
    evil = pickle.dumps({"w": _Evil(command, call)}, protocol=2)
    path = _zip_checkpoint(tmp_path / "evil.pt", evil, {"0": b"\0" * 16})
    with pytest.raises(CheckpointError, match="refusing to load") as caught:
        read_state_dict(path)
    assert "evil.pt" in str(caught.value) and call.__name__ in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("value", [np.nan, -np.inf], ids=["nan", "inf"])
def test_import_refuses_non_finite_tensors(value, tmp_path, capsys):
    """A checkpoint with a NaN or infinite weight imports nothing: one line naming the file and
    the first bad tensor (in the file's order), before any model is built."""
    from tests.train_support import kdetect

    bad = np.ones((3, 4), np.float32)
    bad[1, 2] = value
    weights = tmp_path / "bad.safetensors"
    write_safetensors(
        weights,
        {
            "backbone.body.conv1.weight": ("F32", np.ones((2, 3, 1, 1), np.float32)),
            "backbone.body.bn1.num_batches_tracked": ("I64", np.array(7, np.int64)),
            "roi_heads.box_predictor.cls_score.weight": ("F32", bad),
            "roi_heads.box_predictor.bbox_pred.weight": (
                "F32",
                np.full((12, 4), value, np.float32),
            ),
        },
    )
    output = tmp_path / "imported"
    assert kdetect("checkpoint", "import", weights, "--output", output) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: {weights}: tensor roi_heads.box_predictor.cls_score.weight holds NaN or "
        "infinite values (diverged or corrupt weights); refusing it"
    )
    assert not output.exists()
