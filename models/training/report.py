"""The evaluation's pictures and text: ROC curves, reliability diagram, Markdown report.

Figures are drawn with matplotlib's object API (:class:`matplotlib.figure.Figure`), so no
pyplot state and no global backend switch: saving a PNG renders with Agg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from models.runtime.metadata import end_to_end_lines, localisation_lines, pixel_gate_lines
from models.training.metrics import expected_calibration_error, reliability_bins

#: Columns of the study-level table, in order, and the key of each in a metrics row.
_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("studies", "studies"),
    ("positives", "positives"),
    ("AUROC", "auroc"),
    ("95% CI", "auroc_ci"),
    ("sens@suspected", "sensitivity_suspected"),
    ("spec@suspected", "specificity_suspected"),
    ("kappa@suspected", "kappa_suspected"),
    ("sens@likely", "sensitivity_likely"),
    ("spec@likely", "specificity_likely"),
    ("kappa@likely", "kappa_likely"),
    ("ECE", "ece"),
)


def _square_axes() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(6, 6), dpi=100)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    return figure, axes


def _save(figure: Figure, axes: Axes, legend_location: str, path: Path) -> Path:
    axes.legend(loc=legend_location, fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    """ROC curves ``{name: (fpr, tpr, auroc)}`` into one PNG."""
    figure, axes = _square_axes()
    for name, (fpr, tpr, area) in curves.items():
        axes.plot(fpr, tpr, lw=2.5 if name == "overall" else 1.2, label=f"{name} ({area:.3f})")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("Study-level ROC (AUROC)")
    return _save(figure, axes, "lower right", path)


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, path: Path) -> Path:
    """Reliability diagram (observed frequency against mean probability per bin) as PNG."""
    bins = reliability_bins(labels, probabilities)
    ece = expected_calibration_error(labels, probabilities)
    figure, axes = _square_axes()
    axes.lines[0].set_label("perfect calibration")
    if bins:
        mean_p, observed, _counts = zip(*bins, strict=True)
        axes.plot(mean_p, observed, marker="o", label=f"model (ECE {ece:.3f})")
        for p, o, n in bins:
            axes.annotate(str(n), (p, o), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axes.set(xlabel="predicted fracture probability", ylabel="observed fracture frequency")
    axes.set(xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("Reliability (study level; numbers: studies per bin)")
    return _save(figure, axes, "upper left", path)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _fracture_section(metrics: dict[str, Any]) -> list[str]:
    header = " | ".join(title for title, _ in _TABLE_COLUMNS)
    lines = [
        "## Stage 2 given the true region (study level)",
        "",
        f"| scope | {header} |",
        "|---" * (len(_TABLE_COLUMNS) + 1) + "|",
    ]
    scopes = [("overall", metrics.get("overall")), *metrics["regions"].items()]
    rows = [(scope, row) for scope, row in scopes if row]
    for scope, row in rows:
        cells = " | ".join(_fmt(row.get(key)) for _, key in _TABLE_COLUMNS)
        lines.append(f"| {scope} | {cells} |")
    lines += ["", "Confusion matrices (tp / fp / tn / fn):", ""]
    for scope, row in rows:
        s, k = row["confusion_suspected"], row["confusion_likely"]
        lines.append(
            f"- {scope}: suspected {s['tp']}/{s['fp']}/{s['tn']}/{s['fn']}, "
            f"likely {k['tp']}/{k['fp']}/{k['tn']}/{k['fn']}"
        )
    return lines


def _region_section(metrics: dict[str, Any]) -> list[str]:
    classes = metrics["region_confusion"]["classes"]
    lines = [
        "## Region (stage 1, image level)",
        "",
        f"Accuracy {_fmt(metrics['region_accuracy'])}, kappa {_fmt(metrics['region_kappa'])}.",
        "",
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    for cls, counts in zip(classes, metrics["region_confusion"]["matrix"], strict=True):
        lines.append(f"| {cls} | " + " | ".join(str(c) for c in counts) + " |")
    return lines


def evaluation_report(
    name: str, version: str, metrics: dict[str, Any], figures: dict[str, Path]
) -> str:
    """The Markdown report of :func:`models.training.evaluation.evaluate_bundle`."""
    lines = [
        f"# Evaluation of {name} {version}",
        "",
        f"Data: {metrics['data']} ({metrics['images']} images). Study probability: "
        f"{metrics['aggregation']} of the views, from the network of the study's region.",
        "",
        *_fracture_section(metrics),
        "",
        *_region_section(metrics),
        "",
        "## End to end (what the node would say)",
        "",
        *end_to_end_lines(metrics["end_to_end"]),
        "",
        "## Localisation",
        "",
        *localisation_lines(metrics),
        "",
    ]
    if "pixel_gate" in metrics:
        lines += ["## Pixel gate", "", *pixel_gate_lines(metrics["pixel_gate"]), ""]
    lines += [f"![{figure_name}]({file.name})" for figure_name, file in figures.items()]
    return "\n".join(lines) + "\n"


#: The figures a comparison of two bundles shows: label, then the keys into an evaluation.
COMPARED_FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("region accuracy (stage 1)", ("region_accuracy",)),
    ("fracture AUROC, study level, true region given", ("overall", "auroc")),
    ("sensitivity at 'suspected'", ("overall", "sensitivity_suspected")),
    ("specificity at 'suspected'", ("overall", "specificity_suspected")),
    ("end to end: sensitivity at 'suspected'", ("end_to_end", "sensitivity_suspected")),
    ("end to end: specificity at 'suspected'", ("end_to_end", "specificity_suspected")),
    ("Grad-CAM box hit rate", ("gradcam_box_hit_rate",)),
)


def _figure(evaluation: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = evaluation
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def beside_figures(
    metrics: dict[str, Any], other_metrics: dict[str, Any], other_name: str
) -> dict[str, Any]:
    """A bundle's figures beside another's evaluated on the same data (the model card's
    "Beside" table), from both bundles' metadata metrics: ``{"bundle": other_name,
    "rows": [[label, this, other], ...]}``, the training time last.

    Raises
    ------
    ValueError
        If either is not evaluated, or not on the same data (description and count).
    """
    this, other = metrics.get("evaluation"), other_metrics.get("evaluation")
    if not (isinstance(this, dict) and isinstance(other, dict)) or any(
        other.get(key) != this.get(key) for key in ("data", "images")
    ):
        raise ValueError(f"{other_name} was not evaluated on the same data as this bundle")
    rows = [[label, _figure(this, keys), _figure(other, keys)] for label, keys in COMPARED_FIGURES]
    rows.append(
        [
            "training time (s)",
            metrics.get("training_seconds"),
            other_metrics.get("training_seconds"),
        ]
    )
    return {"bundle": other_name, "rows": rows}
