"""The box head (the layers between RoIAlign and the predictor) and the box predictor."""

from __future__ import annotations

import math

import keras
from keras import ops

from kdetect.layers.batch_norm import BatchNormalization
from kdetect.ops.losses import SMOOTH_L1_BETA, normaliser, smooth_l1


@keras.saving.register_keras_serializable(package="kdetect")
class MLPBoxHead(keras.layers.Layer):
    """FPN's box head: flatten the pooled RoI, then two fully connected layers with ReLU."""

    def __init__(self, units: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc1 = keras.layers.Dense(units, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(units, activation="relu", name="fc2")

    def build(self, input_shape):
        # input_shape: [B, R, S, S, C]
        flat = tuple(input_shape[:2]) + (math.prod(input_shape[2:]),)
        self.fc1.build(flat)
        self.fc2.build(tuple(input_shape[:2]) + (self.units,))

    def call(self, pooled):
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (shape[0], shape[1], -1))
        return self.fc2(self.fc1(x))

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config


@keras.saving.register_keras_serializable(package="kdetect")
class ConvFCBoxHead(keras.layers.Layer):
    """A box head of 3x3 convs, then fully connected layers (torchvision's ``FastRCNNConvFCHead``
    of ``fasterrcnn_resnet50_fpn_v2``): each conv is followed by batch norm and ReLU and runs on
    every pooled RoI; the result is flattened and goes through the FC layers with ReLU.

    Args:
        conv_channels: width of each conv layer.
        units: width of each fully connected layer.
        batch_norm_epsilon: epsilon of the batch norms (torch's default 1e-5).
    """

    def __init__(
        self,
        conv_channels=(256, 256, 256, 256),
        units=(1024,),
        batch_norm_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.conv_channels = tuple(int(c) for c in conv_channels)
        self.units = tuple(int(u) for u in units)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.convs = [
            keras.layers.Conv2D(c, 3, padding="same", use_bias=False, name=f"conv_{i}")
            for i, c in enumerate(self.conv_channels)
        ]
        self.norms = [
            BatchNormalization(epsilon=self.batch_norm_epsilon, name=f"conv_{i}_bn")
            for i in range(len(self.conv_channels))
        ]
        self.fcs = [
            keras.layers.Dense(u, activation="relu", name=f"fc_{i}")
            for i, u in enumerate(self.units)
        ]

    @property
    def output_units(self) -> int:
        return self.units[-1]

    def build(self, input_shape):
        # input_shape: [B, R, S, S, C]
        shape = (None,) + tuple(input_shape[2:])
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = shape[:-1] + (conv.filters,)
            norm.build(shape)
        width = math.prod(shape[1:])
        for fc in self.fcs:
            fc.build((None, None, width))
            width = fc.units

    def call(self, pooled, training=False):
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (-1,) + tuple(pooled.shape[2:]))
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(x), training=training))
        x = ops.reshape(x, (shape[0], shape[1], -1))
        for fc in self.fcs:
            x = fc(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "conv_channels": self.conv_channels,
                "units": self.units,
                "batch_norm_epsilon": self.batch_norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kdetect")
class BoxPredictor(keras.layers.Layer):
    """Class logits (``num_classes + 1``, background first) and class-specific box deltas
    (``num_classes * 4``) from the box head's features."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.cls_score = keras.layers.Dense(
            num_classes + 1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="cls_score",
        )
        self.bbox_pred = keras.layers.Dense(
            num_classes * 4,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="bbox_pred",
        )

    def build(self, input_shape):
        self.cls_score.build(input_shape)
        self.bbox_pred.build(input_shape)

    def call(self, x):
        logits = self.cls_score(x)
        deltas = self.bbox_pred(x)
        shape = ops.shape(deltas)
        return logits, ops.reshape(deltas, (shape[0], shape[1], self.num_classes, 4))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        return config

    @staticmethod
    def losses(class_logits, box_deltas, samples):
        """The box head's two loss terms, as torchvision's: classification (softmax
        cross-entropy) over the sampled RoIs and box regression (smooth L1 of each RoI's own
        class's deltas, beta 1/9) over the sampled foreground, each divided by the number
        sampled. ``samples``: :class:`~kdetect.layers.roi.RoISampler`'s output."""
        class_logits = ops.cast(class_logits, "float32")
        box_deltas = ops.cast(box_deltas, "float32")
        labels, weights = samples["labels"], samples["weights"]
        count = normaliser(weights)
        cls = ops.sparse_categorical_crossentropy(labels, class_logits, from_logits=True)
        class_index = ops.maximum(labels - 1, 0)
        picked = ops.take_along_axis(box_deltas, class_index[:, :, None, None], axis=2)[:, :, 0, :]
        foreground = ops.cast(labels > 0, "float32") * weights
        box = ops.sum(smooth_l1(picked - samples["box_targets"], SMOOTH_L1_BETA), axis=-1)
        return ops.sum(cls * weights) / count, ops.sum(box * foreground) / count
