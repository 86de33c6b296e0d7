"""Two-stage inference: region classifier, then that region's fracture classifier + Grad-CAM."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from config import REGION_CLASSES, REGIONS, UNSUPPORTED
from models.runtime.gradcam import CAM_METHODS, CamExplainer, hottest_box
from models.runtime.metadata import BundleMetadata
from models.runtime.networks import gradcam_target_layer

logger = logging.getLogger(__name__)

#: Fraction of the CAM maximum that delimits the hot box.
BOX_FRACTION = 0.5


@dataclass(frozen=True)
class ImagePrediction:
    """Model output for one image (all coordinates in model-input pixels).

    Attributes
    ----------
    region
        Supported region, or None (unsupported or not confident enough).
    region_probability
        Softmax probability of the arg-max region class.
    region_probabilities
        Probability per class of :data:`config.REGION_CLASSES`.
    fracture_probability
        Probability of a fracture from the region's network; None without a region.
    cam
        Grad-CAM of the fracture output, float32 (S, S) in [0, 1]; None without a region.
    box
        Hottest box ``(row_min, col_min, row_max, col_max)`` of ``cam``; None without one.
    """

    region: str | None
    region_probability: float
    region_probabilities: dict[str, float]
    fracture_probability: float | None
    cam: np.ndarray | None
    box: tuple[int, int, int, int] | None


def fracture_probability(logits: torch.Tensor) -> torch.Tensor:
    """Fracture probability from (N, 1) sigmoid or (N, 2) softmax logits."""
    if logits.dim() != 2 or logits.shape[1] not in (1, 2):
        raise ValueError(f"fracture logits shape {tuple(logits.shape)} is not (N, 1) or (N, 2)")
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


#: Images per pass by default, (CPU, CUDA). On the CPU a DenseNet121 at 320 px costs the
#: least per image at 4 to 8 images a pass (larger batches leave the caches: 1.7x the
#: cost per image at 32, Grad-CAM 2.3x; benchmarks/inference.py); a GPU wants large ones.
DEFAULT_MAX_BATCH = (4, 64)


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[start : start + size] for start in range(0, len(indices), size)]


class HierarchicalModel:
    """Region network plus one fracture network per region, in eval mode.

    Parameters
    ----------
    metadata
        The bundle metadata (thresholds, image size, network specs).
    region_network
        Stage 1, logits over :data:`config.REGION_CLASSES`.
    fracture_networks
        Stage 2 per region in ``metadata.regions``.
    device
        Torch device to run on.
    max_batch
        Images per forward (and Grad-CAM) pass; larger batches are split. None: the
        device's default (:data:`DEFAULT_MAX_BATCH`).
    """

    def __init__(
        self,
        metadata: BundleMetadata,
        region_network: nn.Module,
        fracture_networks: dict[str, nn.Module],
        device: str | torch.device = "cpu",
        max_batch: int | None = None,
    ) -> None:
        missing = [region for region in metadata.regions if region not in fracture_networks]
        if missing:
            raise ValueError(f"no fracture network for regions {missing}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.metadata = metadata
        self.device = torch.device(device)
        self.max_batch = max_batch or DEFAULT_MAX_BATCH[self.device.type == "cuda"]
        self.region_network = region_network.to(self.device).eval()
        self.fracture_networks = {
            region: fracture_networks[region].to(self.device).eval() for region in metadata.regions
        }
        self._explainers: dict[tuple[str, str], CamExplainer] = {}

    @property
    def fracture_class(self) -> int:
        """Output index of the fracture logit: 0 of a sigmoid head, 1 of a softmax head."""
        return 0 if self.metadata.fracture_network.out_channels == 1 else 1

    @property
    def image_size(self) -> int:
        """Side of the square model input."""
        return self.metadata.image_size

    def thresholds_for(self, region: str) -> tuple[float, float]:
        """``(suspected, likely)`` operating points of ``region``.

        Raises
        ------
        ValueError
            If ``region`` is not one of the bundle's regions.
        """
        if region not in self.metadata.thresholds:
            raise ValueError(f"no thresholds for region {region!r}; expected one of {REGIONS}")
        points = self.metadata.thresholds[region]
        return points.suspected, points.likely

    def _explainer(self, region: str, method: str) -> CamExplainer:
        if (region, method) not in self._explainers:
            self._explainers[region, method] = CamExplainer(
                self.fracture_networks[region],
                gradcam_target_layer(self.metadata.fracture_network),
                method,
            )
        return self._explainers[region, method]

    def _as_batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        batch = torch.as_tensor(images, dtype=torch.float32)
        size = self.image_size
        if batch.dim() != 4 or tuple(batch.shape[1:]) != (1, size, size):
            raise ValueError(
                f"images shape {tuple(batch.shape)} is not (N, 1, {size}, {size}); "
                "run models.runtime.preprocessing.preprocess first"
            )
        if not torch.isfinite(batch).all():
            raise ValueError("images contain non-finite values")
        return batch.to(self.device)

    def classify_regions(self, images: np.ndarray | torch.Tensor) -> list[tuple[str | None, float]]:
        """Stage 1: ``(region or None, probability of the arg-max class)`` per image.

        The region is None when the arg-max class is 'unsupported' or its
        probability is below the bundle's ``region_min_probability``.
        """
        return [(region, max(probs.values())) for region, probs in self._regions(images)]

    def _regions(
        self, images: np.ndarray | torch.Tensor
    ) -> list[tuple[str | None, dict[str, float]]]:
        batch = self._as_batch(images)
        if batch.shape[0] == 0:
            return []
        with torch.no_grad():
            logits = torch.cat(
                [
                    self.region_network(batch[chunk])
                    for chunk in _chunks(list(range(batch.shape[0])), self.max_batch)
                ]
            )
            logits = logits / self.metadata.temperature("region")
            region_probs = torch.softmax(logits, dim=1).cpu().numpy()
        if region_probs.shape[1] != len(REGION_CLASSES):
            raise ValueError(
                f"region network gives {region_probs.shape[1]} classes; "
                f"expected {len(REGION_CLASSES)}"
            )
        results = []
        for probs in region_probs:
            name = REGION_CLASSES[int(np.argmax(probs))]
            confident = float(probs.max()) >= self.metadata.region_min_probability
            by_class = {c: float(p) for c, p in zip(REGION_CLASSES, probs, strict=True)}
            results.append((name if name != UNSUPPORTED and confident else None, by_class))
        return results

    def _by_region(self, regions: list[str | None]) -> dict[str, list[int]]:
        unknown = {r for r in regions if r is not None and r not in self.fracture_networks}
        if unknown:
            raise ValueError(f"no fracture network for regions {sorted(unknown)}")
        groups: dict[str, list[int]] = {}
        for index, region in enumerate(regions):
            if region is not None:
                groups.setdefault(region, []).append(index)
        return groups

    def classify_fractures(
        self, images: np.ndarray | torch.Tensor, regions: list[str | None]
    ) -> list[float | None]:
        """Stage 2: fracture probability per image from its region's network (None without)."""
        batch = self._as_batch(images)
        if len(regions) != batch.shape[0]:
            raise ValueError(f"{len(regions)} regions for {batch.shape[0]} images")
        fracture: list[float | None] = [None] * batch.shape[0]
        for region, all_indices in self._by_region(regions).items():
            for indices in _chunks(all_indices, self.max_batch):
                with torch.no_grad():
                    logits = self.fracture_networks[region](batch[indices])
                    # Temperature scaling: the probability written into the SR is calibrated.
                    calibrated = logits / self.metadata.temperature(region)
                    probabilities = fracture_probability(calibrated).cpu()
                for k, i in enumerate(indices):
                    fracture[i] = float(probabilities[k])
        return fracture

    def explain(
        self,
        images: np.ndarray | torch.Tensor,
        regions: list[str | None],
        method: str = "gradcam",
    ) -> list[tuple[np.ndarray | None, tuple[int, int, int, int] | None]]:
        """Grad-CAM of the fracture output and its hottest box, per image (None without region).

        ``method`` is one of :data:`models.runtime.gradcam.CAM_METHODS`: ``"gradcam"`` (what the
        node writes) or ``"gradcampp"`` (Grad-CAM++, compared in the evaluation report).
        """
        return self.classify_and_explain(images, regions, method)[1]

    def classify_and_explain(
        self,
        images: np.ndarray | torch.Tensor,
        regions: list[str | None],
        method: str = "gradcam",
    ) -> tuple[
        list[float | None], list[tuple[np.ndarray | None, tuple[int, int, int, int] | None]]
    ]:
        """Stage 2 and its Grad-CAM in one pass: :meth:`classify_fractures` and :meth:`explain`.

        The explained forward pass yields the logits, so the separate no-grad forward of
        :meth:`classify_fractures` is not needed (the same values, one pass fewer).
        """
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; expected one of {CAM_METHODS}")
        batch = self._as_batch(images)
        if len(regions) != batch.shape[0]:
            raise ValueError(f"{len(regions)} regions for {batch.shape[0]} images")
        fracture: list[float | None] = [None] * batch.shape[0]
        explained: list[tuple[np.ndarray | None, tuple[int, int, int, int] | None]] = [
            (None, None)
        ] * batch.shape[0]
        for region, all_indices in self._by_region(regions).items():
            explainer = self._explainer(region, method)
            for indices in _chunks(all_indices, self.max_batch):
                maps, logits = explainer.explain_with_logits(batch[indices], self.fracture_class)
                calibrated = logits / self.metadata.temperature(region)
                probabilities = fracture_probability(calibrated).cpu()
                for k, i in enumerate(indices):
                    fracture[i] = float(probabilities[k])
                    explained[i] = (maps[k], hottest_box(maps[k], BOX_FRACTION))
        return fracture, explained

    def predict(
        self, images: np.ndarray | torch.Tensor, explain: bool = True
    ) -> list[ImagePrediction]:
        """Classify region, then fracture, and explain with Grad-CAM.

        Parameters
        ----------
        images
            Preprocessed batch (N, 1, S, S), S = ``metadata.image_size``.
        explain
            Compute Grad-CAM maps and boxes (needs a backward pass per region batch).

        Returns
        -------
        list of ImagePrediction
            One per image, in input order.
        """
        regions = self._regions(images)
        names = [name for name, _ in regions]
        if explain:
            fractures, explained = self.classify_and_explain(images, names)
        else:
            fractures = self.classify_fractures(images, names)
            explained = [(None, None)] * len(names)
        return [
            ImagePrediction(
                region=name,
                region_probability=max(probs.values()),
                region_probabilities=probs,
                fracture_probability=fracture,
                cam=cam,
                box=box,
            )
            for (name, probs), fracture, (cam, box) in zip(
                regions, fractures, explained, strict=True
            )
        ]
