"""Ops: box formats and coding, anchors, matching, the loss functions and TensorFlow-only
kernels."""
