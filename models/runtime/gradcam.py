"""Grad-CAM / Grad-CAM++ heatmaps (via ``monai.visualize``) with hot = high, and the hot box.

MONAI's default post-processing (``default_normalizer``) maps (min, max) to (1, 0), i.e.
it *inverts* the map. We pass our own normaliser that scales each map to [0, 1] by its
maximum, so 1 is the strongest evidence and 0 none (Grad-CAM ends with a ReLU, so the
minimum is already 0 where no evidence exists).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp
from scipy import ndimage
from torch import nn

logger = logging.getLogger(__name__)

#: Neighbours of a pixel in the hot region: its 8 (diagonals join a thin oblique break).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

#: Supported CAM methods.
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcampp")


def unit_max_normaliser(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a (N, 1, ...) batch to [0, 1] by its own maximum (hot = high).

    Negative values (none after Grad-CAM's ReLU) are clipped to 0; an all-zero map stays 0.
    """
    maps = torch.clamp(maps.detach(), min=0.0)
    peak = maps.flatten(1).amax(dim=1).view(-1, *([1] * (maps.dim() - 1)))
    return torch.where(peak > 0, maps / torch.clamp(peak, min=1e-12), torch.zeros_like(maps))


class CamExplainer:
    """Grad-CAM(++) for one network and one target layer.

    MONAI's CAM classes register hooks permanently (and switch in-place activations off),
    so the explainer works on a private deep copy and leaves the caller's network intact.

    Parameters
    ----------
    network
        A classification network taking (N, C, H, W) and returning (N, classes) logits.
    target_layer
        Name of the layer in ``network.named_modules()`` to explain.
    method
        ``"gradcam"`` or ``"gradcampp"``.
    """

    def __init__(self, network: nn.Module, target_layer: str, method: str = "gradcam") -> None:
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; expected one of {CAM_METHODS}")
        names = {name for name, _ in network.named_modules()}
        if target_layer not in names:
            raise ValueError(f"target layer {target_layer!r} is not a module of the network")
        self.network = copy.deepcopy(network).eval()
        cam_class = GradCAM if method == "gradcam" else GradCAMpp
        self.cam = cam_class(
            nn_module=self.network, target_layers=target_layer, postprocessing=unit_max_normaliser
        )
        # The explained forward pass computes the logits anyway: keep them, so a caller
        # needs no second forward pass to classify (explain_with_logits).
        self._logits: torch.Tensor | None = None
        self.network.register_forward_hook(self._keep_logits)

    def _keep_logits(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._logits = output.detach()

    def __call__(self, images: torch.Tensor, class_index: int) -> np.ndarray:
        """Heatmaps of ``class_index`` for a batch.

        Parameters
        ----------
        images
            Tensor (N, C, H, W) on the network's device.
        class_index
            Output logit to explain.

        Returns
        -------
        numpy.ndarray
            float32 (N, H, W) in [0, 1], hot = high.
        """
        return self.explain_with_logits(images, class_index)[0]

    def explain_with_logits(
        self, images: torch.Tensor, class_index: int, **forward: torch.Tensor
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Heatmaps as :meth:`__call__` does, and the logits of the same forward pass;
        ``forward`` goes to the network's forward with the images (MONAI passes it on).

        Returns
        -------
        tuple
            float32 (N, H, W) maps in [0, 1], and the (N, classes) logits (detached).
        """
        if images.dim() != 4:
            raise ValueError(f"images shape {tuple(images.shape)} is not (N, C, H, W)")
        self._logits = None
        with torch.enable_grad():  # the caller may be inside torch.no_grad()
            maps = self.cam(x=images, class_idx=class_index, **forward)
        if self._logits is None:  # pragma: no cover - the hook runs on every forward
            raise RuntimeError("the explained network produced no logits")
        return maps[:, 0].detach().cpu().numpy().astype(np.float32), self._logits


def compute_cam(
    network: nn.Module,
    images: torch.Tensor,
    target_layer: str,
    class_index: int,
    method: str = "gradcam",
) -> np.ndarray:
    """One-off Grad-CAM(++) maps, float32 (N, H, W) in [0, 1]; see :class:`CamExplainer`."""
    return CamExplainer(network, target_layer, method)(images, class_index)


def hottest_box(cam: np.ndarray, fraction: float = 0.5) -> tuple[int, int, int, int]:
    """Bounding box of the connected hot region that contains the maximum.

    Parameters
    ----------
    cam
        2D heatmap, hot = high.
    fraction
        Threshold as a fraction of the maximum, in (0, 1].

    Returns
    -------
    tuple of int
        ``(row_min, col_min, row_max, col_max)``, inclusive pixel indices.

    Raises
    ------
    ValueError
        If ``cam`` is not 2D, is empty or non-finite, or ``fraction`` is outside (0, 1].
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam shape {cam.shape} is not a non-empty 2D array")
    if not np.all(np.isfinite(cam)):
        raise ValueError("cam contains non-finite values")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is outside (0, 1]")
    seed = np.unravel_index(int(np.argmax(cam)), cam.shape)
    peak = cam[seed]
    mask = cam >= fraction * peak if peak > 0 else cam >= peak
    labels, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    rows, cols = np.nonzero(labels == labels[seed])
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())
