"""End to end: train the tiny detector on synthetic shapes from scratch, then score it.

This is the test that proves the model learns: recipe -> tf.data -> FasterRCNN.fit -> saved run
-> evaluation with the project's VOC evaluator, cross-checked with pycocotools' AP at IoU 0.5.
"""

import numpy as np
import pytest

from tests.train_support import trained_shapes_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return trained_shapes_run(tmp_path_factory)


def test_tiny_detector_learns_shapes(trained_run):
    from kdetect.engine.evaluate_run import evaluate_saved_model

    metrics = evaluate_saved_model(trained_run, metric="voc07", batch_size=16, progress=False)
    print("shapes voc07 mAP", metrics["mAP"], metrics["per_class"])
    assert metrics["num_images"] == 64
    assert metrics["mAP"] >= 0.5
    assert all(ap >= 0.3 for ap in metrics["per_class"].values())


def test_pycocotools_agrees_on_ap50(trained_run):
    from kdetect.engine.evaluate_run import evaluate_saved_model

    coco = evaluate_saved_model(trained_run, metric="coco", batch_size=16, progress=False)
    voc = evaluate_saved_model(trained_run, metric="voc", batch_size=16, progress=False)
    print("shapes coco", {k: round(v, 3) for k, v in coco.items() if isinstance(v, float)})
    assert coco["AP50"] >= 0.5
    # Different interpolation (101-point vs area) and IoU >= vs > 0.5: close, not equal.
    assert abs(coco["AP50"] - voc["mAP"]) < 0.1
    assert np.isfinite(coco["AP"]) and coco["AP"] > 0.2
