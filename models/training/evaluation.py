"""Evaluation of a bundle on labelled data: the numbers and pictures of its model card.

:func:`evaluate_bundle` runs a bundle the way the node does (the same preprocessing, the
bundle's calibration temperatures and operating points) over labelled records and reports,
per region and overall:

- **AUROC** with a percentile bootstrap 95% confidence interval (patients resampled, each
  with all their studies);
- **sensitivity and specificity** at both operating points (``suspected`` = high
  sensitivity, ``likely`` = high specificity), with their confusion matrices;
- **Cohen's kappa** (MURA's metric) at both operating points;
- **expected calibration error** (ECE, equal-width bins) of the study probabilities;
- stage-1 **region accuracy** and its confusion matrix over the 8 region classes;
- **Grad-CAM and Grad-CAM++ localisation** where fracture boxes are known (phantoms,
  FracAtlas): the share of detected positive images (probability at or above the
  ``suspected`` point) whose hottest box contains the centre of the true break, beside
  what a box of the same size would hit at the image centre and placed at random, and
  the mean IoU of Grad-CAM's box with the true one;
- **end to end** (:mod:`models.training.end_to_end`): every study decided as the node
  decides it, with the regions stage 1 predicted; a misrouted or not-assessed positive
  study is a miss;
- optionally **occlusion sensitivity** (``monai.visualize.OcclusionSensitivity``) as a
  second opinion: how often its most sensitive area falls in the same box.

Fracture metrics are study-level: a study's probability is the bundle's aggregation
(mean by default) of its images' probabilities from the network of the study's *true*
region, so each region's numbers describe that region's fracture model; stage 1 is
measured separately by the region accuracy, and the two together by the end-to-end
figures. Figures (ROC curves, reliability diagram)
are PNGs drawn with matplotlib; a Markdown report, ``metrics.json`` and the figures go
to the report folder, and the metrics and figures into the bundle (metadata ``metrics``
and ``docs/``), so its model card shows them.

The metrics themselves are in :mod:`models.training.metrics` (on MONAI's), the figures
and the report in :mod:`models.training.report`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.visualize import OcclusionSensitivity

from config import UNSUPPORTED
from config.domain.decision import ViewResult
from models.runtime.bundle import MODEL_CARD_FILE, load_bundle, load_metadata, update_metadata
from models.runtime.gradcam import CAM_METHODS, hottest_box
from models.runtime.inference import HierarchicalModel, RegionCall
from models.runtime.metadata import TestTimeAugmentation
from models.runtime.preprocessing import preprocess
from models.training.datasets import ImageRecord, load_display_image
from models.training.detection import detection_metrics, detection_samples
from models.training.end_to_end import decide_studies, end_to_end_metrics
from models.training.metrics import binary_metrics, cohen_kappa, roc_curve
from models.training.ood_set import OodImage, gate_figures, out_of_distribution_figures
from models.training.operating_points import study_scores
from models.training.progress import progress_bar
from models.training.report import beside_figures, evaluation_report, plot_reliability, plot_roc
from models.training.splits import SPLITS_FILE, PatientSplits

logger = logging.getLogger(__name__)

#: A ROC curve to draw: false positive rates, true positive rates and the AUROC.
Curve = tuple[np.ndarray, np.ndarray, float]


@dataclass
class Evaluation:
    """What :func:`evaluate_bundle` produced.

    Attributes
    ----------
    metrics
        The metrics dictionary (also ``metrics.json``).
    report
        Path of the Markdown report.
    figures
        Figure name -> PNG path in the report folder.
    """

    metrics: dict[str, Any]
    report: Path
    figures: dict[str, Path]


class CardRefusedError(ValueError):
    """The evaluation's figures may not go into the bundle's model card (the reason says why)."""


def refuse_seen_patients(bundle_dir: Path, records: Sequence[ImageRecord]) -> None:
    """Raise :class:`CardRefusedError` unless every record's patient was held out of the
    bundle's training and validation (figures on them would overstate the model)."""
    splits = PatientSplits.read(bundle_dir)
    if splits is None:
        raise CardRefusedError(
            f"{bundle_dir} does not record its training split ({SPLITS_FILE}): the figures "
            "cannot be shown to be held out, so they do not go into its model card"
        )
    patients = {record.patient_id for record in records}
    overlap = sum(splits.contains("train", p) or splits.contains("val", p) for p in patients)
    if overlap:
        raise CardRefusedError(
            f"{overlap} of the {len(patients)} patients evaluated are in the bundle's training "
            "or validation split: figures on them would overstate the model and do not go "
            "into its model card (evaluate the test split, or leave out --write-card)"
        )


