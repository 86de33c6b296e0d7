"""What a bundle is: its metadata (:class:`BundleMetadata`), its file layout and its model card.

Kept apart from :mod:`models.runtime.bundle` (which reads and writes bundle directories and
builds the :class:`~models.runtime.inference.HierarchicalModel`) so inference can depend on
the metadata without depending on the loader: ``bundle -> inference -> metadata``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import monai
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from config import REGIONS, UNSUPPORTED
from config.domain.anatomy import BODY_PARTS
from config.domain.findings import OperatingPoints
from config.domain.intended_use import IntendedUse
from config.domain.vocabulary import LabelMeaning, region_classes
from models.runtime.detection import DetectorSpec
from models.runtime.networks import NetworkSpec, shared_outputs

METADATA_FILE = Path("configs/metadata.json")
WEIGHTS_FILE = Path("models/model.pt")
MODEL_CARD_FILE = Path("docs/README.md")


#: Test-time augmentation of stage 2: none, or the mean of the view and its mirror image.
TestTimeAugmentation = Literal["none", "flip"]


class PixelGate(BaseModel):
    """The pixel gate's out-of-distribution limit (:mod:`models.runtime.ood`).

    A view whose stage-1 features lie farther than ``max_distance`` (squared Mahalanobis
    distance to the nearest region's training mean) is not assessed. The limit is the
    ``in_distribution_acceptance`` quantile of the validation images of the bundle's
    regions, so that share of such images passes; the statistics it is measured against
    are stored with the weights (``models/model.pt``, key ``pixel_gate``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: Literal["mahalanobis"] = "mahalanobis"
    max_distance: float = Field(gt=0.0)
    in_distribution_acceptance: float = Field(gt=0.5, le=1.0)
    fitted_on: str = Field(min_length=1)


class BundleMetadata(BaseModel):
    """What a bundle is, what it was trained on, and how to use its outputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str
    intended_use: IntendedUse = Field(
        description="What the bundle was made for (the header gate and the model card read it); "
        "a bundle that states it in prose only is read as its regions, any header."
    )
    training_data: str
    trained_on_synthetic_data: bool
    label_meaning: LabelMeaning = Field(
        default=LabelMeaning.FRACTURE,
        description="What its positive labels meant; bundles made before the field existed "
        "were trained on fracture labels or phantoms.",
    )
    image_size: int = Field(ge=32, description="Side of the square model input (preprocessing).")
    region_network: NetworkSpec = Field(
        description="Stage 1's network; in the shared-backbone form the one network of both "
        "stages, with the regions' fracture logits after stage 1's classes."
    )
    fracture_network: NetworkSpec = Field(
        description="Each region's stage-2 network; in the shared-backbone form the shape of "
        "a region's fracture logit (the region network's architecture, one output)."
    )
    shared_backbone: bool = Field(
        default=False,
        description="True: one network gives stage 1's region and every region's fracture "
        "logit in one forward pass (weights key 'shared'); False: a region network and one "
        "fracture network per region.",
    )
    regions: tuple[str, ...] = Field(
        default=REGIONS,
        min_length=1,
        description="Stage 1's regions in network output order ('unsupported' follows them); "
        "bundles made before the field existed have MURA's seven.",
    )
    region_min_probability: float = Field(
        ge=0.0,
        le=1.0,
        description="Stage 1's confidence floor on calibrated probabilities: below it a view "
        "is not assessed (chosen after temperature scaling, on validation images).",
    )
    pixel_gate: PixelGate | None = Field(
        default=None,
        description="The out-of-distribution limit; None in bundles made before it existed "
        "(their only pixel gate is stage 1's 'unsupported' class and the floor).",
    )
    fracture_types: tuple[str, ...] = Field(
        default=(),
        description="The type head's classes in output order (e.g. the AO groups of "
        "GRAZPEDWRI-DX); empty for a bundle without one.",
    )
    type_network: NetworkSpec | None = Field(
        default=None,
        description="The type head: one network over all regions, run on positive views.",
    )
    detector: DetectorSpec | None = Field(
        default=None,
        description="The fracture detector (MONAI's RetinaNet, weights key 'detector'): its "
        "box replaces Grad-CAM's on flagged views; None for a bundle without one.",
    )
    thresholds: dict[str, OperatingPoints]
    study_aggregation: Literal["mean", "max"] = "mean"
    test_time_augmentation: TestTimeAugmentation = Field(
        default="none",
        description="'flip': stage 2's probability is the mean of the view's and its "
        "left-right mirror's (calibrated each); the operating points were picked that way.",
    )
    temperatures: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Temperature-scaling calibration per network: key 'region' for stage 1 and a region "
            "name for its fracture network; logits are divided by it. Absent means 1.0."
        ),
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    monai_version: str = monai.__version__
    torch_version: str = torch.__version__
    training_code_fingerprint: str | None = Field(
        default=None,
        description=(
            "models.training.fingerprint.training_code_fingerprint() of the code that trained "
            "the bundle (blind to formatting and comments); None if not recorded."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _prose_intended_use(cls, data: Any) -> Any:
        # Bundles written before the intended use was structured state it as a sentence.
        if isinstance(data, dict) and isinstance(data.get("intended_use"), str):
            regions = tuple(data.get("regions") or REGIONS)
            data = {**data, "intended_use": {"statement": data["intended_use"], "regions": regions}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> BundleMetadata:
        self._known_regions()
        self._network_shapes()
        self._type_head()
        missing = [region for region in self.regions if region not in self.thresholds]
        if missing:
            raise ValueError(f"thresholds missing for regions {missing}")
        unknown = [region for region in self.thresholds if region not in self.regions]
        if unknown:
            raise ValueError(f"thresholds for unknown regions {unknown}")
        allowed = ("region", *self.regions, *(("type",) if self.type_network else ()))
        for network, temperature in self.temperatures.items():
            if network not in allowed:
                raise ValueError(f"temperature for unknown network {network!r}; expected {allowed}")
            if not 1e-3 <= temperature <= 1e3:
                raise ValueError(
                    f"temperature {temperature} of {network!r} is outside [0.001, 1000]"
                )
        try:
            datetime.fromisoformat(self.created)
        except ValueError as error:
            raise ValueError(f"created {self.created!r} is not an ISO timestamp") from error
        return self

    def _known_regions(self) -> None:
        unknown = [r for r in self.regions if r not in BODY_PARTS or r == UNSUPPORTED]
        if unknown:
            raise ValueError(f"regions {unknown} are not body parts of {sorted(BODY_PARTS)}")
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"regions {list(self.regions)} name a region twice")
        beyond = [r for r in self.intended_use.regions if r not in self.regions]
        if beyond:
            raise ValueError(f"intended_use.regions {beyond} are not among regions")

    def _network_shapes(self) -> None:
        # The region network's outputs are region_classes in order, one per class (then, in
        # the shared form, one fracture logit per region).
        outputs = len(self.region_classes)
        if self.shared_backbone:
            outputs = shared_outputs(len(self.regions))
        if self.region_network.out_channels != outputs:
            raise ValueError(
                f"region_network.out_channels is {self.region_network.out_channels}; "
                f"expected {outputs} ({list(self.region_classes)}"
                + (", a fracture logit per region, a common one)" if self.shared_backbone else ")")
            )
        if self.fracture_network.out_channels not in (1, 2):
            raise ValueError(
                f"fracture_network.out_channels is {self.fracture_network.out_channels}; "
                "expected 1 (sigmoid) or 2 (softmax)"
            )
        if self.shared_backbone and (
            self.fracture_network.out_channels != 1
            or self.fracture_network.architecture != self.region_network.architecture
        ):
            raise ValueError(
                "a shared-backbone bundle's fracture_network must be the region network's "
                f"architecture ({self.region_network.architecture}) with one output; got "
                f"{self.fracture_network.architecture} with {self.fracture_network.out_channels}"
            )

    def _type_head(self) -> None:
        if (self.type_network is None) != (not self.fracture_types):
            raise ValueError("fracture_types and type_network go together")
        if self.type_network is not None:
            if len(set(self.fracture_types)) != len(self.fracture_types):
                raise ValueError(f"fracture_types {list(self.fracture_types)} repeat a name")
            if self.type_network.out_channels != len(self.fracture_types):
                raise ValueError(
                    f"type_network.out_channels is {self.type_network.out_channels}; "
                    f"expected {len(self.fracture_types)} ({list(self.fracture_types)})"
                )

    @property
    def region_classes(self) -> tuple[str, ...]:
        """Stage 1's classes in network output order: the regions, then 'unsupported'."""
        return region_classes(self.regions)

    def temperature(self, network: str) -> float:
        """Calibration temperature of ``network`` ('region', 'type' or a region name); 1.0
        if absent."""
        return float(self.temperatures.get(network, 1.0))


def _intended_use_section(use: IntendedUse) -> str:
    """The intended use as the model card states it: the sentence, then what is enforced."""
    ages = f"{use.min_age_years:g} years and older" if use.min_age_years is not None else "any age"
    if use.max_age_years is not None:
        ages = f"{use.min_age_years or 0:g} to {use.max_age_years:g} years"
    regions = ", ".join(
        f"{region} ({BODY_PARTS[region].code[0]} {BODY_PARTS[region].code[1]})"
        for region in use.regions
    )
    winner = {
        "not_assessed": "not assessed",
        "pixels": "the image's region is used",
        "header": "the header's region is used",
    }[use.header_conflict]
    return "\n".join(
        [
            use.statement,
            "",
            f"- Modalities: {', '.join(use.modalities)}",
            f"- Regions assessed: {regions}",
            f"- Views: {', '.join(use.views) if use.views else 'any projection'}",
            f"- Patients: {ages}; {'human only' if use.human_only else 'any species'}",
            f"- Secondary copies (Image Type SECONDARY): "
            f"{'assessed' if use.secondary_copies else 'not assessed'}",
            f"- Header and image naming different regions: {winner}",
            "- Anything else (another body part, a child, a non-human subject, an image the "
            "region model does not recognise) is reported as not assessed, with the reason.",
        ]
    )


def _type_line(metadata: BundleMetadata) -> str:
    if metadata.type_network is None:
        return "none (no type head)."
    return (
        f"one `{metadata.type_network.architecture}` over all regions, softmax over "
        f"{list(metadata.fracture_types)}; its most probable type is reported on views "
        "flagged as a fracture (a type is never a claim that there is a fracture)."
    )


def _pixel_gate_line(gate: PixelGate | None) -> str:
    if gate is None:
        return "none beyond stage 1's 'unsupported' class and its confidence floor."
    return (
        f"a view whose stage-1 features are farther than {gate.max_distance:g} (squared "
        "Mahalanobis distance to the nearest region's training mean) is not assessed; "
        f"the limit passes {gate.in_distribution_acceptance:.1%} of in-distribution "
        f"validation images ({gate.fitted_on})."
    )


def pixel_gate_lines(figures: dict[str, Any]) -> list[str]:
    """The pixel gate's evaluation as Markdown: a table per set, then each real image."""
    groups = figures.get("groups", {}).items()
    rows = [
        ("in-distribution held-out images (should pass)", figures.get("in_distribution")),
        ("synthetic 'unsupported' held-out images", figures.get("synthetic_unsupported")),
        *((f"{group} (outside the intended use)", row) for group, row in groups),
    ]
    lines = [
        "Views stopped by the pixel gate (header ignored): in all, and by part "
        "(out-of-distribution score, stage 1's 'unsupported' class, confidence floor).",
        "",
        "| set | images | not assessed | by score | by class | by floor |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows:
        if row:
            lines.append(
                f"| {name} | {row['images']} | {row['not_assessed']} | "
                f"{row['by_out_of_distribution']} | {row['by_unsupported']} | "
                f"{row['by_low_confidence']} |"
            )
    lines.append("")
    for source, outcome in figures.get("images", {}).items():
        lines.append(f"- {source}: {outcome.replace('_', ' ')}")
    lines += [
        "",
        "The header gate is a rule on the DICOM header, not a model, so it has no figures "
        "here: it stops a header that names another body part, a non-human subject, an age "
        "outside the range or a secondary copy, and lets an empty or ambiguous one through "
        "to the pixel gate.",
    ]
    return lines


def end_to_end_lines(figures: dict[str, Any]) -> list[str]:
    """The end-to-end evaluation as Markdown: what the node would say, study by study."""
    lines = [
        "Each study decided as the node decides it: stage 1's region for each view (or the "
        "pixel gate's 'not assessed'), then that region's network; a positive study not "
        "assessed, or assessed under another region (misrouted), counts as a miss. "
        f"{figures['studies']} studies, {figures['positives']} positive; "
        f"{figures['not_assessed']} not assessed, {figures['misrouted']} misrouted.",
        "",
        "| operating point | sensitivity | specificity | kappa | tp / fp / tn / fn |",
        "|---|---|---|---|---|",
    ]
    for point in ("suspected", "likely"):
        if f"confusion_{point}" in figures:
            counts = figures[f"confusion_{point}"]
            lines.append(
                f"| {point} | {figures[f'sensitivity_{point}']} | "
                f"{figures[f'specificity_{point}']} | {figures[f'kappa_{point}']} | "
                f"{counts['tp']} / {counts['fp']} / {counts['tn']} / {counts['fn']} |"
            )
    return lines


def localisation_lines(figures: dict[str, Any]) -> list[str]:
    """Box localisation as Markdown, beside what boxes of the same size would hit anyway."""
    lines = [
        f"Of the {figures['gradcam_detected_positives_with_box']} detected positive images "
        "with a known break box, the share whose hottest box contains the centre of the "
        "break, beside boxes of Grad-CAM's size at the image centre and placed at random "
        "(what a box hits without looking):",
        "",
    ]
    rows = (
        ("Grad-CAM (what the node draws without a detector)", "gradcam_box_hit_rate"),
        ("Grad-CAM++", "gradcampp_box_hit_rate"),
        ("occlusion sensitivity (second opinion)", "occlusion_box_hit_rate"),
        ("baseline: the same size at the centre", "centre_box_hit_rate"),
        ("baseline: the same size at random (expected)", "random_box_hit_rate"),
        ("Grad-CAM's box, mean IoU with the true box", "gradcam_box_iou_mean"),
        ("the detector's box (what the node draws where it finds one)", "detector_box_hit_rate"),
        ("the detector's box, mean IoU with the true box", "detector_box_iou_mean"),
    )
    lines += [f"- {name}: {figures[key]}" for name, key in rows if key in figures]
    if "detector_froc_score" in figures:
        lines += [
            "",
            f"The detector on all {figures['detector_images']} images of the bundle's regions "
            f"({figures['detector_true_boxes']} true boxes; a detection is true at IoU 0.1):",
            "",
            f"- COCO average precision at IoU 0.1: {figures['detector_ap_iou_0_1']}",
            f"- COCO average precision at IoU 0.5: {figures['detector_ap_iou_0_5']}",
            "- FROC score (mean sensitivity at 1/8 to 8 false positives per image): "
            f"{figures['detector_froc_score']}",
        ]
    return lines


def beside_lines(beside: dict[str, Any], metadata: BundleMetadata) -> list[str]:
    """This bundle's figures beside another's on the same held-out data, as Markdown."""
    form = "shared backbone" if metadata.shared_backbone else "two networks"
    lines = [
        f"### Beside {beside['bundle']}",
        "",
        "The same held-out images through both bundles.",
        "",
        f"| figure | this bundle ({form}) | {beside['bundle']} |",
        "|---|---|---|",
    ]
    return lines + [f"| {label} | {this} | {other} |" for label, this, other in beside["rows"]]


def type_lines(figures: dict[str, Any]) -> list[str]:
    """The type head's evaluation as Markdown: accuracy, sensitivity per type, confusion."""
    classes = figures["type_confusion"]["classes"]
    lines = [
        f"The type head on {figures['type_images']} positive images with a known type (each "
        f"image's true region and fracture given): accuracy {figures['type_accuracy']}.",
        "",
        "| true type | sensitivity | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for name, row in zip(classes, figures["type_confusion"]["matrix"], strict=True):
        sensitivity = figures["type_sensitivity"].get(name)
        lines.append(f"| {name} | {sensitivity} | " + " | ".join(str(n) for n in row) + " |")
    return lines


def _metric_lines(metrics: dict[str, Any]) -> str:
    lines = []
    for key, value in metrics.items():
        if key in ("figures", "evaluation"):
            continue
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) or "- none"


def _evaluation_section(metadata: BundleMetadata) -> str:
    evaluation = metadata.metrics.get("evaluation")
    figures = metadata.metrics.get("figures") or {}
    if not evaluation and not figures:
        return ""
    parts = ["\n## Evaluation (held out of training and validation)\n"]
    if isinstance(evaluation, dict):
        overall = evaluation.get("overall", {})
        parts.append(f"Data: {evaluation.get('data', 'not recorded')}\n")
        if overall:
            parts.append(
                "### Stage 2 given the true region (each study scored by its own region's "
                "network)\n"
            )
            parts.append(
                "| scope | studies | AUROC (95% CI) | sens@suspected | spec@suspected "
                "| sens@likely | spec@likely | kappa@suspected | kappa@0.5 | ECE |"
            )
            parts.append("|---|---|---|---|---|---|---|---|---|---|")
            for scope, row in [("overall", overall), *evaluation.get("regions", {}).items()]:
                parts.append(
                    f"| {scope} | {row.get('studies')} | {row.get('auroc')} "
                    f"({row.get('auroc_ci')}) | {row.get('sensitivity_suspected')} | "
                    f"{row.get('specificity_suspected')} | {row.get('sensitivity_likely')} | "
                    f"{row.get('specificity_likely')} | {row.get('kappa_suspected')} | "
                    f"{row.get('kappa_at_0_5')} | {row.get('ece')} |"
                )
            parts.append("")
        if "region_accuracy" in evaluation:
            parts.append(
                f"### Stage 1 (region, image level)\n\nAccuracy {evaluation['region_accuracy']}"
                f", kappa {evaluation.get('region_kappa')}.\n"
            )
        if isinstance(evaluation.get("end_to_end"), dict):
            parts += ["### End to end", "", *end_to_end_lines(evaluation["end_to_end"]), ""]
        if "gradcam_detected_positives_with_box" in evaluation:
            parts += ["### Localisation", "", *localisation_lines(evaluation), ""]
        if "type_confusion" in evaluation:
            parts += ["### Fracture type", "", *type_lines(evaluation), ""]
        if isinstance(evaluation.get("pixel_gate"), dict):
            parts += ["", "### Pixel gate", "", *pixel_gate_lines(evaluation["pixel_gate"])]
        if isinstance(evaluation.get("beside"), dict):
            parts += ["", *beside_lines(evaluation["beside"], metadata)]
    for name, file in figures.items():
        parts.append(f"\n![{name}]({Path(file).relative_to(MODEL_CARD_FILE.parent)})")
    return "\n".join(parts) + "\n"


def _models_section(metadata: BundleMetadata) -> str:
    """The card's description of the networks and what is done with their outputs."""
    temperatures = (
        ", ".join(f"{k} {v:.3f}" for k, v in metadata.temperatures.items()) or "none (1.0)"
    )
    side = metadata.image_size
    return f"""- Input: one display-rendered radiograph, fitted to {side}x{side},
  standardised per image (see `models.runtime.preprocessing`).
- Stage 1 (region): `{metadata.region_network.architecture}`, softmax over
  {list(metadata.region_classes)}; a region below (calibrated) probability
  {metadata.region_min_probability} counts as unsupported.
- Pixel gate: {_pixel_gate_line(metadata.pixel_gate)}
- Stage 2 (fracture): {_stage_two_line(metadata)}
- Fracture type: {_type_line(metadata)}
- Study probability: {metadata.study_aggregation} of the image probabilities.
- Test-time augmentation of stage 2: {metadata.test_time_augmentation}.
- Calibration (temperature scaling, fitted on the validation split): {temperatures}.
- Explanation: Grad-CAM on the fracture output (the heatmap).
- Box on a flagged view: {_box_line(metadata.detector)}"""


def _stage_two_line(metadata: BundleMetadata) -> str:
    if not metadata.shared_backbone:
        return f"one `{metadata.fracture_network.architecture}` per region."
    return (
        "the same network as stage 1 (shared backbone): after stage 1's classes, one "
        "fracture logit per region, so one forward pass gives a view's region and its "
        "region's fracture logit; trained on both targets at once."
    )


def _box_line(detector: DetectorSpec | None) -> str:
    if detector is None:
        return "Grad-CAM's hottest region (no detector)."
    return (
        "the detector's best box (MONAI's 2D RetinaNet, trained on the data's fracture "
        f"boxes) at score {detector.report_score:g} or more; Grad-CAM's hottest region "
        "where the detector finds none."
    )


def model_card(metadata: BundleMetadata) -> str:
    """The Markdown model card (``docs/README.md``) that describes a bundle to a reader."""
    thresholds = "\n".join(
        f"| {region} | {points.suspected:.3f} | {points.likely:.3f} |"
        for region, points in metadata.thresholds.items()
    )
    metrics = _metric_lines(metadata.metrics)
    fingerprint = (
        f"Training code fingerprint: {metadata.training_code_fingerprint}.\n"
        if metadata.training_code_fingerprint
        else ""
    )
    synthetic = (
        "\n**This bundle was trained on synthetic data only. It is NOT for clinical use.**\n"
        if metadata.trained_on_synthetic_data
        else ""
    )
    return f"""# {metadata.name} {metadata.version}
{synthetic}
{metadata.description}

## Intended use

{_intended_use_section(metadata.intended_use)}

## Training data

{metadata.training_data}

Labels: {metadata.label_meaning.value}: {metadata.label_meaning.description}

## Models

{_models_section(metadata)}

## Operating points

| region | suspected (high sensitivity) | likely (high specificity) |
|---|---|---|
{thresholds}

## Training (figures on the validation split, where thresholds and temperatures were fitted)

{metrics}
{_evaluation_section(metadata)}
## Versions

Created {metadata.created} with MONAI {metadata.monai_version}, PyTorch {metadata.torch_version}.
{fingerprint}"""
