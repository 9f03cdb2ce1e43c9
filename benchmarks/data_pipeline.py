"""Images per second of kdetect's input pipeline (decode + augment + resize/pad + batch).

Reads BCCD (../shared/data/bccd by default) two ways -- the VOC folder directly (Pillow decode
in parallel ``map``) and TFRecords written by ``kdetect dataset transform`` (TensorFlow decode) --
in training mode (shuffle + flip + scale jitter/crop + colour jitter) and evaluation mode, and
prints a table. ``--model-step`` also times one training step of a ResNet50 backbone (a lower
bound on the cost of a ResNet50-FPN Faster R-CNN step) at the same size, for the "pipeline
must be >= 10x faster than training" check.

    python benchmarks/data_pipeline.py [--data-dir DIR] [--image-size 640] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd"
COLOUR = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.02}


def images_per_second(dataset, batch_size: int, min_images: int) -> float:
    """Iterate (after one warm-up batch) until ``min_images`` have passed; return the rate."""
    iterator = iter(dataset)
    next(iterator)
    seen, start = 0, time.perf_counter()
    while seen < min_images:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(dataset)
            continue
        seen += int(batch["images"].shape[0])
    return seen / (time.perf_counter() - start)


def model_step_rate(image_size: int, batch_size: int, steps: int = 3) -> float:
    """Images/s of a ResNet50 backbone forward+backward pass (random weights)."""
    import keras
    import tensorflow as tf

    backbone = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    optimizer = keras.optimizers.SGD(0.01)
    images = tf.random.uniform((batch_size, image_size, image_size, 3), 0, 255)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(backbone(x, training=True))
        grads = tape.gradient(loss, backbone.trainable_variables)
        optimizer.apply_gradients(zip(grads, backbone.trainable_variables, strict=True))
        return loss

    step(images)
    start = time.perf_counter()
    for _ in range(steps):
        step(images).numpy()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=600, help="images timed per row")
    parser.add_argument("--model-step", action="store_true", help="also time ResNet50 training")
    args = parser.parse_args()

    import tensorflow as tf

    from kdetect.data.pipeline import make_dataset
    from kdetect.data.readers import read_annotations
    from kdetect.data.tfrecord import transform_dataset

    annotations = read_annotations("voc", args.data_dir, args.split, on_invalid_box="drop")
    size = (args.image_size, args.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        transform_dataset(
            "voc", args.data_dir, [args.split], Path(tmp) / "records", shards=4,
            on_invalid_box="drop",
        )  # fmt: skip
        transform_s = time.perf_counter() - start
        sources = {"folder (Pillow)": annotations, "tfrecord": Path(tmp) / "records"}
        modes = {
            "train: flip+scale/crop": dict(training=True, augment=None),
            "train: + colour jitter": dict(training=True, augment=COLOUR),
            "eval: resize+pad": dict(training=False),
        }
        for source_name, source in sources.items():
            for mode_name, kwargs in modes.items():
                dataset = make_dataset(
                    source, size, args.batch_size, seed=0, split=args.split, **kwargs
                )
                rate = images_per_second(dataset, args.batch_size, args.images)
                rows.append((source_name, mode_name, rate))
                print(f"  {source_name}, {mode_name}: {rate:.1f} images/s", flush=True)

    print(
        f"\nkdetect input pipeline, {args.data_dir.name} {args.split} ({len(annotations)} "
        f"images), {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{os.cpu_count()} CPU cores, TF {tf.__version__}"
    )
    print(f"transform to 4 TFRecord shards: {transform_s:.1f} s")
    print(f"{'source':<18} {'mode':<24} {'images/s':>9}")
    print("-" * 53)
    for source_name, mode_name, rate in rows:
        print(f"{source_name:<18} {mode_name:<24} {rate:9.1f}")
    if args.model_step:
        rate = model_step_rate(args.image_size, min(args.batch_size, 2))
        slowest = min(r for _, m, r in rows if m.startswith("train"))
        print(f"\nResNet50 backbone train step: {rate:.2f} images/s")
        print(f"slowest training pipeline / model step: {slowest / rate:.0f}x")


if __name__ == "__main__":
    main()