def box_contains(box: Sequence[float], target: Sequence[float]) -> bool:
    """Whether the centre of ``target`` lies inside ``box`` (both row/col min/max)."""
    row = (target[0] + target[2]) / 2.0
    col = (target[1] + target[3]) / 2.0
    return box[0] <= row <= box[2] and box[1] <= col <= box[3]


def box_iou(box: Sequence[float], target: Sequence[float]) -> float:
    """Intersection over union of two (row min, col min, row max, col max) boxes."""
    rows = max(0.0, min(box[2], target[2]) - max(box[0], target[0]))
    cols = max(0.0, min(box[3], target[3]) - max(box[1], target[1]))
    inter = rows * cols
    area = (box[2] - box[0]) * (box[3] - box[1]) + (target[2] - target[0]) * (target[3] - target[1])
    return inter / (area - inter) if area - inter > 0 else 0.0


def centred_like(box: Sequence[float], size: int) -> tuple[float, float, float, float]:
    """A box of ``box``'s height and width at the centre of a ``size`` square image."""
    height, width = box[2] - box[0], box[3] - box[1]
    top, left = (size - height) / 2.0, (size - width) / 2.0
    return (top, left, top + height, left + width)


def random_hit_chance(box: Sequence[float], target: Sequence[float], size: int) -> float:
    """The chance that a box of ``box``'s size, placed uniformly at random (whole pixels,
    inside a ``size`` square image), contains the centre of ``target``: the baseline a
    localisation hit rate has to beat."""
    chance = 1.0
    for low, high, centre in (
        (box[0], box[2], (target[0] + target[2]) / 2.0),
        (box[1], box[3], (target[1] + target[3]) / 2.0),
    ):
        extent = high - low
        positions = int(size - extent) + 1  # where the box's start may be
        first, last = max(0.0, centre - extent), min(size - extent, centre)
        covering = max(0, int(np.floor(last)) - int(np.ceil(first)) + 1)
        chance *= covering / positions if positions > 0 else 1.0
    return chance


