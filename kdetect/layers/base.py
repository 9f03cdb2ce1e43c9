"""The base of kdetect's weightless layers: proposals, sampling, RoIAlign and decoding."""

from __future__ import annotations

import keras

from kdetect.ops.boxes import BoxCoder
from kdetect.ops.matching import BalancedPositiveNegativeSampler, Matcher


class PipelineLayer(keras.layers.Layer):
    """A layer without weights that runs like a plain function of what it is given.

    Anchor and RoI sampling, proposal generation, RoIAlign and the detection decoder hold no
    weights; they are layers so that their settings travel in a model's config
    (``get_config`` / ``from_config``) and a model can be assembled with other ones. They cast
    what they need themselves (boxes and scores to float32), so Keras neither converts nor
    autocasts their inputs: under a mixed-precision policy anchors and boxes stay float32 and
    feature maps keep the backbone's dtype.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        # Keras' own switches (its preprocessing layers set them too): take arguments as they
        # are given, NumPy arrays and Python sizes included, like the functions these once were.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    def get_build_config(self):
        """None: without weights there is nothing to build, so configs hold no input shapes."""
        return None


class MatchAndSample(PipelineLayer):
    """Match candidates to ground truth, then sample a balanced batch: the shared core of the
    RPN's and the RoI head's training targets.

    A candidate whose best IoU is ``>= fg_iou_thresh`` is foreground, ``< bg_iou_thresh``
    background, otherwise ignored; ``batch_size_per_image`` are sampled with at most
    ``positive_fraction`` foreground; matched boxes are encoded by ``box_coder`` (a
    ``BoxCoder``, its config dict, or None for the subclass' default weights). An argument left
    None takes the subclass' ``DEFAULTS``. Subclasses also set whether every ground truth claims
    its best candidates whatever their IoU (``ALLOW_LOW_QUALITY_MATCHES``).
    """

    ALLOW_LOW_QUALITY_MATCHES = False
    DEFAULT_CODER_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
    DEFAULTS: dict = {}

    def __init__(
        self,
        fg_iou_thresh: float | None = None,
        bg_iou_thresh: float | None = None,
        batch_size_per_image: int | None = None,
        positive_fraction: float | None = None,
        box_coder: BoxCoder | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        given = {
            "fg_iou_thresh": fg_iou_thresh,
            "bg_iou_thresh": bg_iou_thresh,
            "batch_size_per_image": batch_size_per_image,
            "positive_fraction": positive_fraction,
        }
        settings = {k: self.DEFAULTS[k] if v is None else v for k, v in given.items()}
        self.fg_iou_thresh = float(settings["fg_iou_thresh"])
        self.bg_iou_thresh = float(settings["bg_iou_thresh"])
        self.batch_size_per_image = int(settings["batch_size_per_image"])
        self.positive_fraction = float(settings["positive_fraction"])
        self.box_coder = BoxCoder.from_value(box_coder, self.DEFAULT_CODER_WEIGHTS)
        self.matcher = Matcher(
            self.fg_iou_thresh,
            self.bg_iou_thresh,
            allow_low_quality_matches=self.ALLOW_LOW_QUALITY_MATCHES,
        )
        self.sampler = BalancedPositiveNegativeSampler(
            self.batch_size_per_image, self.positive_fraction
        )

    def get_config(self):
        return {
            **super().get_config(),
            "fg_iou_thresh": self.fg_iou_thresh,
            "bg_iou_thresh": self.bg_iou_thresh,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction,
            "box_coder": self.box_coder.get_config(),
        }
