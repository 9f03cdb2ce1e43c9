"""Backbones: ``keras.applications`` networks cut into feature maps, plus a tiny CNN for tests.

A backbone is a functional ``keras.Model`` mapping a normalised image [B, H, W, 3] to the list of
feature maps ``[C2, C3, C4, C5]`` (strides 4, 8, 16, 32). ``torchvision_resnet50`` is
torchvision's ResNet50 (v1.5: the stride in the 3x3 conv, no conv biases, symmetric padding), the
backbone of torchvision's COCO-trained detectors that :mod:`kdetect.pretrained` imports.
A C4-style detector (as in the original Faster R-CNN and Luminoth) uses only ``C4``; a detector
with a feature pyramid uses all four.
The backbone knows nothing of detection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras
from keras import layers, ops

from kdetect.backbones.names import BACKBONES, FREEZE_STAGES
from kdetect.layers.batch_norm import BatchNormalization, fuse_batch_norm
from kdetect.plumbing.errors import CheckpointError

STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class _Spec:
    builder: str | None  # keras.applications constructor name (None: built here)
    endpoints: tuple[str, str, str, str]  # layers giving C2..C5
    stem_end: str  # last layer of the stem
    # "caffe" (BGR, mean subtracted), "tf" ([-1, 1]), "unit" ([0, 1]), "imagenet" (RGB in
    # [0, 1] standardised by ImageNet's mean and std, as torchvision models expect), "ssd" (RGB
    # 0..255 less torchvision SSD's mean) or "half" ([0, 1] less 0.5, over 0.5: SSDlite's)
    preprocessing: str
    # layers whose outputs feed the feature pyramid, when not C2..C5
    pyramid_inputs: tuple[str, ...] | None = None


def _keras_resnet(builder: str, stage4_blocks: int) -> _Spec:
    """A ``keras.applications`` ResNet: the ends of its stages 2..5 (stage 4's depth varies)."""
    endpoints = (
        "conv2_block3_out",
        "conv3_block4_out",
        f"conv4_block{stage4_blocks}_out",
        "conv5_block3_out",
    )
    return _Spec(builder, endpoints, "pool1_pool", "caffe")


_SPECS = {
    "resnet50": _keras_resnet("ResNet50", 6),
    "resnet101": _keras_resnet("ResNet101", 23),
    "vgg16": _Spec(
        "VGG16",
        ("block3_conv3", "block4_conv3", "block5_conv3", "block5_pool"),
        "block1_pool",
        "caffe",
    ),
    "mobilenet_v2": _Spec(
        "MobileNetV2",
        ("block_2_add", "block_5_add", "block_13_expand_relu", "out_relu"),
        "expanded_conv_project_BN",
        "tf",
    ),
    "torchvision_resnet50": _Spec(
        None,
        ("layer1_2_out", "layer2_3_out", "layer3_5_out", "layer4_2_out"),
        "maxpool",
        "imagenet",
    ),
    "torchvision_mobilenet_v3_large": _Spec(
        None,
        ("features_3_out", "features_6_out", "features_12_out", "features_16_out"),
        "features_0_out",
        "imagenet",
        # torchvision's detector takes the last two stages' outputs, both at stride 32
        pyramid_inputs=("features_13_out", "features_16_out"),
    ),
    # torchvision's SSD300 feature extractor: conv4_3 (L2-normalised), fc7 and four extra maps
    "torchvision_ssd_vgg16": _Spec(
        None,
        ("features_4", "features_9", "features_16", "extra_0_6"),
        "features_2_relu",
        "ssd",
        pyramid_inputs=("l2_norm", *(f"extra_{i}_out" for i in range(5))),
    ),
    # MobileNetV3-Large with the reduced tail (stage 5 at half width) and batch-norm epsilon
    # 0.001: SSDlite's, which reads block 13's expansion (stride 16) and the last layer
    "torchvision_mobilenet_v3_large_ssdlite": _Spec(
        None,
        ("features_3_out", "features_6_out", "features_12_out", "features_16_out"),
        "features_0_out",
        "half",
        pyramid_inputs=("features_13_block_0_act", "features_16_out"),
    ),
    "tiny": _Spec(None, ("c2", "c3", "c4", "c5"), "stem", "unit"),
}

# torchvision's MobileNetV3-Large blocks: (kernel, expanded, out, squeeze-excite, hard-swish,
# stride), after a 16-channel stride-2 stem.
_MOBILENET_V3_LARGE = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
#: torchvision SSD300's input mean (RGB, 0..1); its std is 1 / 255 (0..255 pixels less the mean).
SSD_MEAN_RGB = (0.48235, 0.45882, 0.40784)
#: Blocks per stage of the torchvision ResNets kdetect builds.
_TORCHVISION_RESNET_BLOCKS = {"torchvision_resnet50": (3, 4, 6, 3)}


def preprocess_images(images, backbone: str):
    """Normalise raw 0..255 RGB pixels the way ``backbone`` was trained to see them."""
    images = ops.cast(images, "float32")
    mode = _SPECS[backbone].preprocessing
    if mode == "caffe":
        return images[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR, "float32")
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode == "imagenet":
        mean = ops.convert_to_tensor(IMAGENET_MEAN_RGB, "float32")
        std = ops.convert_to_tensor(IMAGENET_STD_RGB, "float32")
        return (images / 255.0 - mean) / std
    if mode == "ssd":
        mean = ops.convert_to_tensor(SSD_MEAN_RGB, "float32")
        return (images / 255.0 - mean) / (1.0 / 255.0)
    if mode == "half":
        return (images / 255.0 - 0.5) / 0.5
    return images / 255.0


def _tiny_backbone(input_shape) -> keras.Model:
    """Five stride-2 stages of two 3x3 convs with batch norm: fast enough for CPU tests."""
    inputs = keras.Input(input_shape)

    def conv_bn(x, filters, stride, name):
        x = layers.Conv2D(
            filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        x = BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    x = conv_bn(inputs, 16, 2, "stem_a")
    x = layers.Identity(name="stem")(x)
    outputs = []
    for i, filters in enumerate((32, 64, 128, 256)):
        x = conv_bn(x, filters, 2, f"stage{i + 1}_a")
        x = conv_bn(x, filters, 1, f"stage{i + 1}_b")
        x = layers.Identity(name=f"c{i + 2}")(x)
        outputs.append(x)
    return keras.Model(inputs, outputs, name="tiny")


def _torchvision_resnet(input_shape, blocks: tuple[int, ...], epsilon: float) -> keras.Model:
    """torchvision's ResNet (v1.5 bottlenecks) as a functional Keras model.

    It differs from ``keras.applications.ResNet50`` in ways that change every output: the stride
    of a down-sampling block is in its 3x3 conv (not the first 1x1), convolutions have no bias,
    and padding is symmetric (explicit ``ZeroPadding2D`` + ``valid``, where TensorFlow's ``same``
    pads stride-2 convs more at the bottom/right). Layer names follow torchvision's module names
    with ``.`` replaced by ``_`` (``layer2_0_downsample_0``), so a state dict maps onto them.
    Max pooling pads with zeros, which equals torch's ``-inf`` padding after a ReLU.
    """
    inputs = keras.Input(input_shape)

    def conv(x, filters, size, stride, name):
        if stride > 1 and size > 1:
            x = layers.ZeroPadding2D(size // 2, name=f"{name}_pad")(x)
            padding = "valid"
        else:
            padding = "same"
        return layers.Conv2D(
            filters, size, strides=stride, padding=padding, use_bias=False, name=name
        )(x)

    def batch_norm(x, name):
        return BatchNormalization(epsilon=epsilon, name=name)(x)

    x = conv(inputs, 64, 7, 2, "conv1")
    x = layers.ReLU(name="relu")(batch_norm(x, "bn1"))
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for index in range(count):
            name = f"layer{stage}_{index}"
            stride = 2 if index == 0 and stage > 1 else 1
            y = layers.ReLU()(batch_norm(conv(x, width, 1, 1, f"{name}_conv1"), f"{name}_bn1"))
            y = layers.ReLU()(batch_norm(conv(y, width, 3, stride, f"{name}_conv2"), f"{name}_bn2"))
            y = batch_norm(conv(y, width * 4, 1, 1, f"{name}_conv3"), f"{name}_bn3")
            shortcut = x
            if index == 0:
                shortcut = conv(x, width * 4, 1, stride, f"{name}_downsample_0")
                shortcut = batch_norm(shortcut, f"{name}_downsample_1")
            x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))
    return keras.Model(inputs, x, name="torchvision_resnet")


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10 % down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _torchvision_mobilenet_v3_large(
    input_shape, epsilon: float, reduced_tail: bool = False
) -> keras.Model:
    """torchvision's MobileNetV3-Large feature layers (``features.0`` .. ``features.16``).

    ``reduced_tail`` halves the channels of the last stage (blocks 13-15 and the final 1x1
    conv), as torchvision's SSDlite builds it without ImageNet weights.

    Inverted residual blocks: an optional 1x1 expansion, a depthwise conv, an optional
    squeeze-and-excitation (global average, 1x1 + ReLU, 1x1 + hard sigmoid, rescale), a linear
    1x1 projection, and a residual sum when shape allows; ReLU or hard swish by block. Padding
    is symmetric, as in torch. Layer names are torchvision's module paths with ``_`` for ``.``
    (``features_4_block_2_fc1``); ``features_N_out`` is block N's output.
    """
    inputs = keras.Input(input_shape)

    def conv_bn(x, filters, size, stride, name, act, depthwise=False):
        if stride > 1 and size > 1:
            x = layers.ZeroPadding2D(size // 2, name=f"{name}_pad")(x)
            padding = "valid"
        else:
            padding = "same"
        if depthwise:
            x = layers.DepthwiseConv2D(
                size, strides=stride, padding=padding, use_bias=False, name=f"{name}_0"
            )(x)
        else:
            x = layers.Conv2D(
                filters, size, strides=stride, padding=padding, use_bias=False, name=f"{name}_0"
            )(x)
        x = BatchNormalization(epsilon=epsilon, name=f"{name}_1")(x)
        return x if act is None else layers.Activation(act, name=f"{name}_act")(x)

    x = conv_bn(inputs, 16, 3, 2, "features_0", "hard_swish")
    x = layers.Identity(name="features_0_out")(x)
    channels = 16
    for index, (size, expanded, out, squeeze, hard_swish, stride) in enumerate(
        _MOBILENET_V3_LARGE, start=1
    ):
        if reduced_tail and index >= 13:
            expanded = expanded if index == 13 else expanded // 2
            out //= 2
        name, act = f"features_{index}_block", "hard_swish" if hard_swish else "relu"
        y, part = x, 0
        if expanded != channels:
            y = conv_bn(y, expanded, 1, 1, f"{name}_{part}", act)
            part += 1
        y = conv_bn(y, expanded, size, stride, f"{name}_{part}", act, depthwise=True)
        part += 1
        if squeeze:
            pooled = layers.GlobalAveragePooling2D(keepdims=True)(y)
            squeezed = layers.Conv2D(
                _make_divisible(expanded // 4), 1, activation="relu", name=f"{name}_{part}_fc1"
            )(pooled)
            scale = layers.Conv2D(expanded, 1, name=f"{name}_{part}_fc2")(squeezed)
            y = layers.Multiply()([y, layers.Activation("hard_sigmoid")(scale)])
            part += 1
        y = conv_bn(y, out, 1, 1, f"{name}_{part}", None)
        if stride == 1 and channels == out:
            y = layers.Add()([x, y])
        x = layers.Identity(name=f"features_{index}_out")(y)
        channels = out
    x = conv_bn(x, 6 * channels, 1, 1, "features_16", "hard_swish")
    x = layers.Identity(name="features_16_out")(x)
    return keras.Model(inputs, x, name="torchvision_mobilenet_v3_large")


@keras.saving.register_keras_serializable(package="kdetect")
class L2Normalization(layers.Layer):
    """Each pixel's channel vector divided by its L2 norm (at least 1e-12), times a learned
    per-channel scale (initially ``scale``): SSD's normalisation of the conv4_3 map."""

    def __init__(self, scale: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def build(self, input_shape):
        self.weight = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.scale),
            name="scale",
        )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")  # a float16 sum of squares would overflow
        norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
        scale = ops.cast(self.weight, "float32")
        return ops.cast(x / ops.maximum(norm, 1e-12) * scale, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


# torchvision's VGG16 convolutions (channels; "M" a 2x2 max pool), as numbered in its
# ``features``: a conv at index i is followed by its ReLU at i + 1.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _torchvision_ssd_vgg16(input_shape) -> keras.Model:
    """torchvision's SSD300 VGG16 feature extractor: six maps for the SSD heads.

    VGG16's convolutions through conv4_3 (the third pool rounds its output size up, so 75 px
    become 38), whose map is L2-normalised with a learned scale; then pool4, conv5_1..5_3, a
    3x3 stride-1 max pool, "fc6" as a 3x3 conv dilated by 6 and "fc7" as a 1x1 conv; then four
    extra blocks of a 1x1 conv and a 3x3 conv (stride 2 with padding 1 twice, unpadded twice),
    each with ReLU. Layer names are torchvision's module paths with ``_`` for ``.``.
    """
    inputs = keras.Input(input_shape)

    def conv(x, filters, size, name, stride=1, padding=0, dilation=1):
        if padding:
            x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, size, strides=stride, dilation_rate=dilation, name=name)(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    x, index, pools = inputs, 0, 0
    for item in _VGG16[:13]:  # through conv4_3
        if item == "M":
            pools += 1
            # the third pool uses ceil mode: "same" pads the odd side at the end, never read
            padding = "same" if pools == 3 else "valid"
            x = layers.MaxPooling2D(2, padding=padding, name=f"features_{index}")(x)
            index += 1
        else:
            x = conv(x, item, 3, f"features_{index}", padding=1)
            index += 2
    outputs = [L2Normalization(20.0, name="l2_norm")(x)]
    x = layers.MaxPooling2D(2, name="extra_0_0")(x)  # pool4
    for position in (1, 3, 5):  # conv5_1 .. conv5_3
        x = conv(x, 512, 3, f"extra_0_{position}", padding=1)
    x = layers.MaxPooling2D(3, strides=1, padding="same", name="extra_0_6")(x)
    x = conv(x, 1024, 3, "extra_0_7_1", padding=6, dilation=6)  # fc6
    x = conv(x, 1024, 1, "extra_0_7_3")  # fc7
    outputs.append(layers.Identity(name="extra_0_out")(x))
    for block, (middle, out, stride, padding) in enumerate(
        ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)), start=1
    ):
        x = conv(x, middle, 1, f"extra_{block}_0")
        x = conv(x, out, 3, f"extra_{block}_2", stride=stride, padding=padding)
        outputs.append(layers.Identity(name=f"extra_{block}_out")(x))
    return keras.Model(inputs, outputs, name="torchvision_ssd_vgg16")


def _load_application(spec: _Spec, name: str, input_shape, weights):
    """Instantiate a ``keras.applications`` model; ``weights`` None, "imagenet" or a file path."""
    builder = getattr(keras.applications, spec.builder)
    if weights in (None, "imagenet"):
        try:
            return builder(include_top=False, weights=weights, input_shape=input_shape)
        except Exception as exc:  # network failures surface as many exception types
            if weights != "imagenet":
                raise
            raise CheckpointError(
                f"could not download ImageNet weights for backbone '{name}' "
                f"({exc.__class__.__name__}: {exc}); download the no-top weights file elsewhere "
                "and pass its path as backbone_weights"
            ) from exc
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise CheckpointError(f"backbone_weights: file not found: {path}")
    model = builder(include_top=False, weights=None, input_shape=input_shape)
    try:
        model.load_weights(path)
    except Exception as exc:
        raise CheckpointError(f"backbone_weights: cannot load {path} into '{name}': {exc}") from exc
    return model


def build_backbone(
    name: str,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    freeze: str | None = None,
    frozen_batch_norm: bool = False,
    batch_norm_epsilon: float | None = None,
) -> tuple[keras.Model, keras.Model]:
    """Build a backbone.

    Args:
        name: one of :data:`BACKBONES`.
        input_shape: ``(H, W, 3)``; the network is built for any size (the C4 head re-uses
            stage 5 on small RoI crops), so this only checks the size is large enough.
        weights: None (random), ``"imagenet"`` or the path of a Keras weights file for the
            ``include_top=False`` network.
        freeze: freeze every layer up to and including this stage (``"stem"``, ``"stage1"`` ..
            ``"stage4"``), or None.
        frozen_batch_norm: run batch norm layers in inference mode with fixed statistics (the usual
            choice when fine-tuning pretrained weights with small batches).
        batch_norm_epsilon: epsilon of every batch norm layer; None keeps the network's own
            (1.001e-5 for ``keras.applications``, 1e-5 for torchvision's ResNets). torchvision's
            COCO_V1 detectors run with 0.

    Returns:
        ``(features, full)``: ``features`` maps images to ``[C2, C3, C4, C5]`` (for
        ``torchvision_mobilenet_v3_large`` the two stride-32 maps torchvision's detector uses);
        ``full`` is the whole underlying network (used to cut out the ResNet stage-5 head of C4
        models).
    """
    if name not in _SPECS:
        raise ValueError(f"unknown backbone '{name}'; expected one of {', '.join(BACKBONES)}")
    if freeze is not None and freeze not in FREEZE_STAGES:
        raise ValueError(
            f"freeze must be one of {', '.join(FREEZE_STAGES)} or None, got '{freeze}'"
        )
    spec = _SPECS[name]
    if min(input_shape[:2]) < 32:
        raise ValueError(f"backbone '{name}' needs images of at least 32x32, got {input_shape[:2]}")
    full = _build_network(name, (None, None, input_shape[-1]), weights, batch_norm_epsilon)
    outputs = spec.pyramid_inputs or spec.endpoints
    features = keras.Model(
        full.inputs, [full.get_layer(e).output for e in outputs], name=f"{name}_features"
    )
    _freeze(full, spec, freeze, frozen_batch_norm)
    return features, full


def _build_network(name: str, input_shape, weights, batch_norm_epsilon) -> keras.Model:
    """The whole network ``name`` for any image size, its batch norms at ``batch_norm_epsilon``
    (None: the network's own)."""
    spec = _SPECS[name]
    if spec.builder is None:
        if weights is not None:
            raise ValueError(
                f"the '{name}' backbone loads no weights file; use backbone_weights=None "
                "(torchvision checkpoints are imported whole: kdetect checkpoint import)"
            )
        epsilon = 1e-5 if batch_norm_epsilon is None else batch_norm_epsilon
        if name in _TORCHVISION_RESNET_BLOCKS:
            full = _torchvision_resnet(input_shape, _TORCHVISION_RESNET_BLOCKS[name], epsilon)
        elif name == "torchvision_mobilenet_v3_large":
            full = _torchvision_mobilenet_v3_large(input_shape, epsilon)
        elif name == "torchvision_mobilenet_v3_large_ssdlite":
            epsilon = 1e-3 if batch_norm_epsilon is None else batch_norm_epsilon
            full = _torchvision_mobilenet_v3_large(input_shape, epsilon, reduced_tail=True)
        elif name == "torchvision_ssd_vgg16":
            full = _torchvision_ssd_vgg16(input_shape)
        else:
            full = _tiny_backbone(input_shape)
    else:
        full = fuse_batch_norm(_load_application(spec, name, input_shape, weights))
    if batch_norm_epsilon is not None:
        for layer in full.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.epsilon = float(batch_norm_epsilon)
    return full


def _freeze(full: keras.Model, spec: _Spec, freeze: str | None, frozen_batch_norm: bool) -> None:
    """Make every layer up to the end of stage ``freeze`` untrainable (``stem``: the stem's
    end), and with ``frozen_batch_norm`` every batch norm too."""
    if freeze is not None:
        boundary = spec.stem_end if freeze == "stem" else spec.endpoints[int(freeze[-1]) - 1]
        for layer in full.layers:
            layer.trainable = False
            if layer.name == boundary:
                break
    if frozen_batch_norm:
        for layer in full.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False


def resnet_stage5_head(full: keras.Model, name: str) -> keras.Model:
    """The C4 box head of a ResNet: its stage 5 on pooled RoIs, then global average pooling."""
    spec = _SPECS[name]
    stage5 = keras.Model(
        full.get_layer(spec.endpoints[2]).output, full.get_layer(spec.endpoints[3]).output
    )
    inputs = keras.Input(stage5.input_shape[1:])
    pooled = layers.GlobalAveragePooling2D()(stage5(inputs))
    return keras.Model(inputs, pooled, name=f"{name}_stage5_head")
