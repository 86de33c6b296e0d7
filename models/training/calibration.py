"""Temperature scaling: the one calibration parameter per network that a bundle carries."""

from __future__ import annotations

import numpy as np
import torch


def fit_temperature(logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> float:
    """Temperature scaling: the T > 0 that minimises the NLL of ``logits / T`` on ``targets``.

    Parameters
    ----------
    logits
        (N, C) multi-class logits with integer ``targets`` (N,), or (N, 1) / (N,) binary
        logits with 0/1 ``targets``; (N, 2) softmax fracture logits count as multi-class.
    targets
        Class indices or 0/1 labels.

    Returns
    -------
    float
        The temperature, clipped to [0.05, 20] (1.0 for an empty set).
    """
    logits = torch.as_tensor(logits, dtype=torch.float64).detach()
    targets = torch.as_tensor(targets).detach()
    if logits.shape[0] == 0:
        return 1.0
    binary = logits.dim() == 1 or logits.shape[1] == 1
    if binary:
        logits = logits.reshape(-1)
        targets = targets.reshape(-1).to(torch.float64)
        loss_fn = torch.nn.BCEWithLogitsLoss()
    else:
        targets = targets.reshape(-1).to(torch.long)
        loss_fn = torch.nn.CrossEntropyLoss()
    # Grid search on log T, then Newton-free refinement by a finer grid: robust, no LBFGS quirks.
    best_t, best_loss = 1.0, float("inf")
    for grid in (np.linspace(-3.0, 3.0, 61), None):
        if grid is None:
            centre = np.log(best_t)
            grid = np.linspace(centre - 0.1, centre + 0.1, 41)
        for log_t in grid:
            t = float(np.exp(log_t))
            loss = float(loss_fn(logits / t, targets))
            if loss < best_loss:
                best_t, best_loss = t, loss
    return float(np.clip(best_t, 0.05, 20.0))
