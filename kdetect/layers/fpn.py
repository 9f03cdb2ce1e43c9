"""Feature pyramid network (Lin et al., 2017)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kdetect")
class FeaturePyramid(keras.layers.Layer):
    """Builds P2..P5 (and P6) from backbone maps C2..C5.

    Each ``C_l`` goes through a 1x1 lateral conv to ``channels``; from the top, each level is
    upsampled 2x (nearest) and added to the next finer lateral; a 3x3 conv then smooths every
    sum. ``P6`` is a stride-2 subsampling of ``P5`` (used by the RPN only, as in torchvision).

    Args:
        channels: width of every pyramid level.
        extra_level: whether to add ``P6``.
    """

    def __init__(self, channels: int = 256, extra_level: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.extra_level = extra_level
        self.lateral_convs = []
        self.output_convs = []

    def build(self, input_shapes):
        init = keras.initializers.HeUniform()
        for i, shape in enumerate(input_shapes):
            lateral = keras.layers.Conv2D(
                self.channels, 1, kernel_initializer=init, name=f"lateral_{i}"
            )
            output = keras.layers.Conv2D(
                self.channels, 3, padding="same", kernel_initializer=init, name=f"output_{i}"
            )
            lateral.build(shape)
            output.build(tuple(shape[:-1]) + (self.channels,))
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

    def call(self, features):
        """``features``: list [C2, ..., C5], finest first. Returns [P2, ..., P5(, P6)]."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            coarse = merged[0]
            height, width = lateral.shape[1], lateral.shape[2]
            up = ops.repeat(ops.repeat(coarse, 2, axis=1), 2, axis=2)[:, :height, :width, :]
            merged.insert(0, lateral + up)
        outputs = [conv(m) for conv, m in zip(self.output_convs, merged)]
        if self.extra_level:
            outputs.append(outputs[-1][:, ::2, ::2, :])
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "extra_level": self.extra_level})
        return config