def _occlusion_box(model: HierarchicalModel, region: str, image: torch.Tensor) -> tuple[int, ...]:
    """Hottest box of occlusion sensitivity: where hiding the image lowers the fracture most."""
    network = model.fracture_networks[region]
    size = model.image_size
    occlusion = OcclusionSensitivity(
        network,
        mask_size=max(8, size // 8),
        n_batch=16,
        overlap=0.5,
        mode="gaussian",
        activate=False,
        verbose=False,
    )
    with torch.no_grad():
        sensitivity, _ = occlusion(image[None].to(model.device))
    # The map is (batch, network output, H, W): the raw outputs with each area occluded.
    # The fracture evidence is the logit of a sigmoid head, or the logit difference of a
    # softmax head; where hiding the image lowers it most is hottest.
    outputs = sensitivity[0].cpu().numpy()
    evidence = outputs[0] if outputs.shape[0] == 1 else outputs[1] - outputs[0]
    return hottest_box(evidence.max() - evidence, 0.5)


# Long: a public entry point; its numpy-style docstring is two thirds of it.
def evaluate_bundle(
    bundle_dir: str | Path,
    records: Sequence[ImageRecord],
    out_dir: str | Path,
    *,
    data_description: str = "",
    occlusion: bool = False,
    write_into_bundle: bool = False,
    progress: bool = True,
    seed: int = 0,
    out_of_distribution: Sequence[OodImage] = (),
    test_time_augmentation: TestTimeAugmentation | None = None,
) -> Evaluation:
    """Evaluate a bundle on labelled records; write the report, figures and metrics.

    Parameters
    ----------
    bundle_dir
        Bundle to evaluate (loaded with :func:`models.runtime.bundle.load_bundle`).
    records
        Labelled images (typically the test split of
        :func:`models.training.datasets.split_by_patient`).
    out_dir
        Report folder: ``report.md``, ``metrics.json``, ``roc.png``, ``reliability.png``.
    data_description
        What the records are, for the report and the model card.
    occlusion
        Also run occlusion sensitivity on the detected positives with a known box.
    write_into_bundle
        Store the metrics in the bundle's metadata and the figures in its ``docs/`` (the
        model card). Refused when any record's patient is in the bundle's training or
        validation split, or the bundle does not record its splits.
    progress
        Show a rich progress bar.
    seed
        Seed of the bootstrap.
    out_of_distribution
        Images outside the intended use (:mod:`models.training.ood_set`); the pixel gate's
        figures on them join those on the records.
    test_time_augmentation
        Evaluate with this stage-2 augmentation instead of the bundle's (to measure what
        it would change; the operating points stay the bundle's). Not with
        ``write_into_bundle``: the card describes the bundle as it runs.

    Returns
    -------
    Evaluation
        Metrics, report path and figure paths.

    Raises
    ------
    ValueError
        If ``records`` is empty.
    CardRefusedError
        If ``write_into_bundle`` and the records are not held out from the bundle's training.
    """
    if not records:
        raise ValueError("no records to evaluate")
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if write_into_bundle:
        refuse_seen_patients(bundle_dir, records)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_bundle(bundle_dir)
    if test_time_augmentation is not None:
        if write_into_bundle and test_time_augmentation != model.metadata.test_time_augmentation:
            raise CardRefusedError(
                f"the card describes the bundle as it runs (test-time augmentation "
                f"{model.metadata.test_time_augmentation!r}, not {test_time_augmentation!r})"
            )
        model.metadata = model.metadata.model_copy(
            update={"test_time_augmentation": test_time_augmentation}
        )
    tally = _Tally.of(model, records, occlusion, progress)
    description = data_description or f"{len(records)} labelled images"
    metrics, curves, studies = _metrics(model, tally, description, occlusion, seed)
    metrics["test_time_augmentation"] = model.metadata.test_time_augmentation
    if model.detector is not None:
        supported = [r for r in records if r.region in model.metadata.regions]
        samples = detection_samples(supported, model.image_size)
        metrics |= detection_metrics(model.detector, samples, model.device)
        metrics |= tally.detector_localisation()
    metrics["pixel_gate"] = {
        **tally.pixel_gate_metrics(),
        **out_of_distribution_figures(model, out_of_distribution),
    }
    figures = _figures(curves, studies, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = out_dir / "report.md"
    metadata = model.metadata
    report.write_text(evaluation_report(metadata.name, metadata.version, metrics, figures))
    if write_into_bundle:
        _write_into_bundle(bundle_dir, metadata.metrics, metrics, figures)
    logger.info("evaluation of %s written to %s", bundle_dir, out_dir)
    return Evaluation(metrics=metrics, report=report, figures=figures)


@dataclass
class _Tally:
    """What the pass over the records counted: regions, study probabilities, box hits."""

    region_classes: tuple[str, ...] = ()  # the bundle's stage-1 classes
    region_truth: list[int] = field(default_factory=list)
    region_predicted: list[int] = field(default_factory=list)
    # The records of a supported region and their fracture probabilities (image level).
    fracture_records: list[ImageRecord] = field(default_factory=list)
    fracture_probabilities: list[float] = field(default_factory=list)
    detected: int = 0
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAM_METHODS, 0))
    occlusion_hits: int = 0
    # Grad-CAM's boxes against baselines of the same size: centred, and placed at random.
    centre_hits: int = 0
    random_hit_chances: float = 0.0
    iou_sum: float = 0.0
    # The detector's best box on the same views, where the bundle has one.
    detector_hits: int = 0
    detector_iou_sum: float = 0.0
    # The pixel gate on the records of the bundle's regions, and on the 'unsupported' ones.
    gate_in_distribution: list[RegionCall] = field(default_factory=list)
    gate_unsupported: list[RegionCall] = field(default_factory=list)
    # Each supported record as the node would see it (stage 1's region, not the true one).
    end_to_end: list[tuple[ImageRecord, ViewResult]] = field(default_factory=list)
    # The type head on the positive records that name one of its types: (truth, call).
    types: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        model: HierarchicalModel,
        records: Sequence[ImageRecord],
        occlusion: bool,
        progress: bool,
    ) -> _Tally:
        """One pass of the bundle over the records (a progress bar if ``progress``)."""
        tally = cls(region_classes=model.metadata.region_classes)
        with progress_bar(progress, "evaluating", len(records)) as advance:
            for record in records:
                tally.add(model, record, occlusion)
                advance(1)
        return tally

    def add(self, model: HierarchicalModel, record: ImageRecord, occlusion: bool) -> None:
        """Run the bundle on one record as the node does and count the outcome."""
        image, geometry = preprocess(load_display_image(record.path), model.image_size)
        batch = image[None]
        call = model.classify_regions(batch)[0]
        classes = self.region_classes
        # An image of a body part the bundle does not assess should be 'unsupported'.
        truth = record.region if record.region in classes else UNSUPPORTED
        self.region_truth.append(classes.index(truth))
        self.region_predicted.append(classes.index(call.region or UNSUPPORTED))
        if truth == UNSUPPORTED:
            if record.region == UNSUPPORTED:
                self.gate_unsupported.append(call)
            return
        self.gate_in_distribution.append(call)
        probability = model.classify_fractures(batch, [record.region])[0]
        assert probability is not None
        self.fracture_records.append(record)
        self.fracture_probabilities.append(probability)
        self.end_to_end.append((record, _node_view(model, batch, record, call, probability)))
        if record.fracture_type in model.metadata.fracture_types:
            called = model.classify_types(batch)[0]
            assert called is not None
            self.types.append((record.fracture_type, called.name))
        suspected, _ = model.thresholds_for(record.region)
        if not (record.label and record.box is not None and probability >= suspected):
            return
        target = geometry.box_to_model(*record.box)
        self.detected += 1
        for method in CAM_METHODS:
            _cam, box = model.explain(batch, [record.region], method)[0]
            self.hits[method] += bool(box is not None and box_contains(box, target))
            if method == "gradcam" and box is not None:
                self.centre_hits += box_contains(centred_like(box, model.image_size), target)
                self.random_hit_chances += random_hit_chance(box, target, model.image_size)
                self.iou_sum += box_iou(box, target)
        if occlusion:
            box = _occlusion_box(model, record.region, torch.as_tensor(image))
            self.occlusion_hits += box_contains(box, target)
        if model.detector is not None:
            found = model.detect(batch)[0]
            self.detector_hits += bool(found is not None and box_contains(found.box, target))
            self.detector_iou_sum += box_iou(found.box, target) if found is not None else 0.0

    def detector_localisation(self) -> dict[str, Any]:
        """The detector's box on the views Grad-CAM's is scored on (a view where it finds
        no box at its report score counts as a miss, with IoU 0)."""
        detected = self.detected
        return {
            "detector_box_hit_rate": round(self.detector_hits / detected, 4) if detected else None,
            "detector_box_iou_mean": round(self.detector_iou_sum / detected, 4)
            if detected
            else None,
        }

    def region_metrics(self) -> dict[str, Any]:
        """Stage 1 at image level: accuracy, kappa and the confusion matrix over the classes."""
        truth, predicted = np.asarray(self.region_truth), np.asarray(self.region_predicted)
        classes = len(self.region_classes)
        matrix = np.bincount(truth * classes + predicted, minlength=classes * classes)
        return {
            "region_accuracy": round(float((truth == predicted).mean()), 4),
            "region_kappa": round(cohen_kappa(truth, predicted), 4),
            "region_confusion": {
                "classes": list(self.region_classes),
                "matrix": matrix.reshape(classes, classes).tolist(),
            },
        }

    def pixel_gate_metrics(self) -> dict[str, Any]:
        """The pixel gate on the records: false rejections, and the 'unsupported' stopped."""
        return {
            "in_distribution": gate_figures(self.gate_in_distribution),
            "synthetic_unsupported": gate_figures(self.gate_unsupported),
        }

    def type_metrics(self, types: tuple[str, ...]) -> dict[str, Any]:
        """The type head on the positive images with a known type: accuracy, sensitivity
        per type and the confusion matrix (rows: the true type)."""
        if not types or not self.types:
            return {}
        truth = np.asarray([types.index(t) for t, _ in self.types])
        called = np.asarray([types.index(c) for _, c in self.types])
        size = len(types)
        matrix = np.bincount(truth * size + called, minlength=size * size).reshape(size, size)
        sensitivity = {
            name: round(float(matrix[k, k] / matrix[k].sum()), 4) if matrix[k].sum() else None
            for k, name in enumerate(types)
        }
        return {
            "type_images": len(self.types),
            "type_accuracy": round(float((truth == called).mean()), 4),
            "type_sensitivity": sensitivity,
            "type_confusion": {"classes": list(types), "matrix": matrix.tolist()},
        }

    def localisation_metrics(self, occlusion: bool) -> dict[str, Any]:
        """Share of the detected positives with a known box whose hottest box hits it."""
        detected = self.detected
        metrics: dict[str, Any] = {"gradcam_detected_positives_with_box": detected}
        for method in CAM_METHODS:
            rate = round(self.hits[method] / detected, 4) if detected else None
            metrics[f"{method}_box_hit_rate"] = rate
        baselines = {
            "centre_box_hit_rate": self.centre_hits,
            "random_box_hit_rate": self.random_hit_chances,
            "gradcam_box_iou_mean": self.iou_sum,
        }
        for key, total in baselines.items():
            metrics[key] = round(total / detected, 4) if detected else None
        if occlusion:
            rate = round(self.occlusion_hits / detected, 4) if detected else None
            metrics["occlusion_box_hit_rate"] = rate
        return metrics


