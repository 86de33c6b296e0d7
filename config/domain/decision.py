"""Study-level decisions from per-image model outputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from config import REGIONS

#: Study aggregation methods a bundle may name.
AGGREGATIONS: tuple[str, ...] = ("mean", "max")


def aggregate_study(probabilities: Sequence[float], method: str = "mean") -> float:
    """Combine the fracture probabilities of a study's images into one.

    Parameters
    ----------
    probabilities
        Per-image probabilities in [0, 1].
    method
        ``"mean"`` (MURA's study-level rule) or ``"max"`` (most suspicious view).

    Returns
    -------
    float
        The study probability.

    Raises
    ------
    ValueError
        If ``probabilities`` is empty, holds a value outside [0, 1] or NaN, or the method
        is unknown.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {method!r}; expected one of {AGGREGATIONS}")
    values = np.asarray(list(probabilities), dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot aggregate an empty list of probabilities")
    bad = values[~((values >= 0.0) & (values <= 1.0))]
    if bad.size:
        raise ValueError(f"probability {bad[0]} is not in [0, 1]")
    return float(values.mean() if method == "mean" else values.max())


def study_region(regions: Sequence[str | None]) -> str | None:
    """The study's region: majority of the images' supported regions, None if none.

    Ties go to the region seen first, so the result does not depend on set ordering.

    Raises
    ------
    ValueError
        If an entry is neither None nor one of :data:`config.REGIONS`.
    """
    supported = []
    for region in regions:
        if region is None:
            continue
        if region not in REGIONS:
            raise ValueError(f"unknown region {region!r}; expected one of {REGIONS} or None")
        supported.append(region)
    if not supported:
        return None
    counts = Counter(supported)
    best = max(counts.values())
    return next(region for region in supported if counts[region] == best)
