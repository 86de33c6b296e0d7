"""Evaluation of a bundle on labelled data: the numbers and pictures of its model card.

:func:`evaluate_bundle` runs a bundle the way the node does (the same preprocessing, the
bundle's calibration temperatures and operating points) over labelled records and reports,
per region and overall:

- **AUROC** with a percentile bootstrap 95% confidence interval (studies resampled);
- **sensitivity and specificity** at both operating points (``suspected`` = high
  sensitivity, ``likely`` = high specificity), with their confusion matrices;
- **Cohen's kappa** (MURA's metric) at both operating points;
- **expected calibration error** (ECE, equal-width bins) of the study probabilities;
- stage-1 **region accuracy** and its confusion matrix over the 8 region classes;
- **Grad-CAM and Grad-CAM++ localisation** where fracture boxes are known (phantoms,
  FracAtlas): the share of detected positive images (probability at or above the
  ``suspected`` point) whose hottest box contains the centre of the true break;
- optionally **occlusion sensitivity** (``monai.visualize.OcclusionSensitivity``) as a
  second opinion: how often its most sensitive area falls in the same box.

Fracture metrics are study-level: a study's probability is the bundle's aggregation
(mean by default) of its images' probabilities from the network of the study's *true*
region, so each region's numbers describe that region's fracture model; stage 1 is
measured separately by the region accuracy. Figures (ROC curves, reliability diagram)
are PNGs drawn with matplotlib; a Markdown report, ``metrics.json`` and the figures go
to the report folder, and the metrics and figures into the bundle (metadata ``metrics``
and ``docs/``), so its model card shows them.

The calibration helpers (:func:`fit_temperature`) are used by :mod:`models.training.train` to
fit temperature scaling on the validation split.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config import REGION_CLASSES, REGIONS, UNSUPPORTED
from config.domain.decision import aggregate_study
from models.runtime.bundle import MODEL_CARD_FILE, load_bundle, update_metadata
from models.runtime.gradcam import CAM_METHODS, hottest_box
from models.runtime.inference import HierarchicalModel
from models.runtime.preprocessing import preprocess
from models.training.datasets import ImageRecord, load_display_image
from models.training.progress import progress_bar

logger = logging.getLogger(__name__)

#: Bins of the expected calibration error and the reliability diagram.
ECE_BINS = 10


# ----------------------------------------------------------------------------- metrics


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted as one half).

    Raises
    ------
    ValueError
        If ``labels`` holds only one class (naming the counts).
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"AUROC needs both classes; got {positives} positives, {negatives} negatives"
        )
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct score: ranks start at 1, ties share the mean rank.
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def bootstrap_auroc_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUROC (resamples with one class skipped).

    Returns ``(nan, nan)`` when fewer than 10 resamples have both classes.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        sample = labels[index]
        if sample.all() or not sample.any():
            continue
        values.append(auroc(sample, scores[index]))
    if len(values) < 10:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def confusion(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Binary confusion matrix as ``{"tp", "fp", "tn", "fn"}``."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    return {
        "tp": int((labels & predicted).sum()),
        "fp": int((~labels & predicted).sum()),
        "tn": int((~labels & ~predicted).sum()),
        "fn": int((labels & ~predicted).sum()),
    }


def cohen_kappa(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Cohen's kappa between two label vectors (any number of classes); 1.0 if both constant."""
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    if labels.shape != predicted.shape or labels.size == 0:
        raise ValueError(
            f"kappa needs two equal, non-empty shapes; got {labels.shape}, {predicted.shape}"
        )
    observed = float((labels == predicted).mean())
    classes = np.union1d(labels, predicted)
    expected = float(sum((labels == c).mean() * (predicted == c).mean() for c in classes))
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of binary probabilities: bin-size-weighted mean |accuracy - confidence| per bin.

    Equal-width bins over [0, 1] on the positive-class probability (reliability diagram).
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.size == 0:
        raise ValueError("ECE of an empty set")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() * abs(labels[mask].mean() - probabilities[mask].mean())
    return float(total / labels.size)


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """``(mean probability, observed frequency, count)`` per non-empty equal-width bin."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    return [
        (float(probabilities[index == b].mean()), float(labels[index == b].mean()), int(n))
        for b in range(bins)
        if (n := int((index == b).sum()))
    ]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(false positive rate, true positive rate)`` at every distinct threshold, from (0, 0)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(scores)[::-1]
    tpr = [0.0] + [float((scores[labels] >= t).mean()) for t in thresholds]
    fpr = [0.0] + [float((scores[~labels] >= t).mean()) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


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


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, suspected: float, likely: float, seed: int = 0
) -> dict[str, Any]:
    """AUROC (+CI), sensitivity/specificity/kappa/confusion at both points, ECE, counts."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    result: dict[str, Any] = {
        "studies": int(labels.size),
        "positives": int(labels.sum()),
        "ece": round(expected_calibration_error(labels, scores), 4),
    }
    both = 0 < labels.sum() < labels.size
    if both:
        low, high = bootstrap_auroc_ci(labels, scores, seed=seed)
        result["auroc"] = round(auroc(labels, scores), 4)
        result["auroc_ci"] = [round(low, 4), round(high, 4)]
    else:
        result["auroc"], result["auroc_ci"] = None, None
    for name, threshold in (("suspected", suspected), ("likely", likely)):
        predicted = (scores >= threshold).astype(int)
        matrix = confusion(labels, predicted)
        positives, negatives = matrix["tp"] + matrix["fn"], matrix["tn"] + matrix["fp"]
        result[f"threshold_{name}"] = round(float(threshold), 4)
        result[f"sensitivity_{name}"] = round(matrix["tp"] / positives, 4) if positives else None
        result[f"specificity_{name}"] = round(matrix["tn"] / negatives, 4) if negatives else None
        result[f"kappa_{name}"] = round(cohen_kappa(labels, predicted), 4)
        result[f"confusion_{name}"] = matrix
    return result