def _node_view(
    model: HierarchicalModel,
    batch: torch.Tensor,
    record: ImageRecord,
    call: RegionCall,
    true_region_probability: float,
) -> ViewResult:
    """The view as the node's decision sees it: stage 1's region (or the gate's reason)
    and the fracture probability of that region's network."""
    uid = str(record.path)
    if call.region is None:
        return ViewResult.no_region(uid, call.probability, call.reason or "stage 1 named no region")
    probability = (
        true_region_probability
        if call.region == record.region
        else model.classify_fractures(batch, [call.region])[0]
    )
    return ViewResult(
        uid,
        region=call.region,
        region_probability=call.probability,
        fracture_probability=probability,
    )


@dataclass(frozen=True)
class _Studies:
    """Study-level truth and probability (the network of the study's true region)."""

    labels: np.ndarray
    scores: np.ndarray
    regions: np.ndarray
    patients: np.ndarray

    @classmethod
    def of(cls, tally: _Tally, aggregation: str) -> _Studies:
        records, probabilities = tally.fracture_records, tally.fracture_probabilities
        studies, scores, labels = study_scores(records, np.asarray(probabilities), aggregation)
        region_of = {record.study_id: record.region for record in records}
        patient_of = {record.study_id: record.patient_id for record in records}
        return cls(
            labels,
            scores,
            np.asarray([region_of[s] for s in studies]),
            np.asarray([patient_of[s] for s in studies]),
        )


