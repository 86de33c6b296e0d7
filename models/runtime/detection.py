"""The fracture detector: MONAI's 2D RetinaNet, trained from the data's fracture boxes.

A bundle trained on data with boxes (FracAtlas, GRAZPEDWRI-DX, the CSV layout's box
columns, the phantoms) may carry a detector beside stage 2. Where it does, the node's box
on a flagged view is the detector's best box instead of Grad-CAM's hottest region;
Grad-CAM stays the heatmap.

The network is ``monai.apps.detection``'s :class:`RetinaNet` and
:class:`RetinaNetDetector` (anchors, ATSS matching, hard-negative sampling, box
coding, non-maximum suppression). Two parts of that package reach for torchvision, which
has no build beside this project's CPU torch: the backbone helper (torchvision's
``IntermediateLayerGetter``) and the default matcher's type check. So the feature
extractor here is MONAI's ResNet under MONAI's :class:`FeaturePyramidNetwork`
(:class:`ResNetFeaturePyramid`), and :class:`FractureDetector` overrides
``compute_anchor_matched_idxs`` for the ATSS matcher, as MONAI's error message there
invites; ``tests/models/test_detection.py`` pins both to the installed MONAI.

Boxes are MONAI's ``StandardMode`` (``x1, y1, x2, y2`` along the array's axes: rows,
then columns) in model-input pixels; :func:`detect_boxes` returns them as this project's
inclusive ``(row_min, col_min, row_max, col_max)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

__all__ = [
    "BOX_KEY",
    "LABEL_KEY",
    "DetectedBox",
    "DetectorSpec",
    "FractureDetector",
    "ResNetFeaturePyramid",
    "build_detector",
    "detect_boxes",
    "inclusive_box",
]

#: Keys of a training target (MONAI's detector reads them by name).
BOX_KEY, LABEL_KEY = "box", "label"

#: Stride of the first feature map the heads see (ResNet's layer2: conv1, pool, layer2).
_FIRST_STRIDE = 8


class DetectorSpec(BaseModel):
    """A detector as data (bundle metadata): backbone, anchors and the box selection.

    Parameters
    ----------
    backbone_channels
        Channels of the ResNet's four stages (a small ResNet-10 by default).
    feature_channels
        Channels of the feature pyramid.
    anchor_sides
        Sides in model-input pixels of the square anchors at the finest level; each
        coarser level (three in all) doubles them.
    score_threshold
        Least detection score kept by the box selector.
    report_score
        Least score of a box the node draws; below it the view keeps Grad-CAM's box.
    nms_threshold
        IoU above which the weaker of two boxes is dropped.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone_channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    feature_channels: int = Field(default=32, ge=4)
    anchor_sides: tuple[int, ...] = Field(default=(8, 12, 16), min_length=1)
    score_threshold: float = Field(default=0.02, ge=0.0, le=1.0)
    report_score: float = Field(default=0.3, ge=0.0, le=1.0)
    nms_threshold: float = Field(default=0.22, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _sides(self) -> DetectorSpec:
        if any(side < 1 for side in self.anchor_sides):
            raise ValueError(f"anchor_sides {list(self.anchor_sides)} must be positive")
        if self.report_score < self.score_threshold:
            raise ValueError(
                f"report_score {self.report_score} is below score_threshold "
                f"{self.score_threshold}: such boxes are never kept"
            )
        return self


class ResNetFeaturePyramid(nn.Module):
    """MONAI's 2D ResNet (one block a stage) with a feature pyramid on stages 2 and 3.

    Returns three maps (strides 8, 16 and 32 of the input), each ``feature_channels``
    wide: what MONAI's :class:`RetinaNet` takes as its ``feature_extractor``.
    """

    def __init__(self, backbone_channels: tuple[int, ...], feature_channels: int) -> None:
        super().__init__()
        self.body = resnet.ResNet(
            block=resnet.ResNetBlock,
            layers=[1, 1, 1, 1],
            block_inplanes=list(backbone_channels),
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=2,
        )
        self.pyramid = FeaturePyramidNetwork(
            spatial_dims=2,
            in_channels_list=list(backbone_channels[1:3]),
            out_channels=feature_channels,
            extra_blocks=LastLevelMaxPool(2),
        )
        self.out_channels = feature_channels  # RetinaNet reads it

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        body = self.body
        x = body.maxpool(body.act(body.bn1(body.conv1(images))))
        stage2 = body.layer2(body.layer1(x))
        stage3 = body.layer3(stage2)
        return self.pyramid(OrderedDict([("stage2", stage2), ("stage3", stage3)]))


class FractureDetector(RetinaNetDetector):
    """MONAI's RetinaNet detector with the ATSS matcher, without torchvision.

    MONAI's ``compute_anchor_matched_idxs`` first tests for torchvision's ``Matcher``,
    which fails where torchvision is not installed; its error message asks a caller with
    another matcher to override the method. This override is its ATSS branch.
    ``spec`` is what :func:`build_detector` built it from (the bundle stores it).
    """

    spec: DetectorSpec

    def compute_anchor_matched_idxs(
        self,
        anchors: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_anchor_locs_per_level: list[int],
    ) -> list[torch.Tensor]:
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            raise NotImplementedError("FractureDetector matches anchors with ATSS only")
        matched = []
        for anchors_per_image, target in zip(anchors, targets, strict=True):
            boxes = target[self.target_box_key]
            if boxes.numel() == 0:  # an image without a break: every anchor is background
                matched.append(
                    torch.full((anchors_per_image.size(0),), -1, device=anchors_per_image.device)
                )
                continue
            _, indices = self.proposal_matcher(
                boxes.to(anchors_per_image.device),
                anchors_per_image,
                num_anchor_locs_per_level,
                self.num_anchors_per_loc,
            )
            matched.append(indices)
        return matched


def build_detector(spec: DetectorSpec) -> FractureDetector:
    """A randomly initialised detector of ``spec``, set up for training and inference."""
    extractor = ResNetFeaturePyramid(spec.backbone_channels, spec.feature_channels)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=(1, 2, 4),
        base_anchor_shapes=[(side, side) for side in spec.anchor_sides],
    )
    network = RetinaNet(
        spatial_dims=2,
        num_classes=1,
        num_anchors=len(spec.anchor_sides),
        feature_extractor=extractor,
        size_divisible=(_FIRST_STRIDE * 4, _FIRST_STRIDE * 4),
    )
    detector = FractureDetector(
        network=network,
        anchor_generator=anchors,
        spatial_dims=2,
        num_classes=1,
        size_divisible=(_FIRST_STRIDE * 4, _FIRST_STRIDE * 4),
    )
    detector.spec = spec
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
    )
    detector.set_target_keys(box_key=BOX_KEY, label_key=LABEL_KEY)
    detector.set_box_selector_parameters(
        score_thresh=spec.score_threshold,
        topk_candidates_per_level=100,
        nms_thresh=spec.nms_threshold,
        detections_per_img=5,
    )
    return detector


