"""Fitting the pixel gate: the out-of-distribution limit and stage 1's confidence floor.

Both are chosen on the validation images of the bundle's regions, after temperature
scaling, so that each lets through the stated share of in-distribution images
(``TrainConfig.in_distribution_acceptance``). The floor was once a fixed 0.5 chosen
before calibration; temperature scaling sharpens the probabilities, so a fixed floor let
more images through than it was meant to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.runtime.metadata import PixelGate
from models.runtime.ood import FeatureDistance


@dataclass(frozen=True)
class StageOneOutputs:
    """Stage 1 on a set of images: raw logits, class targets and penultimate features."""

    logits: torch.Tensor  # (N, C)
    targets: torch.Tensor  # (N,)
    features: torch.Tensor  # (N, D)

    @property
    def in_distribution(self) -> torch.Tensor:
        """Mask of the images of the bundle's regions ('unsupported' is the last class)."""
        return self.targets != self.logits.shape[1] - 1


@dataclass(frozen=True)
class FittedPixelGate:
    """The gate's metadata and statistics, the calibrated floor and what they did on val."""

    gate: PixelGate
    statistics: FeatureDistance
    region_min_probability: float
    validation: dict[str, Any]


def fit_pixel_gate(
    train: StageOneOutputs,
    val: StageOneOutputs,
    temperature: float,
    acceptance: float,
    least_floor: float,
) -> FittedPixelGate:
    """The gate for ``acceptance`` of the validation images of the bundle's regions.

    The feature statistics come from the training images of the bundle's regions; the
    limit and the floor from the validation ones. The floor is never below ``least_floor``.

    Raises
    ------
    ValueError
        If either split has no image of the bundle's regions.
    """
    if not bool(train.in_distribution.any()) or not bool(val.in_distribution.any()):
        raise ValueError("the pixel gate needs training and validation images of the regions")
    keep = train.in_distribution
    statistics = FeatureDistance.fit(train.features[keep], train.targets[keep])
    with torch.no_grad():
        distances = statistics(val.features).numpy()
    confidence = torch.softmax(val.logits / temperature, dim=1).max(dim=1).values.numpy()
    inside = val.in_distribution.numpy()
    # Rounded outwards, so that rounding never rejects an image the quantile accepts.
    limit = math.ceil(float(np.quantile(distances[inside], acceptance, method="higher")) * 100)
    max_distance = limit / 100
    quantile = float(np.quantile(confidence[inside], 1 - acceptance, method="lower"))
    floor = max(least_floor, math.floor(quantile * 10000) / 10000)
    gate = PixelGate(
        max_distance=max_distance,
        in_distribution_acceptance=acceptance,
        fitted_on=(
            f"statistics of {int(keep.sum())} training images, limit on "
            f"{int(inside.sum())} validation images of the bundle's regions"
        ),
    )
    outside = ~inside
    validation = {
        "in_distribution_images": int(inside.sum()),
        "in_distribution_passed_distance": _share(distances[inside] <= max_distance),
        "in_distribution_passed_floor": _share(confidence[inside] >= floor),
        "unsupported_images": int(outside.sum()),
        "unsupported_stopped_by_distance": _share(distances[outside] > max_distance),
    }
    return FittedPixelGate(gate, statistics, floor, validation)


def _share(mask: np.ndarray) -> float | None:
    return round(float(mask.mean()), 4) if mask.size else None