def _fracture_metrics(
    model: HierarchicalModel, studies: _Studies, seed: int
) -> tuple[dict[str, Any], dict[str, Curve]]:
    """Study-level metrics overall and per region, and the ROC curves to draw."""
    metrics: dict[str, Any] = {"regions": {}}
    curves: dict[str, Curve] = {}
    if not studies.labels.size:
        return metrics, curves
    # Overall: each study against its own region's thresholds (what the node does).
    points = np.asarray([model.thresholds_for(r) for r in studies.regions])
    scopes = {"overall": (np.ones(studies.labels.size, dtype=bool), points[:, 0], points[:, 1])}
    for region in model.metadata.regions:
        mask = studies.regions == region
        if mask.any():
            scopes[region] = (mask, *model.thresholds_for(region))
    for scope, (mask, suspected, likely) in scopes.items():
        labels, scores = studies.labels[mask], studies.scores[mask]
        row = binary_metrics(labels, scores, suspected, likely, seed, studies.patients[mask])
        if scope == "overall":
            metrics["overall"] = row
        else:
            metrics["regions"][scope] = row
        if row["auroc"] is not None:
            curves[scope] = (*roc_curve(labels, scores), row["auroc"])
    return metrics, curves


def _metrics(
    model: HierarchicalModel, tally: _Tally, description: str, occlusion: bool, seed: int
) -> tuple[dict[str, Any], dict[str, Curve], _Studies]:
    """The evaluation's metrics dictionary, its ROC curves and the study-level scores."""
    aggregation = model.metadata.study_aggregation
    studies = _Studies.of(tally, aggregation)
    fracture, curves = _fracture_metrics(model, studies, seed)
    metrics: dict[str, Any] = {
        "data": description,
        "images": len(tally.region_truth),
        **tally.region_metrics(),
        "aggregation": aggregation,
        **fracture,
        "end_to_end": end_to_end_metrics(
            decide_studies(tally.end_to_end, model.metadata.thresholds, aggregation)
        ),
        **tally.localisation_metrics(occlusion),
        **tally.type_metrics(model.metadata.fracture_types),
    }
    return metrics, curves, studies


