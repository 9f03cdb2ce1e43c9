"""The base of every kdetect detector: what all of them share around their own stages.

A detector is its stages: the input transform (resize and padding by
:class:`~kdetect.models.transform.ImageTransform`; normalisation by
:meth:`DetectionModel.preprocess`), a backbone, an optional neck and heads. A subclass
builds those in ``__init__`` and writes two methods:

* :meth:`DetectionModel.detect` -- normalised images of a frame -> the predict contract
  (``boxes``, ``confidence``, ``labels``, ``num_detections``; :mod:`kdetect.models.outputs`);
* :meth:`DetectionModel.compute_losses` -- a training batch -> ``{"loss": sum, term: value, ...}``
  with the keys of its class attribute ``LOSS_NAMES`` (each term from the head that owns it).

Everything else is here, written once: Keras' train / test steps (one gradient step on the sum,
replica scaling under ``tf.distribute``, samplers keyed by the optimizer step so a resumed run
draws as the uninterrupted one), the loss trackers, ``compile``, prediction on raw images of any
size (the transform's resize and the boxes mapped back) and ``export``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kdetect.backbones.names import BACKBONE_MODEL_TYPE
from kdetect.backbones.networks import preprocess_images
from kdetect.models import export_formats as exporting
from kdetect.models.prediction import check_images
from kdetect.ops import tf_ops
from kdetect.ops.anchors import feature_map_anchors
from kdetect.ops.boxes import clip_boxes
from kdetect.plumbing.errors import InputShapeError, KdetectError
from kdetect.pretrained.torchvision import load_torchvision


def check_model_settings(num_classes, backbone: str, model_type: str) -> None:
    """Raise ``TypeError`` / ``ValueError`` for settings no detector takes: a class count that is
    not a positive integer, or a backbone built for another type's layout."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    owner = BACKBONE_MODEL_TYPE.get(backbone, model_type)
    if owner != model_type:
        raise ValueError(f"backbone {backbone!r} is the {owner} model's (model.type {owner})")


#: Room in the samplers' seed counter for the random draws of one training step.
_DRAWS_PER_STEP = 1024


