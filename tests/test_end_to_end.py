"""End to end: train the tiny detector on synthetic shapes from scratch, then score it.

This is the test that proves the model learns: recipe -> tf.data -> FasterRCNN.fit -> saved run
-> evaluation with the project's VOC evaluator, cross-checked with pycocotools' AP at IoU 0.5.
"""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# About 400 Adam steps of 4 images at 128x128: ~2 minutes on 2 CPU cores.
OVERRIDES = [
    "data.shapes.num_train=512",
    "data.shapes.num_val=64",
    "data.batch_size=4",
    "train.epochs=1",
    "train.steps_per_epoch=400",
    "train.optimizer.lr=0.002",
    "train.schedule.warmup_steps=30",
    "eval.every=0",
    "train.checkpoint.best=val_loss",
    "eval.samples=0",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from kdetect.recipes import train

    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    return train(ROOT / "recipes" / "shapes.yaml", run_dir=run_dir, overrides=OVERRIDES)


def test_tiny_detector_learns_shapes(trained_run):
    from kdetect.evaluation.saved import evaluate_saved_model

    metrics = evaluate_saved_model(trained_run, metric="voc07", batch_size=16, progress=False)
    print("shapes voc07 mAP", metrics["mAP"], metrics["per_class"])
    assert metrics["num_images"] == 64
    assert metrics["mAP"] >= 0.5
    assert all(ap >= 0.3 for ap in metrics["per_class"].values())


def test_pycocotools_agrees_on_ap50(trained_run):
    from kdetect.evaluation.saved import evaluate_saved_model

    coco = evaluate_saved_model(trained_run, metric="coco", batch_size=16, progress=False)
    voc = evaluate_saved_model(trained_run, metric="voc", batch_size=16, progress=False)
    print("shapes coco", {k: round(v, 3) for k, v in coco.items() if isinstance(v, float)})
    assert coco["AP50"] >= 0.5
    # Different interpolation (101-point vs area) and IoU >= vs > 0.5: close, not equal.
    assert abs(coco["AP50"] - voc["mAP"]) < 0.1
    assert np.isfinite(coco["AP"]) and coco["AP"] > 0.2
