"""Mixed precision (mixed_float16 / mixed_bfloat16) and XLA with the tiny detector.

One training step and ``predict`` must work under each policy with float32 losses (and loss
scaling for float16), and ``predict`` must work after ``compile(jit_compile=True)`` (its final
per-class NMS and RoIAlign's crop_and_resize have no XLA kernels, so it is never XLA-compiled).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kdetect import FasterRCNN
from tests.helpers import TINY
from tests.helpers import tiny_batch as _batch


@pytest.fixture
def policy(request):
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision_train_step_and_predict(policy):
    model = FasterRCNN(**TINY)
    assert model.rpn_head.compute_dtype == policy.removeprefix("mixed_")
    assert all(v.dtype == "float32" for v in model.trainable_variables)  # float32 master weights
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    if policy == "mixed_float16":
        # Keras wraps the optimizer so that train_step's scale_loss/apply scale the loss.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    batch = _batch()
    losses = model.compute_losses(batch["images"], batch["bounding_boxes"])
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in losses.values())
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    # float16: dynamic loss scaling starts at 2**15 and skips (and halves the scale on) steps
    # whose scaled gradients overflow, so the first steps may leave the weights unchanged.
    for _ in range(20):
        logs = model.train_on_batch(batch, return_dict=True)
        assert all(np.isfinite(logs[k]) for k in ("loss", "rpn_cls_loss", "rcnn_cls_loss"))
        after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        if sum(not np.array_equal(a, b) for a, b in zip(after, before, strict=True)) > 0:
            break
    else:
        pytest.fail("no training step updated the weights")
    assert all(np.isfinite(a).all() for a in after)
    out = model.predict(batch["images"].astype("uint8"), verbose=0)
    assert out["boxes"].shape == (2, 20, 4)
    assert np.isfinite(out["boxes"]).all() and np.isfinite(out["confidence"]).all()
    assert (out["num_detections"] > 0).all()


def test_predict_works_after_jit_compile():
    model = FasterRCNN(**TINY)
    images = _batch()["images"]
    want = model.predict(images, verbose=0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=True)
    assert model.jit_compile
    got = model.predict(images, verbose=0)
    assert model.jit_compile  # predict did not switch XLA off for training
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)


def test_xla_train_step_uses_gather_roi_align():
    model = FasterRCNN(**TINY)
    model.compile(optimizer=keras.optimizers.SGD(0.001), jit_compile=True)
    logs = model.train_on_batch(_batch(), return_dict=True)
    assert np.isfinite(logs["loss"])
    assert model.xla_step  # the XLA-compiled step was traced with the gather RoIAlign
    out = model.predict(_batch()["images"], verbose=0)
    assert out["boxes"].shape == (2, 20, 4)
