"""kdetect's benchmark suite: one table.

    python -m benchmarks [--configs tiny resnet50_fpn imported_resnet50_fpn] [--repeats 3]
                         [--peer torchvision] [--peer-python /path/to/python-with-torchvision]
                         [--jit] [--mixed-precision mixed_float16|mixed_bfloat16] [--skip-data]
                         [--skip-export] [--malloc retain|system]

For each configuration (``tiny``: 128x128; ``resnet50_fpn``: 600x1000 inputs, network frame
608x1024, torchvision's ``min_size=600, max_size=1000``; ``imported_resnet50_fpn``, below):
inference latency at batch 1 and
throughput at batch 8 (``predict_on_batch`` on raw images), the training step at batch 2 (on a
batch already at the network frame) and its images/s, and the peak resident memory of the process
that ran them (each configuration runs in its own process, so the peaks do not mix). One more row
gives the input pipeline's images/s (benchmarks/data_pipeline.py, BCCD from ../shared/data in
training mode at the ResNet50 frame; the synthetic shapes when BCCD is absent). A second table
gives each configuration's exported-model latency, onnxruntime and LiteRT beside Keras
``predict`` at batch 1 (benchmarks/exported.py).

``--peer torchvision`` adds torchvision's ``fasterrcnn_resnet50_fpn`` on identical work
(benchmarks/peer_torchvision.py, random weights), measured in the same run, and the ratios
kdetect/torchvision (below 1 means kdetect is faster). torch is used in-process when importable,
else from ``--peer-python`` (torch is never a kdetect dependency). The peer process stays
resident and each kdetect step alternates with torchvision's same step; a ratio is the median of
the back-to-back pairs' ratios, so load changes on a shared machine cancel out.

``--configs imported_resnet50_fpn`` is torchvision's own model on both sides
(benchmarks/imported.py): torch writes one ``fasterrcnn_resnet50_fpn`` checkpoint
(tests/torchvision_reference.py make), kdetect imports it (``FasterRCNN.from_torchvision``), the
torchvision peer loads the same file (frozen batch norm, eps 0, ``trainable_backbone_layers=3``),
and both time the same photos (480x640, min_max resize to 800x1066, frame 800x1088) and the same
training images and boxes. ``imported_retinanet_resnet50_fpn``, ``imported_retinanet_resnet50_
fpn_v2``, ``imported_fcos_resnet50_fpn``, ``imported_ssd300_vgg16`` and ``imported_ssdlite320_
mobilenet_v3_large`` do the same for the single-stage builders (their checkpoints written by
tests/torchvision_dense_reference.py and tests/torchvision_ssd_reference.py; the same photos,
resized by min_max as above, or stretched to 300x300 / 320x320). These always run side by side,
with the torch interpreter found as for ``--peer`` or else the tests' (``KDETECT_TORCH_PYTHON``,
default ``.venv-torch``); their exported-model rows import the same kind of checkpoint.

``--malloc retain`` (the default) runs kdetect as the ``kdetect`` program does, with glibc keeping
freed memory (kdetect.plumbing.allocator), and gives the torchvision peer the same glibc settings;
``--malloc system`` keeps glibc's defaults for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the scripts import each other as top-level modules
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRAIN_BATCH = 2
THROUGHPUT_BATCH = 8


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _worker(args) -> None:
    """Measure one configuration in this process; print one JSON line.

    With ``--peer-python`` (ResNet50-FPN only) every kdetect step alternates with torchvision's
    same step (``common.side_by_side``), and the result also holds torchvision's medians
    (``peer``) and the medians of the per-pair ratios (``ratio``).
    """
    retain = args.malloc == "retain"
    if retain:  # as the kdetect program does, before TensorFlow starts its threads
        from kdetect.plumbing.allocator import retain_freed_memory

        retain_freed_memory()
    import keras
    import numpy as np
    from common import CONFIGS, Peer, build_model, random_batch, side_by_side

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    name = args.worker
    result: dict = {}
    height, width = CONFIGS[name]["input_size"]
    rng = np.random.default_rng(0)
    folder = None
    if "imported" in CONFIGS[name]:  # one checkpoint, both sides on the same photos
        import tempfile

        from imported import prepare

        folder = tempfile.TemporaryDirectory(prefix="kdetect-bench-")
        model, batch, photos, options, result["images"] = prepare(
            CONFIGS[name], args.train_batch, THROUGHPUT_BATCH, args.peer_python, folder.name
        )
        result["train_frame"] = list(model.image_size)
        peer = Peer.start(args.peer_python, retain, **options)
    else:
        peer = Peer.start(args.peer_python, retain) if args.peer_python else None
        model = build_model(name)
        batch = random_batch(args.train_batch, model.image_size)
        photos = rng.uniform(0, 255, (THROUGHPUT_BATCH, height, width, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), jit_compile=args.jit)

    def measure(key, fn, mode, batch_size):
        result[key], theirs, ratio = side_by_side(fn, peer, mode, batch_size, args.repeats)
        if peer is not None:
            result.setdefault("peer", {})[key] = theirs
            result.setdefault("ratio", {})[key] = ratio

    # Training first: measured after batch-8 inference in the same process, the step was
    # ~2x slower on the 2-core VM in two runs (32-37 s vs 16-18 s; cause not yet isolated).
    measure("train", lambda: model.train_on_batch(batch), "train", args.train_batch)
    for batch_size, key in ((1, "infer_b1"), (THROUGHPUT_BATCH, "infer_b8")):
        images = photos[:batch_size]
        measure(key, lambda x=images: model.predict_on_batch(x), "inference", batch_size)
    if peer is not None:
        peer.close()
    if folder is not None:
        folder.cleanup()
    result["rss_mib"] = _peak_rss_mib()
    print(json.dumps(result), flush=True)


def _child(argv: list[str]) -> dict:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(HERE.parent))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {argv[2:]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _self_argv(python: str, *extra: str) -> list[str]:
    return [python, str(HERE / "__main__.py"), *extra]


def _peer_python(args) -> str | None:
    import importlib.util

    if importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
        return sys.executable
    return args.peer_python


def _torch_python(args) -> str | None:
    """The interpreter that writes and runs the imported checkpoint: as ``_peer_python``, else
    the tests' torch interpreter (``KDETECT_TORCH_PYTHON``, default ``.venv-torch``)."""
    found = _peer_python(args)
    if found:
        return found
    default = os.environ.get("KDETECT_TORCH_PYTHON") or str(HERE.parent / ".venv-torch/bin/python")
    return default if os.access(default, os.X_OK) else None


