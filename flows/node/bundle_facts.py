"""What ``status``, ``check`` and the metrics need to know of a bundle, read in a moment.

The bundle's ``configs/metadata.json`` is read as plain JSON here, not through
``models.runtime.bundle`` (which imports torch and takes seconds): its name, version,
whether it was trained on synthetic data, and the evaluation figures drift compares with.
``check`` and the node load the bundle for real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: models.runtime.bundle.METADATA_FILE
METADATA_FILE = Path("configs/metadata.json")
#: models.runtime.monai_spec.NAMESPACE: where our keys sit beside the MONAI specification's.
NAMESPACE = "fracture_triage"


class BundleUnreadableError(ValueError):
    """The metadata cannot be read; the message says why (never its content)."""


@dataclass(frozen=True)
class BundleFacts:
    name: str
    version: str
    trained_on_synthetic_data: bool
    #: Region -> the share of studies its evaluation flagged at the suspected point.
    evaluated_positive_rates: dict[str, float]

    @property
    def identity(self) -> str:
        return f"{self.name} {self.version}"


def read_bundle_facts(bundle_dir: Path) -> BundleFacts:
    path = bundle_dir / METADATA_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        # Bundles written before the MONAI specification's layout hold our keys on top.
        metadata = document.get(NAMESPACE, document)
        return BundleFacts(
            name=str(metadata["name"]),
            version=str(metadata["version"]),
            trained_on_synthetic_data=bool(metadata.get("trained_on_synthetic_data", True)),
            evaluated_positive_rates=_evaluated_positive_rates(metadata.get("metrics")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise BundleUnreadableError(f"cannot read {path} ({type(error).__name__})") from None


def _evaluated_positive_rates(metrics: object) -> dict[str, float]:
    """``(tp + fp) / studies`` of each region's ``confusion_suspected`` in the evaluation."""
    if not isinstance(metrics, dict):
        return {}
    regions = (metrics.get("evaluation") or {}).get("regions") or {}
    rates = {}
    for region, figures in regions.items():
        confusion = figures.get("confusion_suspected") if isinstance(figures, dict) else None
        if not isinstance(confusion, dict):
            continue
        cells = [confusion.get(key) for key in ("tp", "fp", "tn", "fn")]
        if all(isinstance(cell, int) for cell in cells) and sum(cells) > 0:
            tp, fp, tn, fn = cells
            rates[str(region)] = (tp + fp) / (tp + fp + tn + fn)
    return rates
