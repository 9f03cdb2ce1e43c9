"""kdetect's NMS, RoIAlign(aligned=False) and min_max resize against torchvision's own ops.

Edge cases where conventions differ: IoU exactly at the threshold (torchvision suppresses only
above it), equal scores, RoIs smaller than a feature pixel or partly outside the map, and the
float32 rounding of the resized size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdetect.layers import MultiLevelRoIAlign
from kdetect.models.faster_rcnn import FasterRCNN
from kdetect.ops.tf_ops import multiclass_nms, nms_padded
from tests.torch_peer import run_torch

_NMS = """
import json, sys, torch, torchvision
cases = json.loads(sys.argv[1])
out = []
for case in cases:
    boxes = torch.tensor(case["boxes"], dtype=torch.float32)
    scores = torch.tensor(case["scores"], dtype=torch.float32)
    keep = torchvision.ops.nms(boxes, scores, case["iou"])
    out.append(keep.tolist())
print(json.dumps(out))
"""

# Boxes whose IoU is exactly 0.5 (integer corners): [0, 0, 3, 1] vs [1, 0, 4, 1] share 2 of 4.
NMS_CASES = [
    {"boxes": [[0, 0, 3, 1], [1, 0, 4, 1]], "scores": [0.9, 0.8], "iou": 0.5},  # IoU == thr
    {"boxes": [[0, 0, 3, 1], [1, 0, 4, 1]], "scores": [0.9, 0.8], "iou": 0.49},  # just above
    {"boxes": [[0, 0, 2, 2], [0, 0, 2, 2], [5, 5, 6, 6]], "scores": [0.5, 0.7, 0.1], "iou": 0.7},
    {"boxes": [[-4, -4, -1, -1], [-4, -4, -2, -1], [0, 0, 0, 0]], "scores": [0.3, 0.2, 0.9],
     "iou": 0.5},  # negative coordinates and an empty box
    {"boxes": [[0, 0, 10, 10], [0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 5, 10]],
     "scores": [0.6, 0.9, 0.8, 0.7], "iou": 0.5},  # each IoU with the big box is exactly 0.5
]  # fmt: skip


@pytest.fixture(scope="module")
def torch_nms():
    return json.loads(run_torch(_NMS, json.dumps(NMS_CASES)))


@pytest.mark.parametrize("index", range(len(NMS_CASES)))
def test_nms_suppresses_only_above_the_threshold_like_torchvision(torch_nms, index):
    case = NMS_CASES[index]
    boxes = np.asarray(case["boxes"], np.float32)[None]
    scores = np.asarray(case["scores"], np.float32)[None]
    indices, count = nms_padded(boxes, scores, 8, case["iou"])
    assert np.asarray(indices)[0, : int(count[0])].tolist() == torch_nms[index]
    # The final per-class NMS follows the same rule (one class here).
    _, kept_scores, _, num = multiclass_nms(
        boxes[:, :, None], scores[:, :, None], 8, case["iou"], 0.0
    )
    expected = sorted((case["scores"][i] for i in torch_nms[index]), reverse=True)
    expected = [s for s in expected if s > 0.0]
    np.testing.assert_allclose(np.asarray(kept_scores)[0, : int(num[0])], expected, rtol=1e-6)


_ROI_ALIGN = """
import sys, numpy as np, torch, torchvision
data = np.load(sys.argv[1])
features = torch.from_numpy(data["features"]).permute(0, 3, 1, 2)
rois = torch.from_numpy(data["rois"])
out = torchvision.ops.roi_align(features, [rois], output_size=7, spatial_scale=0.25,
                                sampling_ratio=2, aligned=False)
np.save(sys.argv[2], out.permute(0, 2, 3, 1).numpy())
"""


@pytest.mark.parametrize("method", ["gather", "crop_and_resize"])
def test_unaligned_roi_align_equals_torchvision(tmp_path, method):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1, 13, 17, 3)).astype(np.float32)
    rois = np.array(
        [
            [4.0, 4.0, 40.0, 30.0],  # ordinary
            [10.0, 10.0, 11.0, 10.5],  # smaller than a feature pixel (size clamped to 1)
            [-8.0, -6.0, 20.0, 12.0],  # partly outside, top-left
            [50.0, 40.0, 75.0, 60.0],  # partly outside, bottom-right (map is 68 x 52 px)
            [0.0, 0.0, 68.0, 52.0],  # the whole map
            [33.3, 17.7, 33.3, 17.7],  # empty
        ],
        np.float32,
    )
    np.savez(tmp_path / "in.npz", features=features, rois=rois)
    run_torch(_ROI_ALIGN, tmp_path / "in.npz", tmp_path / "out.npy")
    expected = np.load(tmp_path / "out.npy")
    layer = MultiLevelRoIAlign((4,), 7, 2, aligned=False, method=method)
    pooled = np.asarray(layer([features], rois[None]))[0]
    np.testing.assert_allclose(pooled, expected, atol=1e-5)


_SIZES = """
import json, sys, torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform
transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
sizes = []
for h, w in json.loads(sys.argv[1]):
    images, _ = transform([torch.zeros(3, h, w)])
    sizes.append(list(images.image_sizes[0]) + list(images.tensors.shape[-2:]))
print(json.dumps(sizes))
"""


def test_min_max_size_rounds_like_torchvision():
    rng = np.random.default_rng(1)
    sizes = [(194, 259), (640, 480), (304, 600), (1920, 1440), (480, 640), (5, 3000)]
    sizes += [tuple(int(v) for v in rng.integers(8, 2200, size=2)) for _ in range(150)]
    expected = json.loads(run_torch(_SIZES, json.dumps(sizes)))
    model = FasterRCNN(num_classes=2, backbone="tiny", resize_mode="min_max", image_size=(64, 64))
    for (h, w), (eh, ew, fh, fw) in zip(sizes, expected, strict=True):
        new_h, new_w = (int(v) for v in model.transform.resized_size(h, w))
        assert (new_h, new_w) == (eh, ew), (h, w)
        assert ((new_h + 31) // 32 * 32, (new_w + 31) // 32 * 32) == (fh, fw)