def pipeline_rate(image_size: tuple[int, int], batch_size: int, images: int) -> tuple[str, float]:
    """Training-mode input pipeline images/s (data_pipeline.py's own measurement)."""
    from data_pipeline import DEFAULT_DATA, images_per_second

    from kdetect.data.pipeline import make_dataset

    if (DEFAULT_DATA / "ImageSets").is_dir():
        from kdetect.data.readers import read_annotations

        source = read_annotations("voc", DEFAULT_DATA, "train", on_invalid_box="drop")
        label = "BCCD folder"
    else:
        from kdetect.data.shapes import make_shapes

        source = make_shapes(64, image_size=image_size, seed=0)
        label = "synthetic shapes"
    dataset = make_dataset(source, image_size, batch_size, training=True, seed=0)
    return label, images_per_second(dataset, batch_size, images)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--configs", nargs="+", default=["tiny", "resnet50_fpn"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median) per number")
    parser.add_argument("--peer", choices=["torchvision"], default=None)
    parser.add_argument("--peer-python", default=None, help="interpreter with torch+torchvision")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    parser.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--train-batch", type=int, default=TRAIN_BATCH, help="train step batch")
    parser.add_argument("--skip-data", action="store_true", help="no input-pipeline row")
    parser.add_argument(
        "--skip-export", action="store_true", help="no exported-model (ONNX, TFLite) table"
    )
    parser.add_argument(
        "--malloc",
        choices=["retain", "system"],
        default="retain",
        help="retain: glibc keeps freed memory (as the kdetect program runs; the peer gets the "
        "same settings); system: glibc's defaults for both",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.malloc == "retain":  # this process measures the input pipeline
        from kdetect.plumbing.allocator import retain_freed_memory

        retain_freed_memory()
    if args.peer_python and not args.peer:
        args.peer = "torchvision"

    from common import CONFIGS

    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    peer_python = _peer_python(args) if args.peer else None
    if args.peer and not peer_python:
        print("note: torch/torchvision not importable and no --peer-python; no peer column")
    imported = [c for c in args.configs if "imported" in CONFIGS[c]]
    torch_python = _torch_python(args) if imported else None
    if imported and not torch_python:
        parser.error(
            f"{imported[0]} needs a Python with torch and torchvision: --peer-python, or "
            "KDETECT_TORCH_PYTHON, or .venv-torch"
        )

    started = time.perf_counter()
    results = _measure_configs(args, peer_python, torch_python, imported)
    rows = _model_rows(args, results, imported)
    if not args.skip_data:
        print("measuring the input pipeline ...", file=sys.stderr, flush=True)
        frame = CONFIGS["resnet50_fpn"]["model"]["image_size"]
        label, rate = pipeline_rate(tuple(frame), THROUGHPUT_BATCH, 160)
        frame_s = "x".join(str(s) for s in frame)
        rows.append(
            [f"input pipeline ({label}, train aug)", frame_s, "-", f"{rate:.1f}"] + ["-"] * 6
        )
        results["pipeline_images_per_s"] = rate
    _print_main_table(args, rows, time.perf_counter() - started)
    if not args.skip_export:
        import exported

        print("measuring the exported models ...", file=sys.stderr, flush=True)
        argv = [sys.executable, str(HERE / "exported.py"), "--configs", *args.configs, "--json"]
        argv += [f"--torch-python={torch_python}"] if torch_python else []
        results["exported"] = _child([*argv, f"--repeats={max(args.repeats, 3)}"])
        exported.print_results(results["exported"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _measure_configs(args, peer_python, torch_python, imported: list[str]) -> dict[str, dict]:
    """Each configuration measured in its own worker process (so peak memory does not mix)."""
    flags = [f"--repeats={args.repeats}", f"--train-batch={args.train_batch}"]
    flags.append(f"--malloc={args.malloc}")
    flags += ["--jit"] if args.jit else []
    if args.mixed_precision:
        flags.append(f"--mixed-precision={args.mixed_precision}")
    results: dict[str, dict] = {}
    for name in args.configs:
        print(f"measuring kdetect {name} ...", file=sys.stderr, flush=True)
        extra = [f"--peer-python={peer_python}"] if name == "resnet50_fpn" and peer_python else []
        extra = [f"--peer-python={torch_python}"] if name in imported else extra
        results[name] = _child(_self_argv(sys.executable, f"--worker={name}", *flags, *extra))
    return results


def _model_rows(args, results: dict[str, dict], imported: list[str]) -> list[list[str]]:
    """One table row per configuration, and one for its torchvision peer when measured."""
    from common import CONFIGS

    def ratio(key: str, name: str) -> str:
        ratios = results[name].get("ratio")
        return f"{ratios[key]:.2f}x" if ratios else "-"

    rows = []
    for name in args.configs:
        r = results[name]
        size = "x".join(str(s) for s in CONFIGS[name]["input_size"])
        rows.append(
            [
                f"kdetect {name}",
                size,
                f"{r['infer_b1']:.3f}",
                f"{THROUGHPUT_BATCH / r['infer_b8']:.2f}",
                f"{r['train']:.3f}",
                f"{args.train_batch / r['train']:.2f}",
                f"{r['rss_mib']:.0f}",
                ratio("infer_b1", name),
                ratio("infer_b8", name),
                ratio("train", name),
            ]
        )
        if "peer" in r:
            p = r["peer"]
            same = " (same checkpoint)" if name in imported else ""
            arch = CONFIGS[name].get("imported", "fasterrcnn_resnet50_fpn")
            rows.append(
                [
                    f"torchvision {arch}{same}",
                    size,
                    f"{p['infer_b1']:.3f}",
                    f"{THROUGHPUT_BATCH / p['infer_b8']:.2f}",
                    f"{p['train']:.3f}",
                    f"{args.train_batch / p['train']:.2f}",
                    "-",
                    "1.00x",
                    "1.00x",
                    "1.00x",
                ]
            )
    return rows


def _print_main_table(args, rows: list[list[str]], seconds: float) -> None:
    from common import machine, print_table

    mode = " · XLA" if args.jit else ""
    mode += f" · {args.mixed_precision}" if args.mixed_precision else ""
    mode += f" · malloc {args.malloc}"
    print_table(
        f"kdetect benchmarks{mode} · {machine()} · {time.strftime('%Y-%m-%d')} · {seconds:.0f} s",
        [
            "what",
            "input",
            "latency b1 (s)",
            f"images/s b{THROUGHPUT_BATCH}",
            f"train step b{args.train_batch} (s)",
            "train images/s",
            "peak RSS (MiB)",
            "ratio b1",
            f"ratio b{THROUGHPUT_BATCH}",
            "ratio train",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