# ----------------------------------------------------------------------------- figures


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    """ROC curves ``{name: (fpr, tpr, auroc)}`` into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 6), dpi=100)
    for name, (fpr, tpr, area) in curves.items():
        axes.plot(fpr, tpr, lw=2.5 if name == "overall" else 1.2, label=f"{name} ({area:.3f})")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("Study-level ROC (AUROC)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, path: Path) -> Path:
    """Reliability diagram (observed frequency against mean probability per bin) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    bins = reliability_bins(labels, probabilities)
    ece = expected_calibration_error(labels, probabilities)
    figure, axes = plt.subplots(figsize=(6, 6), dpi=100)
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    if bins:
        mean_p, observed, _counts = zip(*bins, strict=True)
        axes.plot(mean_p, observed, marker="o", label=f"model (ECE {ece:.3f})")
        for p, o, n in bins:
            axes.annotate(str(n), (p, o), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axes.set(xlabel="predicted fracture probability", ylabel="observed fracture frequency")
    axes.set(xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("Reliability (study level; numbers: studies per bin)")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------- evaluation


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


def box_contains(box: Sequence[float], target: Sequence[float]) -> bool:
    """Whether the centre of ``target`` lies inside ``box`` (both row/col min/max)."""
    row = (target[0] + target[2]) / 2.0
    col = (target[1] + target[3]) / 2.0
    return box[0] <= row <= box[2] and box[1] <= col <= box[3]


def _occlusion_box(model: HierarchicalModel, region: str, image: torch.Tensor) -> tuple[int, ...]:
    """Hottest box of occlusion sensitivity: where hiding the image lowers the fracture most."""
    from monai.visualize import OcclusionSensitivity

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


def evaluate_bundle(
    bundle_dir: str | Path,
    records: Sequence[ImageRecord],
    out_dir: str | Path,
    *,
    data_description: str = "",
    occlusion: bool = False,
    write_into_bundle: bool = True,
    progress: bool = True,
    seed: int = 0,
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
        Store the metrics in the bundle's metadata and the figures in its ``docs/``.
    progress
        Show a rich progress bar.
    seed
        Seed of the bootstrap.

    Returns
    -------
    Evaluation
        Metrics, report path and figure paths.

    Raises
    ------
    ValueError
        If ``records`` is empty.
    """
    if not records:
        raise ValueError("no records to evaluate")
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_bundle(bundle_dir)
    metadata = model.metadata
    size = model.image_size

    region_truth, region_pred = [], []
    study_probs: dict[str, list[float]] = defaultdict(list)
    study_info: dict[str, tuple[str, int]] = {}
    detected = 0
    hits = {method: 0 for method in CAM_METHODS}
    occlusion_hits = 0
    with progress_bar(progress, "evaluating", len(records)) as advance:
        for record in records:
            image, geometry = preprocess(load_display_image(record.path), size)
            batch = image[None]
            region, _ = model.classify_regions(batch)[0]
            region_truth.append(record.region_index)
            region_pred.append(REGION_CLASSES.index(region or UNSUPPORTED))
            if record.region != UNSUPPORTED:
                probability = model.classify_fractures(batch, [record.region])[0]
                assert probability is not None
                study_probs[record.study_id].append(probability)
                study_info[record.study_id] = (record.region, record.label)
                suspected, _ = model.thresholds_for(record.region)
                if record.label and record.box is not None and probability >= suspected:
                    target = geometry.box_to_model(*record.box)
                    detected += 1
                    for method in CAM_METHODS:
                        _cam, box = model.explain(batch, [record.region], method)[0]
                        hits[method] += bool(box is not None and box_contains(box, target))
                    if occlusion:
                        tensor = torch.as_tensor(image)
                        occlusion_hits += box_contains(
                            _occlusion_box(model, record.region, tensor), target
                        )
            advance(1)

    region_truth_a, region_pred_a = np.asarray(region_truth), np.asarray(region_pred)
    metrics: dict[str, Any] = {
        "data": data_description or f"{len(records)} labelled images",
        "images": len(records),
        "region_accuracy": round(float((region_truth_a == region_pred_a).mean()), 4),
        "region_kappa": round(cohen_kappa(region_truth_a, region_pred_a), 4),
        "region_confusion": {
            "classes": list(REGION_CLASSES),
            "matrix": [
                [int(((region_truth_a == t) & (region_pred_a == p)).sum()) for p in range(8)]
                for t in range(len(REGION_CLASSES))
            ],
        },
        "aggregation": metadata.study_aggregation,
        "regions": {},
    }
    studies = sorted(study_probs)
    scores = np.asarray(
        [aggregate_study(study_probs[s], metadata.study_aggregation) for s in studies]
    )
    labels = np.asarray([study_info[s][1] for s in studies])
    regions = np.asarray([study_info[s][0] for s in studies])
    suspected_all = np.asarray([model.thresholds_for(r)[0] for r in regions])
    likely_all = np.asarray([model.thresholds_for(r)[1] for r in regions])
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    if studies:
        # Overall: each study against its own region's thresholds (what the node does).
        overall = binary_metrics(labels, scores, 0.5, 0.5, seed)
        for name, thresholds in (("suspected", suspected_all), ("likely", likely_all)):
            predicted = (scores >= thresholds).astype(int)
            matrix = confusion(labels, predicted)
            pos, neg = matrix["tp"] + matrix["fn"], matrix["tn"] + matrix["fp"]
            overall[f"threshold_{name}"] = "per region"
            overall[f"sensitivity_{name}"] = round(matrix["tp"] / pos, 4) if pos else None
            overall[f"specificity_{name}"] = round(matrix["tn"] / neg, 4) if neg else None
            overall[f"kappa_{name}"] = round(cohen_kappa(labels, predicted), 4)
            overall[f"confusion_{name}"] = matrix
        metrics["overall"] = overall
        if overall["auroc"] is not None:
            curves["overall"] = (*roc_curve(labels, scores), overall["auroc"])
        for region in REGIONS:
            mask = regions == region
            if not mask.any():
                continue
            row = binary_metrics(labels[mask], scores[mask], *model.thresholds_for(region), seed)
            metrics["regions"][region] = row
            if row["auroc"] is not None:
                curves[region] = (*roc_curve(labels[mask], scores[mask]), row["auroc"])
    metrics["gradcam_detected_positives_with_box"] = detected
    for method in CAM_METHODS:
        rate = round(hits[method] / detected, 4) if detected else None
        metrics[f"{method}_box_hit_rate"] = rate
    if occlusion:
        rate = round(occlusion_hits / detected, 4) if detected else None
        metrics["occlusion_box_hit_rate"] = rate

    figures: dict[str, Path] = {}
    if curves:
        figures["roc"] = plot_roc(curves, out_dir / "roc.png")
    if studies:
        figures["reliability"] = plot_reliability(labels, scores, out_dir / "reliability.png")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = out_dir / "report.md"
    report.write_text(_report(metadata.name, metadata.version, metrics, figures))

    if write_into_bundle:
        docs = bundle_dir / MODEL_CARD_FILE.parent
        bundle_figures = {}
        for name, file in figures.items():
            shutil.copyfile(file, docs / file.name)
            bundle_figures[name] = (MODEL_CARD_FILE.parent / file.name).as_posix()
        update_metadata(
            bundle_dir,
            metrics={**metadata.metrics, "evaluation": metrics, "figures": bundle_figures},
        )
    logger.info("evaluation of %s written to %s", bundle_dir, out_dir)
    return Evaluation(metrics=metrics, report=report, figures=figures)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _report(name: str, version: str, metrics: dict[str, Any], figures: dict[str, Path]) -> str:
    lines = [
        f"# Evaluation of {name} {version}",
        "",
        f"Data: {metrics['data']} ({metrics['images']} images). Study probability: "
        f"{metrics['aggregation']} of the views, from the network of the study's region.",
        "",
        "## Fracture (study level)",
        "",
        "| scope | studies | positives | AUROC | 95% CI | sens@suspected | spec@suspected "
        "| kappa@suspected | sens@likely | spec@likely | kappa@likely | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("overall", metrics.get("overall", {})), *metrics["regions"].items()]
    for scope, row in rows:
        if not row:
            continue
        lines.append(
            "| "
            + " | ".join(
                _fmt(row.get(k))
                for k in (
                    "studies",
                    "positives",
                    "auroc",
                    "auroc_ci",
                    "sensitivity_suspected",
                    "specificity_suspected",
                    "kappa_suspected",
                    "sensitivity_likely",
                    "specificity_likely",
                    "kappa_likely",
                    "ece",
                )
            ).join([f"{scope} | ", " |"])
        )
    lines += ["", "Confusion matrices (tp / fp / tn / fn):", ""]
    for scope, row in rows:
        if row:
            s, k = row["confusion_suspected"], row["confusion_likely"]
            lines.append(
                f"- {scope}: suspected {s['tp']}/{s['fp']}/{s['tn']}/{s['fn']}, "
                f"likely {k['tp']}/{k['fp']}/{k['tn']}/{k['fn']}"
            )
    classes = metrics["region_confusion"]["classes"]
    lines += [
        "",
        "## Region (stage 1, image level)",
        "",
        f"Accuracy {_fmt(metrics['region_accuracy'])}, kappa {_fmt(metrics['region_kappa'])}.",
        "",
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    for cls, counts in zip(classes, metrics["region_confusion"]["matrix"], strict=True):
        lines.append(f"| {cls} | " + " | ".join(str(c) for c in counts) + " |")
    lines += [
        "",
        "## Explanations",
        "",
        f"Share of the {metrics['gradcam_detected_positives_with_box']} detected positive "
        "images with a known box whose hottest box contains the centre of the true break:",
        "",
        f"- Grad-CAM (what the node writes): {_fmt(metrics['gradcam_box_hit_rate'])}",
        f"- Grad-CAM++: {_fmt(metrics['gradcampp_box_hit_rate'])}",
    ]
    if "occlusion_box_hit_rate" in metrics:
        lines.append(
            f"- Occlusion sensitivity (second opinion): {_fmt(metrics['occlusion_box_hit_rate'])}"
        )
    lines.append("")
    for figure_name, file in figures.items():
        lines.append(f"![{figure_name}]({file.name})")
    return "\n".join(lines) + "\n"
