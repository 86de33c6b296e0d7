"""Training and scoring the fracture detector (:mod:`models.runtime.detection`).

The detector learns from the images whose break is boxed (and from the negatives, which
teach it where no break is); positives without a box are left out, since their break
could be anywhere. It is scored like MONAI's detection tutorials: COCO average precision
(``monai.apps.detection.metrics``) at IoU 0.1 and 0.5, and the FROC sensitivity at
1/8 to 8 false positives per image (``monai.metrics.froc``), counting a detection as
true where it overlaps an unmatched true box by IoU 0.1 or more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import compute_froc_curve_data, compute_froc_score

from models.runtime.detection import (
    BOX_KEY,
    LABEL_KEY,
    DetectorSpec,
    FractureDetector,
    build_detector,
)
from models.runtime.preprocessing import preprocess
from models.training.config import TrainConfig
from models.training.datasets import ImageRecord, load_display_image
from models.training.progress import progress_bar

__all__ = [
    "DetectionSample",
    "detection_metrics",
    "detection_samples",
    "fit_detector",
    "train_detector",
]

logger = logging.getLogger(__name__)

#: False positives per image at which the FROC sensitivity is read (its score is the mean).
FROC_FALSE_POSITIVES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Least IoU of a true detection (MONAI's detection tutorials use 0.1 for small lesions).
TRUE_DETECTION_IOU = 0.1


@dataclass(frozen=True)
class DetectionSample:
    """One preprocessed image and its true boxes: MONAI corners in model-input pixels."""

    image: torch.Tensor  # (1, S, S)
    boxes: torch.Tensor  # (B, 4) float32, B = 0 for an image without a break


def detection_samples(records: Sequence[ImageRecord], size: int) -> list[DetectionSample]:
    """The records a detector learns from: negatives, and positives with a known box."""
    samples = []
    for record in records:
        if record.label and record.box is None:
            continue
        image, geometry = preprocess(load_display_image(record.path), size)
        boxes = np.zeros((0, 4), np.float32)
        if record.label and record.box is not None:
            row_min, col_min, row_max, col_max = geometry.box_to_model(*record.box)
            boxes = np.asarray([[row_min, col_min, row_max + 1, col_max + 1]], np.float32)
        samples.append(DetectionSample(torch.as_tensor(image), torch.as_tensor(boxes)))
    return samples


def _targets(batch: Sequence[DetectionSample], device: torch.device) -> list[dict[str, Any]]:
    return [
        {
            BOX_KEY: sample.boxes.to(device),
            LABEL_KEY: torch.zeros(len(sample.boxes), dtype=torch.long, device=device),
        }
        for sample in batch
    ]


def train_detector(
    spec: DetectorSpec,
    samples: Sequence[DetectionSample],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
) -> FractureDetector:
    """Train a detector of ``spec`` on ``samples`` (AdamW, cosine-annealed learning rate)."""
    if not any(len(sample.boxes) for sample in samples):
        raise ValueError("no sample has a fracture box: a detector cannot be trained")
    torch.manual_seed(seed)
    detector = build_detector(spec)
    detector.network.to(device)
    detector.train()
    optimiser = torch.optim.AdamW(detector.network.parameters(), lr=learning_rate)
    steps = epochs * max(1, -(-len(samples) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    with progress_bar(progress, "detector", steps) as advance:
        for _ in range(epochs):
            order = torch.randperm(len(samples), generator=generator).tolist()
            for start in range(0, len(order), batch_size):
                batch = [samples[k] for k in order[start : start + batch_size]]
                images = [sample.image.to(device) for sample in batch]
                losses = detector(images, _targets(batch, device))
                loss = losses[detector.cls_key] + losses[detector.box_reg_key]
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                advance(1)
    detector.eval()
    return detector


def fit_detector(
    config: TrainConfig,
    train_records: Sequence[ImageRecord],
    val_records: Sequence[ImageRecord],
    device: torch.device,
    progress: bool = False,
) -> tuple[FractureDetector | None, dict[str, Any]]:
    """The training run's detector and its validation figures, when ``config`` asks for
    one (``detector_epochs``) and the training images of the bundle's regions have boxes."""
    if not config.detector_epochs:
        return None, {}
    samples = detection_samples(train_records, config.image_size)
    if not any(len(sample.boxes) for sample in samples):
        logger.info("no training image has a fracture box: no detector")
        return None, {"detector": "not trained: no training image has a fracture box"}
    spec = DetectorSpec()
    detector = train_detector(
        spec,
        samples,
        config.detector_epochs,
        config.batch_size,
        config.detector_learning_rate,
        device,
        seed=config.seed,
        progress=progress,
    )
    figures = detection_metrics(detector, detection_samples(val_records, config.image_size), device)
    logger.info("detector trained: %s", figures)
    return detector, {"detector_validation": figures}