@dataclass(frozen=True)
class DetectedBox:
    """The detector's best box on an image: inclusive model-input pixels and its score."""

    box: tuple[int, int, int, int]
    score: float


def detect_boxes(
    detector: FractureDetector, images: torch.Tensor, min_score: float
) -> list[DetectedBox | None]:
    """The best box per image of a (N, 1, S, S) batch, None where none reaches ``min_score``."""
    detector.eval()
    size = images.shape[-1]
    with torch.no_grad():
        outputs = detector([image for image in images], use_inferer=False)
    found: list[DetectedBox | None] = []
    for output in outputs:
        scores = output[f"{LABEL_KEY}_scores"]
        if scores.numel() == 0 or float(scores.max()) < min_score:
            found.append(None)
            continue
        best = int(torch.argmax(scores))
        box = inclusive_box(output[BOX_KEY][best].tolist(), size)
        found.append(DetectedBox(box, float(scores[best])))
    return found


def inclusive_box(corners: list[float], size: int) -> tuple[int, int, int, int]:
    """MONAI's ``(r1, c1, r2, c2)`` corners as inclusive pixel indices inside the image."""
    r1, c1, r2, c2 = corners
    row_min = _clamp(math.floor(r1), 0, size - 1)
    col_min = _clamp(math.floor(c1), 0, size - 1)
    row_max = _clamp(math.ceil(r2) - 1, row_min, size - 1)
    col_max = _clamp(math.ceil(c2) - 1, col_min, size - 1)
    return row_min, col_min, row_max, col_max


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(int(value), low), high)