def _figures(curves: dict[str, Curve], studies: _Studies, out_dir: Path) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    if curves:
        figures["roc"] = plot_roc(curves, out_dir / "roc.png")
    if studies.labels.size:
        path = out_dir / "reliability.png"
        figures["reliability"] = plot_reliability(studies.labels, studies.scores, path)
    return figures


def _write_into_bundle(
    bundle_dir: Path,
    training_metrics: dict[str, Any],
    metrics: dict[str, Any],
    figures: dict[str, Path],
) -> None:
    """The metrics into the bundle's metadata, the figures beside its model card."""
    docs = bundle_dir / MODEL_CARD_FILE.parent
    bundle_figures = {}
    for name, file in figures.items():
        shutil.copyfile(file, docs / file.name)
        bundle_figures[name] = (MODEL_CARD_FILE.parent / file.name).as_posix()
    update_metadata(
        bundle_dir,
        metrics={**training_metrics, "evaluation": metrics, "figures": bundle_figures},
    )


def write_beside(bundle_dir: str | Path, other_dir: str | Path) -> None:
    """Put another bundle's figures on the same held-out data beside this bundle's in its
    model card (e.g. the shared-backbone form beside the two-network form).

    Raises
    ------
    ValueError
        If either bundle's card has no evaluation, or not one on the same data.
    """
    this, other = load_metadata(bundle_dir), load_metadata(other_dir)
    form = "shared backbone" if other.shared_backbone else "two networks"
    name = f"{other.name} {other.version} ({form})"
    beside = beside_figures(this.metrics, other.metrics, name)
    evaluation = {**this.metrics["evaluation"], "beside": beside}
    update_metadata(Path(bundle_dir), metrics={**this.metrics, "evaluation": evaluation})