def detection_metrics(
    detector: FractureDetector, samples: Sequence[DetectionSample], device: torch.device
) -> dict[str, Any]:
    """COCO AP at IoU 0.1 and 0.5, and the FROC sensitivities, of ``detector`` on ``samples``."""
    detector.eval()
    predicted = []
    with torch.no_grad():
        for start in range(0, len(samples), 16):
            batch = [sample.image.to(device) for sample in samples[start : start + 16]]
            predicted += detector(batch, use_inferer=False)
    boxes = [p[BOX_KEY].cpu().numpy() for p in predicted]
    scores = [p[f"{LABEL_KEY}_scores"].cpu().numpy() for p in predicted]
    truth = [sample.boxes.numpy() for sample in samples]
    coco = COCOMetric(
        classes=["fracture"], iou_list=(TRUE_DETECTION_IOU, 0.5), max_detection=(5,), verbose=False
    )
    matches = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=coco.iou_thresholds,
        pred_boxes=boxes,
        pred_classes=[np.zeros(len(s), int) for s in scores],
        pred_scores=scores,
        gt_boxes=truth,
        gt_classes=[np.zeros(len(t), int) for t in truth],
        max_detections=5,
    )
    average_precision = coco(matches)[0]
    targets = int(sum(len(t) for t in truth))
    threshold = int(np.argmin(np.abs(coco.iou_thresholds - TRUE_DETECTION_IOU)))
    return {
        "detector_images": len(samples),
        "detector_true_boxes": targets,
        "detector_ap_iou_0_1": round(float(average_precision["fracture_AP_IoU_0.10_MaxDet_5"]), 4),
        "detector_ap_iou_0_5": round(float(average_precision["fracture_AP_IoU_0.50_MaxDet_5"]), 4),
        **_froc(matches, threshold, targets, len(samples)),
    }


def _froc(
    matches: list[dict[int, dict[str, np.ndarray]]], threshold: int, targets: int, images: int
) -> dict[str, Any]:
    """FROC from MONAI's matching (``matching_batch``) at its ``threshold``-th IoU: each
    detection true where it matched a true box, false otherwise."""
    true_scores: list[float] = []
    false_scores: list[float] = []
    for image in matches:
        for found in image.values():
            kept = ~found["dtIgnore"][threshold].astype(bool)
            hit = found["dtMatches"][threshold].astype(bool)
            true_scores += found["dtScores"][kept & hit].tolist()
            false_scores += found["dtScores"][kept & ~hit].tolist()
    if not targets:
        return {"detector_froc_score": None}
    fps_per_image, sensitivity = compute_froc_curve_data(
        np.asarray(false_scores), np.asarray(true_scores), targets, images
    )
    at = compute_froc_score(fps_per_image, sensitivity, FROC_FALSE_POSITIVES)
    return {
        "detector_froc_score": round(float(at), 4),
        "detector_froc_points": {
            str(fp): round(float(np.interp(fp, fps_per_image[::-1], sensitivity[::-1])), 4)
            for fp in FROC_FALSE_POSITIVES
        },
    }
