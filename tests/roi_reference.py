"""A NumPy loop reference of RoIAlign (Detectron2's aligned=True, torchvision's bilinear
boundary rules, FPN level assignment), and random pyramids and boxes to compare it on.
"""

from __future__ import annotations

import math

import numpy as np

# RoIAlign reference. For one RoI it builds the dense matrix M [out*out, H*W] of the level it
# reads, so that pooled = M @ F and d(sum(G * pooled))/dF = M^T @ G (RoIAlign is linear in F).


def ref_bilinear_weights(height, width, y, x):
    """{(row, col): weight} of one sample, torchvision/Detectron2 bilinear_interpolate."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return {}
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(math.floor(y)), int(math.floor(x))
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    out = {}
    for key, w in (
        ((y_low, x_low), hy * hx),
        ((y_low, x_high), hy * lx),
        ((y_high, x_low), ly * hx),
        ((y_high, x_high), ly * lx),
    ):
        out[key] = out.get(key, 0.0) + w
    return out


def ref_roi_align_matrix(box, height, width, scale, out_size, sr):
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    start_x, start_y = x1 - 0.5, y1 - 0.5  # aligned=True
    bin_w, bin_h = (x2 - x1) / out_size, (y2 - y1) / out_size
    m = np.zeros((out_size * out_size, height * width), np.float64)
    for ph in range(out_size):
        for pw in range(out_size):
            for iy in range(sr):
                y = start_y + ph * bin_h + (iy + 0.5) * bin_h / sr
                for ix in range(sr):
                    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / sr
                    for (r, c), w in ref_bilinear_weights(height, width, y, x).items():
                        m[ph * out_size + pw, r * width + c] += w / (sr * sr)
    return m


def ref_level(box, min_level, max_level):
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    level = math.floor(4 + math.log2(math.sqrt(area) / 224.0) + 1e-6)
    return min(max(level, min_level), max_level)


def ref_multilevel_roi_align(features, boxes, strides, out_size, sr, min_level=2):
    """features: list of [B, H, W, C]; boxes [B, R, 4] -> ([B, R, S, S, C], levels [B, R])."""
    b_count, r_count = boxes.shape[:2]
    c = features[0].shape[-1]
    out = np.zeros((b_count, r_count, out_size, out_size, c))
    levels = np.zeros((b_count, r_count), np.int64)
    for b in range(b_count):
        for r in range(r_count):
            if len(features) == 1:
                li = 0
            else:
                li = ref_level(boxes[b, r], min_level, min_level + len(features) - 1) - min_level
            levels[b, r] = li
            _, h, w, _ = features[li].shape
            m = ref_roi_align_matrix(boxes[b, r], h, w, 1.0 / strides[li], out_size, sr)
            pooled = m @ features[li][b].reshape(h * w, c).astype(np.float64)
            out[b, r] = pooled.reshape(out_size, out_size, c)
    return out, levels


def random_pyramid(rng, batch=2, size=(128, 96), channels=3):
    strides = [4, 8, 16, 32]
    feats = [
        rng.normal(size=(batch, size[0] // s, size[1] // s, channels)).astype(np.float32)
        for s in strides
    ]
    return feats, strides


def multilevel_boxes(rng, batch, rois, size):
    h, w = size
    out = []
    for _ in range(batch * rois):
        side = math.exp(rng.uniform(math.log(8), math.log(700)))  # spans levels 2..5
        aspect = math.exp(rng.uniform(-0.7, 0.7))
        bw, bh = side * aspect, side / aspect
        cx, cy = rng.uniform(-10, w + 10), rng.uniform(-10, h + 10)
        out.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return np.array(out, np.float32).reshape(batch, rois, 4)
