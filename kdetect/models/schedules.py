"""Learning-rate schedules of the recipes: constant, warm-up + step decay, warm-up + cosine.

One serialisable :class:`WarmupSchedule` covers the three, so checkpoints that hold the
optimizer (and its schedule) load back with ``keras.saving.load_model`` once this module is
imported (:func:`kdetect.models.registry.register_all` imports it, as the training engine does).
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kdetect")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up followed by a constant, step-decayed or cosine-decayed learning rate.

    Args:
        base_lr: the learning rate reached at the end of the warm-up.
        kind: ``"constant"``, ``"step"`` or ``"cosine"``.
        total_steps: steps of the whole run (the cosine decays to ``min_lr_factor`` over it).
        warmup_steps: steps of the linear warm-up; 0 disables it.
        warmup_factor: learning-rate factor at step 0 of the warm-up.
        milestones: step schedule: global steps after which the rate is multiplied by ``gamma``.
        gamma: step schedule: decay factor.
        min_lr_factor: cosine schedule: final rate as a fraction of ``base_lr``.
    """

    def __init__(
        self,
        base_lr: float,
        kind: str = "constant",
        total_steps: int = 1,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
        min_lr_factor: float = 0.0,
    ):
        if kind not in ("constant", "step", "cosine"):
            raise ValueError(f"kind must be constant, step or cosine, got {kind!r}")
        self.base_lr = float(base_lr)
        self.kind = kind
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.min_lr_factor = float(min_lr_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.kind == "step":
            passed = ops.zeros((), "float32")
            for milestone in self.milestones:
                passed = passed + ops.cast(step >= milestone, "float32")
            lr = lr * ops.power(ops.convert_to_tensor(self.gamma, "float32"), passed)
        elif self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
            lr = lr * (self.min_lr_factor + (1.0 - self.min_lr_factor) * cosine)
        if self.warmup_steps > 0:
            alpha = ops.clip(step / self.warmup_steps, 0.0, 1.0)
            factor = self.warmup_factor * (1.0 - alpha) + alpha
            lr = lr * factor
        return lr

    def get_config(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "kind": self.kind,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "min_lr_factor": self.min_lr_factor,
        }
