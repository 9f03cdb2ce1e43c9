"""Feature pyramid network (Lin et al., 2017)."""

from __future__ import annotations

import keras
from keras import ops

from kdetect.layers.batch_norm import BatchNormalization


@keras.saving.register_keras_serializable(package="kdetect")
class FeaturePyramid(keras.layers.Layer):
    """Builds P2..P5 (and P6) from backbone maps C2..C5, or P3..P7 from C3..C5.

    Each ``C_l`` goes through a 1x1 lateral conv to ``channels``; from the top, each level is
    upsampled 2x (nearest) and added to the next finer lateral; a 3x3 conv then smooths every
    sum. ``P6`` is a stride-2 subsampling of ``P5`` (used by the RPN only, as in torchvision).
    With ``batch_norm`` every conv is followed by batch norm instead of a bias (torchvision's
    ``fasterrcnn_resnet50_fpn_v2``). ``input_strides`` give each input's stride, so a level is
    upsampled by the stride ratio to the next finer one (2 for C2..C5, 1 for two maps of one
    stride, as torchvision's MobileNetV3 detector has).

    With ``extra_convs`` (RetinaNet's and FCOS' pyramid) two learned levels are added instead
    of the subsampled one: ``P6`` is a 3x3 stride-2 conv (zero padding 1 on each side) of the top
    output (``"p5"``) or of the top input map (``"c5"``), and ``P7`` the same conv of
    ``relu(P6)``.

    Args:
        channels: width of every pyramid level.
        extra_level: whether to add ``P6``.
        batch_norm: batch norm after each conv.
        batch_norm_epsilon: its epsilon (torch's default 1e-5).
        input_strides: stride of each input map, finest first; None: 4, 8, 16, ...
        extra_convs: None, ``"p5"`` or ``"c5"``: the source of the convolutional P6 / P7
            (``extra_level`` must then be False).
    """

    def __init__(
        self,
        channels: int = 256,
        extra_level: bool = True,
        batch_norm: bool = False,
        batch_norm_epsilon: float = 1e-5,
        input_strides=None,
        extra_convs: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if extra_convs not in (None, "p5", "c5"):
            raise ValueError(f"extra_convs must be None, 'p5' or 'c5', got {extra_convs!r}")
        if extra_convs is not None and extra_level:
            raise ValueError("extra_convs replaces the subsampled extra level: extra_level=False")
        self.extra_convs = extra_convs
        self.extra_level_convs = []
        self.input_strides = None if input_strides is None else tuple(int(s) for s in input_strides)
        self.channels = channels
        self.extra_level = extra_level
        self.batch_norm = bool(batch_norm)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.lateral_convs = []
        self.output_convs = []
        self.lateral_norms = []
        self.output_norms = []

    def _conv(self, size, name, input_shape):
        conv = keras.layers.Conv2D(
            self.channels,
            size,
            padding="same",
            use_bias=not self.batch_norm,
            kernel_initializer=keras.initializers.HeUniform(),
            name=name,
        )
        conv.build(input_shape)
        if not self.batch_norm:
            return conv, None
        norm = BatchNormalization(epsilon=self.batch_norm_epsilon, name=f"{name}_bn")
        norm.build(tuple(input_shape[:-1]) + (self.channels,))
        return conv, norm

    def build(self, input_shapes):
        for i, shape in enumerate(input_shapes):
            lateral, lateral_norm = self._conv(1, f"lateral_{i}", shape)
            output, output_norm = self._conv(3, f"output_{i}", tuple(shape[:-1]) + (self.channels,))
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
            self.lateral_norms.append(lateral_norm)
            self.output_norms.append(output_norm)
        if self.extra_convs is not None:
            p6_input = input_shapes[-1][-1] if self.extra_convs == "c5" else self.channels
            for name, width in (("p6", p6_input), ("p7", self.channels)):
                conv = keras.layers.Conv2D(
                    self.channels,
                    3,
                    strides=2,
                    kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "uniform"),
                    name=name,
                )
                conv.build((None, None, None, width))
                self.extra_level_convs.append(conv)

    @staticmethod
    def _apply(conv, norm, x, training):
        x = conv(x)
        return x if norm is None else norm(x, training=training)

    def call(self, features, training=False):
        """``features``: list [C2, ..., C5], finest first. Returns [P2, ..., P5(, P6)]."""
        laterals = [
            self._apply(conv, norm, f, training)
            for conv, norm, f in zip(self.lateral_convs, self.lateral_norms, features)
        ]
        strides = self.input_strides or tuple(4 * 2**i for i in range(len(laterals)))
        merged = [laterals[-1]]
        for level in reversed(range(len(laterals) - 1)):
            lateral, coarse = laterals[level], merged[0]
            factor = strides[level + 1] // strides[level]
            if factor > 1:
                height, width = lateral.shape[1], lateral.shape[2]
                coarse = ops.repeat(ops.repeat(coarse, factor, axis=1), factor, axis=2)
                coarse = coarse[:, :height, :width, :]
            merged.insert(0, lateral + coarse)
        outputs = [
            self._apply(conv, norm, m, training)
            for conv, norm, m in zip(self.output_convs, self.output_norms, merged)
        ]
        if self.extra_level:
            outputs.append(outputs[-1][:, ::2, ::2, :])
        if self.extra_convs is not None:
            p6_conv, p7_conv = self.extra_level_convs
            source = features[-1] if self.extra_convs == "c5" else outputs[-1]
            p6 = p6_conv(ops.pad(source, ((0, 0), (1, 1), (1, 1), (0, 0))))
            p7 = p7_conv(ops.pad(ops.relu(p6), ((0, 0), (1, 1), (1, 1), (0, 0))))
            outputs.extend([p6, p7])
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "extra_level": self.extra_level,
                "batch_norm": self.batch_norm,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "input_strides": self.input_strides,
                "extra_convs": self.extra_convs,
            }
        )
        return config
