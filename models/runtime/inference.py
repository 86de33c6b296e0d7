"""Two-stage inference: region classifier, then that region's fracture classifier + Grad-CAM."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from config import UNSUPPORTED
from config.domain.findings import FractureType
from models.runtime.detection import DetectedBox, FractureDetector, detect_boxes
from models.runtime.gradcam import CAM_METHODS, CamExplainer, hottest_box
from models.runtime.metadata import BundleMetadata
from models.runtime.networks import SharedStages, gradcam_target_layer, shared_outputs
from models.runtime.ood import FeatureDistance, classifier_layer, penultimate_features

logger = logging.getLogger(__name__)

#: Fraction of the CAM maximum that delimits the hot box.
BOX_FRACTION = 0.5


class StageOneRejection(StrEnum):
    """Which part of the pixel gate stopped a view (stage 1 named none of the regions)."""

    OUT_OF_DISTRIBUTION = "out_of_distribution"  # unlike the training images (features)
    UNSUPPORTED = "unsupported"  # stage 1's 'unsupported' class
    LOW_CONFIDENCE = "low_confidence"  # below the bundle's calibrated confidence floor


@dataclass(frozen=True)
class RegionCall:
    """Stage 1 and the pixel gate on one view.

    Attributes
    ----------
    region
        One of the bundle's regions, or None when the pixel gate stopped the view.
    probability
        Calibrated softmax probability of the arg-max class.
    probabilities
        Calibrated probability per class of the bundle's ``region_classes``.
    distance
        The out-of-distribution score (:class:`~models.runtime.ood.FeatureDistance`);
        None for a bundle without a pixel gate.
    rejection
        Why no region was named (None when one was).
    fracture_probabilities
        Each region's calibrated fracture probability from the same forward pass: a
        shared-backbone bundle without test-time augmentation gives them (stage 2 then
        needs no pass of its own); None otherwise.
    """

    region: str | None
    probability: float
    probabilities: dict[str, float]
    distance: float | None = None
    rejection: StageOneRejection | None = None
    fracture_probabilities: dict[str, float] | None = None

    @property
    def reason(self) -> str | None:
        """The rejection in words, for the SR, the summary and the audit (no patient data)."""
        if self.rejection is StageOneRejection.OUT_OF_DISTRIBUTION:
            return (
                "the image is unlike the images the model was trained on "
                f"(out-of-distribution score {self.distance:.0f} is above the bundle's limit)"
            )
        if self.rejection is StageOneRejection.UNSUPPORTED:
            return "stage 1 recognises none of the regions this model assesses"
        if self.rejection is StageOneRejection.LOW_CONFIDENCE:
            return (
                f"stage 1's confidence ({self.probability:.2f}) in any region is below "
                "the bundle's floor"
            )
        return None


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
        Probability per class of the bundle's ``region_classes``.
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


def calibrated_fracture_probability(
    network: nn.Module, images: torch.Tensor, temperature: float, augmentation: str = "none"
) -> torch.Tensor:
    """A fracture network's calibrated probability per image; with ``"flip"``
    test-time augmentation, the mean of the image's and its left-right mirror's. The
    node and the operating points' fitting both call this, so they agree."""
    probabilities = fracture_probability(network(images) / temperature)
    if augmentation == "flip":
        mirrored = fracture_probability(network(torch.flip(images, dims=[3])) / temperature)
        probabilities = (probabilities + mirrored) / 2
    return probabilities


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
    """Region network plus one fracture network per region, in eval mode; or, for a
    shared-backbone bundle, one network giving both.

    Parameters
    ----------
    metadata
        The bundle metadata (thresholds, image size, network specs).
    region_network
        Stage 1, logits over ``metadata.region_classes``; for a shared-backbone bundle the
        :class:`~models.runtime.networks.SharedStages` of both stages.
    fracture_networks
        Stage 2 per region in ``metadata.regions``; None for a shared-backbone bundle (its
        regions' views of the shared network).
    device
        Torch device to run on.
    max_batch
        Images per forward (and Grad-CAM) pass; larger batches are split. None: the
        device's default (:data:`DEFAULT_MAX_BATCH`).
    feature_distance
        The pixel gate's statistics; given exactly when ``metadata.pixel_gate`` is.
    type_network
        The type head; given exactly when ``metadata.type_network`` is.
    detector
        The fracture detector; given exactly when ``metadata.detector`` is.
    """

    def __init__(
        self,
        metadata: BundleMetadata,
        region_network: nn.Module,
        fracture_networks: dict[str, nn.Module] | None,
        device: str | torch.device = "cpu",
        max_batch: int | None = None,
        feature_distance: FeatureDistance | None = None,
        type_network: nn.Module | None = None,
        detector: FractureDetector | None = None,
    ) -> None:
        if (type_network is None) != (metadata.type_network is None):
            raise ValueError("a type head needs both its metadata and its network")
        if (detector is None) != (metadata.detector is None):
            raise ValueError("a detector needs both its metadata and its network")
        self.shared = self._shared(metadata, region_network, fracture_networks)
        if self.shared is not None:
            region_network = self.shared.region_view()
            fracture_networks = {r: self.shared.fracture_view(r) for r in metadata.regions}
        assert fracture_networks is not None  # _shared refused a two-network form without them
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
        self.type_network = type_network.to(self.device).eval() if type_network else None
        self.detector = detector
        if detector is not None:
            detector.network.to(self.device)
            detector.eval()
        self._explainers: dict[tuple[str, str], CamExplainer] = {}
        if (feature_distance is None) != (metadata.pixel_gate is None):
            raise ValueError("a pixel gate needs both its metadata and its statistics")
        if feature_distance is not None:
            width = classifier_layer(region_network).in_features
            if feature_distance.means.shape[1] != width:
                raise ValueError(
                    f"pixel gate statistics have {feature_distance.means.shape[1]} features; "
                    f"the region network gives {width}"
                )
            feature_distance = feature_distance.to(self.device)
        self.feature_distance = feature_distance

    @staticmethod
    def _shared(
        metadata: BundleMetadata,
        region_network: nn.Module,
        fracture_networks: dict[str, nn.Module] | None,
    ) -> SharedStages | None:
        """The shared network of a shared-backbone bundle (None for the two-network form)."""
        if not metadata.shared_backbone:
            if fracture_networks is None:
                raise ValueError("a two-network bundle needs its fracture networks")
            return None
        if not isinstance(region_network, SharedStages) or fracture_networks is not None:
            raise ValueError(
                "a shared-backbone bundle takes one SharedStages network and no fracture networks"
            )
        if region_network.regions != metadata.regions:
            raise ValueError(
                f"the shared network's regions {region_network.regions} are not the "
                f"bundle's {metadata.regions}"
            )
        return region_network

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
            raise ValueError(
                f"no thresholds for region {region!r}; expected one of {self.metadata.regions}"
            )
        points = self.metadata.thresholds[region]
        return points.suspected, points.likely

    def _explainer(self, region: str, method: str) -> CamExplainer:
        """Grad-CAM of ``region``'s network; of a shared network, one for every region."""
        key = (region if self.shared is None else "", method)
        if key not in self._explainers:
            layer = gradcam_target_layer(self.metadata.fracture_network)
            network = self.fracture_networks[region]
            if self.shared is not None:
                network, layer = self.shared, SharedStages.layer_name(layer)
            self._explainers[key] = CamExplainer(network, layer, method)
        return self._explainers[key]

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

    def classify_regions(self, images: np.ndarray | torch.Tensor) -> list[RegionCall]:
        """Stage 1 and the pixel gate: each view's region, or why it has none.

        No region when the view is unlike the training images (its feature distance is
        above the bundle's pixel-gate limit), when the arg-max class is 'unsupported', or
        when its calibrated probability is below the bundle's ``region_min_probability``.
        """
        batch = self._as_batch(images)
        if batch.shape[0] == 0:
            return []
        outputs, features = self._region_outputs(batch)
        classes = self.metadata.region_classes
        logits = outputs[:, : len(classes)]
        expected = shared_outputs(len(classes) - 1) if self.shared else len(classes)
        if outputs.shape[1] != expected:
            raise ValueError(
                f"region network gives {outputs.shape[1]} outputs; expected {expected}"
            )
        probabilities = torch.softmax(logits / self.metadata.temperature("region"), dim=1)
        distances: list[float | None] = [None] * batch.shape[0]
        if self.feature_distance is not None:
            distances = [float(d) for d in self.feature_distance(features).cpu()]
        fractures = self._fractures_from_stage_one(outputs)
        return [
            replace(self._region_call(probs, distance), fracture_probabilities=fracture)
            for probs, distance, fracture in zip(
                probabilities.cpu().numpy(), distances, fractures, strict=True
            )
        ]

    def _region_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's logits (a shared network's all) and penultimate features, a chunk of
        views at a time."""
        logits = []
        network = self.shared if self.shared is not None else self.region_network
        # The features are kept only where a pixel gate measures them.
        gated = self.feature_distance is not None
        watch = penultimate_features(network) if gated else nullcontext([])
        with torch.no_grad(), watch as features:
            for chunk in _chunks(list(range(batch.shape[0])), self.max_batch):
                logits.append(network(batch[chunk]))
        return torch.cat(logits), torch.cat(features) if features else torch.empty(0)

    @property
    def fractures_in_stage_one(self) -> bool:
        """Whether stage 1's pass also gives every region's fracture probability (a
        shared-backbone bundle without test-time augmentation, whose mirrored pass stage 2
        would add)."""
        return self.shared is not None and self.metadata.test_time_augmentation == "none"

    def _fractures_from_stage_one(self, outputs: torch.Tensor) -> list[dict[str, float] | None]:
        """Each view's calibrated fracture probability per region from the shared pass."""
        if self.shared is None or not self.fractures_in_stage_one:
            return [None] * outputs.shape[0]
        regions = self.metadata.regions
        logits = self.shared.fracture_logits(outputs).cpu()
        temperatures = torch.tensor([self.metadata.temperature(r) for r in regions])
        probabilities = torch.sigmoid(logits / temperatures).numpy()
        return [dict(zip(regions, map(float, row), strict=True)) for row in probabilities]

    def _region_call(self, probs: np.ndarray, distance: float | None) -> RegionCall:
        classes = self.metadata.region_classes
        name = classes[int(np.argmax(probs))]
        by_class = {c: float(p) for c, p in zip(classes, probs, strict=True)}
        probability = float(probs.max())
        gate = self.metadata.pixel_gate
        rejection = None
        if gate is not None and distance is not None and distance > gate.max_distance:
            rejection = StageOneRejection.OUT_OF_DISTRIBUTION
        elif name == UNSUPPORTED:
            rejection = StageOneRejection.UNSUPPORTED
        elif probability < self.metadata.region_min_probability:
            rejection = StageOneRejection.LOW_CONFIDENCE
        region = name if rejection is None else None
        return RegionCall(region, probability, by_class, distance, rejection)

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
                    # Temperature scaling: the probability written into the SR is calibrated.
                    probabilities = calibrated_fracture_probability(
                        self.fracture_networks[region],
                        batch[indices],
                        self.metadata.temperature(region),
                        self.metadata.test_time_augmentation,
                    ).cpu()
                for k, i in enumerate(indices):
                    fracture[i] = float(probabilities[k])
        return fracture

    def classify_types(self, images: np.ndarray | torch.Tensor) -> list[FractureType | None]:
        """The type head's most probable type per image (None for every image of a bundle
        without one). The caller keeps it only for views flagged as a fracture."""
        batch = self._as_batch(images)
        if self.type_network is None:
            return [None] * batch.shape[0]
        names = self.metadata.fracture_types
        calls: list[FractureType | None] = []
        for indices in _chunks(list(range(batch.shape[0])), self.max_batch):
            with torch.no_grad():
                logits = self.type_network(batch[indices]) / self.metadata.temperature("type")
                probabilities = torch.softmax(logits, dim=1).cpu().numpy()
            calls += [
                FractureType(names[int(row.argmax())], float(row.max())) for row in probabilities
            ]
        return calls

    def detect(self, images: np.ndarray | torch.Tensor) -> list[DetectedBox | None]:
        """The detector's best box per image (model-input pixels), None where it finds none
        at its ``report_score``.

        Raises
        ------
        ValueError
            If the bundle has no detector, or the images are not a preprocessed batch.
        """
        if self.detector is None or self.metadata.detector is None:
            raise ValueError("this bundle has no detector")
        batch = self._as_batch(images)
        least = self.metadata.detector.report_score
        found: list[DetectedBox | None] = []
        for indices in _chunks(list(range(batch.shape[0])), self.max_batch):
            found += detect_boxes(self.detector, batch[indices], least)
        return found

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
        for region, all_indices in self._explained_groups(regions):
            explainer = self._explainer(region, method)
            for indices in _chunks(all_indices, self.max_batch):
                maps, logits = self._explained(explainer, batch, indices, regions)
                temperatures = torch.tensor(
                    [[self.metadata.temperature(regions[i])] for i in indices]
                )
                probabilities = fracture_probability(logits.cpu() / temperatures)
                for k, i in enumerate(indices):
                    fracture[i] = float(probabilities[k])
                    explained[i] = (maps[k], hottest_box(maps[k], BOX_FRACTION))
        if self.metadata.test_time_augmentation != "none":
            # The mirrored pass belongs to the probability, not to the heatmap.
            fracture = self.classify_fractures(batch, regions)
        return fracture, explained

    def _explained_groups(self, regions: list[str | None]) -> list[tuple[str, list[int]]]:
        """The views Grad-CAM explains together: a region's views (its own network), or
        for a shared network all of them (the group named by its first view's region)."""
        groups = self._by_region(regions)
        if self.shared is None or not groups:
            return list(groups.items())
        every = sorted(i for indices in groups.values() for i in indices)
        return [(next(iter(groups)), every)]

    def _explained(
        self,
        explainer: CamExplainer,
        batch: torch.Tensor,
        indices: list[int],
        regions: list[str | None],
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Grad-CAM maps and the fracture logits of ``indices``' views (a shared network
        explains each view's own region's logit)."""
        if self.shared is None:
            return explainer.explain_with_logits(batch[indices], self.fracture_class)
        columns = torch.tensor([self.shared.fracture_column(str(regions[i])) for i in indices])
        return explainer.explain_with_logits(batch[indices], 0, columns=columns)

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
        regions = self.classify_regions(images)
        names = [call.region for call in regions]
        if explain:
            fractures, explained = self.classify_and_explain(images, names)
        else:
            fractures = self.classify_fractures(images, names)
            explained = [(None, None)] * len(names)
        return [
            ImagePrediction(
                region=call.region,
                region_probability=call.probability,
                region_probabilities=call.probabilities,
                fracture_probability=fracture,
                cam=cam,
                box=box,
            )
            for call, fracture, (cam, box) in zip(regions, fractures, explained, strict=True)
        ]