class DetectionModel(keras.Model):
    """Base class of kdetect's detectors (see the module docstring).

    Subclasses set, in ``__init__``: :attr:`transform`, :attr:`num_classes`,
    :attr:`backbone_name` (its preprocessing; :meth:`_keep_backbone_settings` keeps both with
    the backbone's weights and freezing), :attr:`seed_generator`; then call
    :meth:`_init_detector`. Class attributes: ``LOSS_NAMES`` (``"loss"`` first, then the terms)
    and ``TYPE`` (the registry's ``model.type``).

    Attributes set while a graph is traced:
        xla_step: the train / test step being traced is XLA-compiled (``jit_compile`` or TPU).
        portable_graph: inside :meth:`portable_ops` (exports: ops that TFLite and ONNX take).
    """

    LOSS_NAMES: tuple[str, ...] = ("loss",)
    TYPE: str = ""
    #: torchvision builder name -> the options reproducing it (importable checkpoints).
    TORCHVISION_ARCHITECTURES: dict[str, dict] = {}
    #: The module that reads the type's torchvision checkpoints: ``num_classes(state, name,
    #: arch)`` (the class count a file holds) and ``weight_plan(model)`` (its keys -> weights).
    TORCHVISION = None

    def _keep_backbone_settings(
        self, num_classes, backbone: str, backbone_weights, freeze, frozen_batch_norm
    ) -> None:
        """Keep the class count and the backbone's settings; ``frozen_batch_norm`` None means
        frozen exactly when the backbone starts from weights."""
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_weights, self.freeze = backbone_weights, freeze
        self.frozen_batch_norm = (
            backbone_weights is not None if frozen_batch_norm is None else frozen_batch_norm
        )

    def _init_detector(self) -> None:
        """The state every detector has: trace flags and one loss tracker per loss name."""
        self.xla_step = False
        self.portable_graph = False
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.LOSS_NAMES}

    # --- The input transform's settings (the transform holds them) -------------------------
    image_size = property(lambda self: self.transform.image_size, doc="the training frame")
    resize_mode = property(lambda self: self.transform.resize_mode, doc="the resize rule")
    min_size = property(lambda self: self.transform.min_size, doc="`min_max`'s short side")
    max_size = property(lambda self: self.transform.max_size, doc="`min_max`'s long side")

    # --- What a subclass writes -------------------------------------------------------------
    def configure_detections(
        self,
        nms_iou: float | None = None,
        class_agnostic: bool | None = None,
        image_size: Sequence[int] | None = None,
    ) -> None:
        """Change how the predictions that follow are made; the prediction function is traced
        again. ``nms_iou``: the IoU threshold of the final non-maximum suppression
        (torchvision's ``box_nms_thresh``, Ultralytics' ``iou``); ``class_agnostic``: whether it
        suppresses across classes (``agnostic_nms``); ``image_size``: ``(height, width)`` the
        images are resized into (Ultralytics' ``imgsz``; see
        :meth:`~kdetect.models.transform.ImageTransform.predicting_at`).
        """
        if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
            raise KdetectError(f"nms_iou: expected a value in (0, 1], got {nms_iou}")
        if image_size is not None:
            try:
                self.transform = self.transform.predicting_at(image_size)
            except (TypeError, ValueError) as exc:
                raise KdetectError(str(exc)) from None
        final = [layer for layer in self._flatten_layers() if getattr(layer, "FINAL_NMS", False)]
        for layer in final:
            if nms_iou is not None:
                layer.nms_thresh = float(nms_iou)
            if class_agnostic is not None:
                layer.class_agnostic = bool(class_agnostic)
        self.predict_function = None

    def detect(self, inputs, image_size, training=False):
        """Detections for normalised images ``inputs`` [B, H, W, 3] whose content fills the
        top-left ``image_size`` (height, width) of the frame; boxes in pixels of that frame."""
        raise NotImplementedError

    def compute_losses(self, images, bounding_boxes, training=True):
        """The loss terms of a training batch (raw pixels of the frame) and their sum."""
        raise NotImplementedError

    def anchor_boxes(self, height: int, width: int, anchor_sizes=None, aspect_ratios=None):
        """The anchors (or default boxes) of a ``height`` x ``width`` frame, one ``[A, 4]``
        array per level, for ``kdetect dataset inspect``'s coverage check; with
        ``anchor_sizes`` / ``aspect_ratios``, those of another anchor setting (a model whose
        anchors are a grid of sizes and ratios; others raise ``NotImplementedError``). None:
        the model has no anchors (e.g. FCOS's points).

        Here: the grid of the model's ``anchor_sizes`` x ``aspect_ratios`` on the feature maps
        of :meth:`feature_sizes`, for a model with ``anchor_iou_thresholds``."""
        if self.anchor_iou_thresholds is None:
            return None
        sizes = self.anchor_sizes if anchor_sizes is None else anchor_sizes
        ratios = self.aspect_ratios if aspect_ratios is None else aspect_ratios
        levels = self.feature_sizes(height, width)
        anchors = feature_map_anchors((height, width), levels, sizes, ratios)
        return [ops.convert_to_numpy(a) for a in anchors]

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(height, width) of each anchored feature map for a ``height`` x ``width`` frame."""
        raise NotImplementedError

    #: ``(fg, bg)``: the IoUs at which a training box's anchor is a positive, and below which a
    #: negative (None without anchors); read with :meth:`anchor_boxes`.
    anchor_iou_thresholds: tuple[float, float] | None = None

    def preprocess(self, images):
        """Raw 0..255 RGB pixels -> what the backbone was trained on."""
        return preprocess_images(images, self.backbone_name)

    # --- torchvision checkpoints --------------------------------------------------------
    @classmethod
    def from_torchvision(cls, weights, arch: str | None = None, **overrides):
        """A detector holding a torchvision checkpoint's weights.

        ``weights`` is a ``.pth`` / ``.safetensors`` file (read without torch and without
        running pickled code) or a state dict of arrays; ``arch`` is torchvision's builder name
        (one of ``TORCHVISION_ARCHITECTURES``; default the first). The result predicts what
        torchvision's ``model.eval()`` predicts, with kdetect label ``i`` = torchvision label
        ``i + 1``; ``overrides`` change other constructor arguments (e.g. score thresholds).
        A subclass names the module that reads the files (``TORCHVISION``).
        """
        arch = arch or next(iter(cls.TORCHVISION_ARCHITECTURES))
        return load_torchvision(cls, weights, arch, **overrides)

    # --- Forward ----------------------------------------------------------------------------
    def call(self, images, training=False):
        """Detections for raw images already at ``image_size`` (pixels of that padded frame)."""
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] not in (None, 3):
            raise InputShapeError(
                f"{type(self).__name__}: expected [batch, height, width, 3] images, got shape "
                f"{shape}"
            )
        return self.detect(self.preprocess(images), ops.shape(images)[1:3], training=training)

    # --- Training ---------------------------------------------------------------------------
    def compile(self, optimizer="sgd", jit_compile=False, **kwargs):
        """Compile with an optimizer; the loss is the model's own, so no ``loss`` argument."""
        if kwargs.get("loss") is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own multi-task loss; do not pass `loss`"
            )
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    #: ``fit``'s positional parameters before ``shuffle`` (x, y, batch_size, epochs, verbose,
    #: callbacks, validation_split, validation_data).
    _FIT_ARGS_BEFORE_SHUFFLE = 8

    def fit(self, x=None, *args, **kwargs):
        """``keras.Model.fit``. A ``tf.data.Dataset`` (e.g. ``make_dataset``'s, which orders
        its examples itself) is not shuffled by Keras: ``shuffle`` defaults to False for one,
        so Keras does not warn that it ignores its own default ``shuffle=True``."""
        if isinstance(x, tf.data.Dataset) and len(args) < self._FIT_ARGS_BEFORE_SHUFFLE - 1:
            kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, **kwargs)

    def compile_from_config(self, config):
        """Re-compile a loaded model with its saved optimizer (Keras skips models whose
        ``compile`` is overridden unless they say how)."""
        try:
            config = keras.saving.deserialize_keras_object(config)
        except (TypeError, ValueError) as exc:  # e.g. a custom schedule not registered here
            warnings.warn(
                f"the saved optimizer was not restored ({exc}); call compile()", stacklevel=2
            )
            return
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def _update_trackers(self, losses):
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        if tf_ops.is_multi_worker():
            # Keras reduces step outputs across workers with ``strategy.reduce(MEAN, axis=0)``,
            # which needs a batch axis: give each scalar one (the reduction returns a scalar).
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    @staticmethod
    def _unpack(data):
        if isinstance(data, (tuple, list)):
            data = data[0]
        return data["images"], data["bounding_boxes"]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras' symbolic build under a strategy: the detector is built in ``__init__``.

        Keras (3.15, TensorFlow trainer) builds a model created in a strategy's scope by pulling a
        batch from the distributed iterator and ``strategy.reduce``-ing it, which fails for dict
        batches under ``MultiWorkerMirroredStrategy``. Only the optimizer needs building here.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)

    def _mark_xla_step(self, xla: bool) -> None:
        """Record (while a step is traced) whether XLA compiles it. A TPU compiles every step
        with XLA whatever ``jit_compile`` says."""
        self.xla_step = bool(xla or tf_ops.is_tpu())

    def _key_samplers(self):
        """Start the samplers' draws of this step at ``(seed, optimizer step)``: the draws of
        step ``t`` do not depend on how many steps (or validation batches) this process has
        run before, so a resumed run samples as the uninterrupted run did. (The seed
        generator's state is not among the saved weights; the optimizer's step count is.)"""
        state = self.seed_generator.state
        step = ops.cast(self.optimizer.iterations, state.dtype)
        state.assign(ops.stack([state[0], step * _DRAWS_PER_STEP]))

    def train_step(self, data):
        self._mark_xla_step(self.jit_compile)
        self._key_samplers()
        images, bounding_boxes = self._unpack(data)
        trainable = self.trainable_variables
        replicas = tf_ops.num_replicas_in_sync()

        def scaled_loss():
            losses = self.compute_losses(images, bounding_boxes, training=True)
            # Each replica sees 1/replicas of the global batch and the optimizer sums their
            # gradients: scale so the sum is the gradient of the global batch's mean loss.
            loss = losses["loss"] / replicas if replicas > 1 else losses["loss"]
            return self.optimizer.scale_loss(loss), losses

        losses, grads = tf_ops.loss_and_gradients(scaled_loss, trainable)
        self.optimizer.apply(grads, trainable)
        return self._update_trackers(losses)

    def test_step(self, data):
        self._mark_xla_step(self.jit_compile)
        images, bounding_boxes = self._unpack(data)
        losses = self.compute_losses(images, bounding_boxes, training=False)
        return self._update_trackers(losses)

    # --- Prediction on raw images -----------------------------------------------------------
    @contextlib.contextmanager
    def portable_ops(self):
        """Graphs traced inside this block use only ops that the TFLite and ONNX converters
        turn into builtins (e.g. RoIAlign by gathers instead of ``crop_and_resize``)."""
        previous = self.portable_graph
        self.portable_graph = True
        try:
            yield self
        finally:
            self.portable_graph = previous

    def make_predict_function(self, force=False):
        """The predict function is never XLA-compiled, even after ``compile(jit_compile=True)``
        (NMS has no XLA kernel); the backbone still runs TensorFlow's own fused kernels."""
        jit = self._jit_compile
        self._jit_compile = False
        try:
            return super().make_predict_function(force=force)
        finally:
            self._jit_compile = jit

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict`` on raw images, validated first (see :func:`check_images`)."""
        return super().predict(check_images(x, "predict"), *args, **kwargs)

    def predict_on_batch(self, x):
        """``keras.Model.predict_on_batch``, validated first (see :func:`check_images`)."""
        return super().predict_on_batch(check_images(x, "predict_on_batch"))

    def predict_step(self, data):
        """Raw images -> :attr:`transform` -> detections, boxes back in the input's pixels.

        ``fit`` pads raw pixels with zeros, as the training pipeline does, and runs the frame as
        training does; the other rules (torchvision's) normalise before resizing and pad the
        normalised images with zeros, as torchvision does.
        """
        if isinstance(data, (tuple, list)):
            data = data[0]
        if isinstance(data, dict):
            data = data["images"]
        self._mark_xla_step(False)
        images = ops.cast(data, "float32")
        shape = ops.shape(images)
        fit = self.transform.resize_mode == "fit"
        if not fit:
            images = self.preprocess(images)
        frame, size = self.transform.resize(images, portable=self.portable_graph)
        detections = self(frame, training=False) if fit else self.detect(frame, size)
        boxes = self.transform.unmap_boxes(detections["boxes"], shape[1:3], size)
        boxes = clip_boxes(boxes, shape[1], shape[2])
        valid = ops.expand_dims(detections["labels"] >= 0, -1)
        detections["boxes"] = ops.where(valid, boxes, 0.0)
        return detections

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        classes: Sequence[str] | None = None,
        **kwargs,
    ):
        """Keras' ``Model.export`` for a detector: ``format`` is ``tf_saved_model``, ``onnx`` or
        ``litert``, each taking raw uint8 RGB images and returning the TF OD API detection
        outputs (see :mod:`kdetect.apps.export`; ONNX and LiteRT files take one image of any size).

        ``classes``: class names stored with the export (default ``class_0``...). Keyword
        options: ``input_type`` (SavedModel's ``serving_default``), ``opset_version`` (ONNX),
        ``quantize`` (LiteRT: ``float16`` or ``dynamic``). ``input_signature`` cannot be
        changed (the signature is uint8 ``[batch, height, width, 3]``). Returns the path.
        """
        del verbose  # the exporters keep their logging off the console either way
        if format not in exporting.KERAS_FORMATS:
            raise exporting.ExportError(
                f"format: expected one of {', '.join(exporting.KERAS_FORMATS)}, got {format!r}"
            )
        if input_signature is not None:
            raise exporting.ExportError(
                f"input_signature: a {type(self).__name__} export always takes uint8 [batch, "
                "height, width, 3] images (any size); leave it unset"
            )
        options = {
            "input_type": kwargs.pop("input_type", "encoded_image_string_tensor"),
            "opset": kwargs.pop("opset_version", None) or exporting.DEFAULT_OPSET,
            "quantize": kwargs.pop("quantize", None),
        }
        if kwargs:
            raise exporting.ExportError(f"export: unknown option(s) {', '.join(sorted(kwargs))}")
        return exporting.export_model(
            self, filepath, exporting.KERAS_FORMATS[format], classes=classes, **options
        )
