"""FusedBatchNormalization gives keras.layers.BatchNormalization's results, gradients and state."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from kdetect.backbones.networks import build_backbone
from kdetect.layers import BatchNormalization as FusedBatchNormalization
from kdetect.layers import fuse_batch_norm


def _pair(shape, dtype="float32", **kwargs):
    """A Keras and a fused layer with the same random non-trivial weights."""
    rng = np.random.default_rng(0)
    reference = layers.BatchNormalization(dtype=dtype, **kwargs)
    fused = FusedBatchNormalization(dtype=dtype, **kwargs)
    reference.build(shape)
    fused.build(shape)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in reference.get_weights()]
    weights[1] -= 1.0  # beta around 0; the moving variance stays positive
    reference.set_weights(weights)
    fused.set_weights(weights)
    return reference, fused


def _inputs(shape, seed=1):
    return tf.constant(np.random.default_rng(seed).normal(2.0, 3.0, shape).astype("float32"))


@pytest.mark.parametrize("training", [True, False])
def test_matches_keras_outputs_gradients_and_moving_statistics(training):
    shape = (2, 5, 7, 6)
    reference, fused = _pair(shape, epsilon=1.001e-5, momentum=0.9)
    x = _inputs(shape)
    results = []
    for layer in (reference, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.sin(y))  # a non-uniform upstream gradient
        grads = tape.gradient(loss, [x, *layer.trainable_variables])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for expected, got in zip(*results):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_uses_the_fused_kernel_only_where_it_is_exact():
    x = _inputs((2, 4, 4, 3))
    assert FusedBatchNormalization()._fusable(x, None)
    assert not FusedBatchNormalization(epsilon=1e-6)._fusable(x, None)  # kernel would raise eps
    assert not FusedBatchNormalization(axis=1)._fusable(x, None)
    assert not FusedBatchNormalization()._fusable(tf.zeros((2, 3)), None)
    assert not FusedBatchNormalization(synchronized=True)._fusable(x, None)


@pytest.mark.parametrize("kwargs", [dict(epsilon=1e-6), dict(axis=1), dict(center=False)])
def test_fallbacks_and_options_match_keras(kwargs):
    shape = (2, 3, 4, 5)
    reference, fused = _pair(shape, **kwargs)
    x = _inputs(shape)
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-4)
    np.testing.assert_allclose(fused.moving_variance, reference.moving_variance, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    shape = (2, 5, 7, 6)
    reference, fused = _pair(shape, dtype=policy)
    x = tf.cast(_inputs(shape), keras.mixed_precision.Policy(policy).compute_dtype)
    y = fused(x, training=True)
    assert y.dtype == x.dtype
    tolerance = 0.05 if policy == "mixed_bfloat16" else 5e-3
    np.testing.assert_allclose(
        np.asarray(tf.cast(y, "float32")),
        np.asarray(tf.cast(reference(x, training=True), "float32")),
        atol=tolerance,
    )
    np.testing.assert_allclose(fused.moving_mean, reference.moving_mean, atol=1e-3)


def _small_cnn():
    inputs = keras.Input((None, None, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, layers.ReLU(name="relu")(x), name="small")


def test_fuse_batch_norm_keeps_names_weights_and_checkpoints(tmp_path):
    model = _small_cnn()
    model.get_layer("bn").set_weights([np.full(4, v, "float32") for v in (2.0, 0.5, 0.1, 3.0)])
    model.get_layer("conv").trainable = False
    fused = fuse_batch_norm(model)
    assert type(fused.get_layer("bn")) is FusedBatchNormalization
    assert [layer.name for layer in fused.layers[1:]] == [layer.name for layer in model.layers[1:]]
    assert not fused.get_layer("conv").trainable
    x = _inputs((2, 8, 8, 3))
    np.testing.assert_allclose(fused(x), model(x), atol=1e-5)
    # A checkpoint written by the plain model loads into the fused one and vice versa.
    model.save_weights(tmp_path / "plain.weights.h5")
    other = fuse_batch_norm(_small_cnn())
    other.load_weights(tmp_path / "plain.weights.h5")
    np.testing.assert_allclose(other(x), model(x), atol=1e-5)
    assert fuse_batch_norm(fused) is fused


def test_backbones_use_the_fused_layer_everywhere():
    for name in ("tiny", "mobilenet_v2"):
        features, full = build_backbone(name, (64, 64, 3))
        norms = [layer for layer in full.layers if isinstance(layer, layers.BatchNormalization)]
        assert norms and all(type(layer) is FusedBatchNormalization for layer in norms)
