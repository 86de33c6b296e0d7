"""Model commands: ``train``, ``evaluate``, ``build-demo-bundle``, ``make-phantom-dataset``.

Offline tooling: no node, no database; logs go to the console as the settings say.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer
from pydantic import ValidationError

from flows.cli.options import ConfigOption, console, fail, settings_for

if TYPE_CHECKING:
    from models.training.datasets import ImageRecord

LayoutOption = Annotated[
    str,
    typer.Option(
        "--layout",
        help="Data layout: mura, csv (path, region, label[, box]), dicom, fracatlas, grazpedwri.",
    ),
]
DataOption = Annotated[
    Path,
    typer.Option(help="Data set: MURA, FracAtlas or GRAZPEDWRI-DX folder, CSV file, DICOM folder."),
]
LabelsOption = Annotated[
    Path | None, typer.Option(help="DICOM layout: labels CSV (default DATA/labels.csv).")
]
PresetOption = Annotated[
    str,
    typer.Option(
        help="mura (DenseNet121 at 320 px, MURA's baseline, for a GPU) or phantom "
        "(a short CPU run on make-phantom-dataset data); the options below override it."
    ),
]
ArchitectureOption = Annotated[
    str | None,
    typer.Option(
        help="densenet121, densenet169, densenet-small, efficientnet-b0, efficientnet-b1."
    ),
]
InitWeightsOption = Annotated[
    Path | None,
    typer.Option(
        help="A local checkpoint to start from (e.g. ImageNet weights you downloaded; "
        "nothing is downloaded here). Matching tensors are copied, a 3-channel first "
        "convolution summed to one."
    ),
]
EpochsOption = Annotated[int | None, typer.Option(help="Epochs of each stage (default: preset's).")]
WorkersOption = Annotated[
    int | None, typer.Option(help="Data loader worker processes (GPU runs: 4-8).")
]
DeviceOption = Annotated[str, typer.Option(help="auto (the GPU when present), cpu or cuda.")]
SensitivityOption = Annotated[
    float | None,
    typer.Option(help="Sensitivity of the 'suspected' (screening) point (default 0.95)."),
]
SpecificityOption = Annotated[
    float | None, typer.Option(help="Specificity of the 'likely' point (default 0.95).")
]
AggregationOption = Annotated[
    str | None, typer.Option(help="Study probability from its views: mean (MURA's) or max.")
]
TtaOption = Annotated[
    str | None,
    typer.Option(
        "--tta",
        help="Test-time augmentation of stage 2: none, or flip (each view averaged with "
        "its mirror image; the operating points are picked the same way).",
    ),
]
SharedBackboneOption = Annotated[
    bool | None,
    typer.Option(
        "--shared-backbone/--two-networks",
        help="One network for both stages (the region and each region's fracture logit "
        "from one forward pass) instead of a region network and one per region.",
    ),
]
BesideOption = Annotated[
    Path | None,
    typer.Option(
        help="With --write-card: another bundle whose card holds an evaluation on the same "
        "data (e.g. the other stage form); the card shows its figures beside these."
    ),
]
DetectorEpochsOption = Annotated[
    int | None,
    typer.Option(
        help="Train the fracture detector (MONAI's RetinaNet) for this many epochs on the "
        "images with fracture boxes; its box replaces Grad-CAM's (default 0: none)."
    ),
]
MaxStepsOption = Annotated[
    int | None, typer.Option(help="Cap each epoch (a quick trial of a configuration).")
]
ResumeOption = Annotated[bool, typer.Option(help="Continue from OUT/training/ checkpoints.")]
SyntheticOption = Annotated[
    bool | None, typer.Option(help="Mark the bundle as trained on phantoms (default: preset's).")
]

LabelMeaningOption = Annotated[
    str | None,
    typer.Option(
        help="What a positive label means: fracture, or abnormality (the default for the "
        "mura layout: MURA's labels mark any abnormality)."
    ),
]
AgeOption = Annotated[
    float | None,
    typer.Option(
        help="Age limit of the intended use in years (default: the layout's; adults, or "
        "0 to 19 for grazpedwri). --min-age 0 assesses any age."
    ),
]


def _problems(error: ValidationError) -> str:
    """A validation error's problems on one line, each named by its field."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
    )


def _load_data(data: Path, layout: str, labels: Path | None) -> list[ImageRecord]:
    from models.training.datasets import DatasetError
    from models.training.layouts import LAYOUTS, load_records

    if layout not in LAYOUTS:
        fail(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    try:
        return load_records(data, layout, labels)  # type: ignore[arg-type]
    except DatasetError as error:
        fail(f"cannot load {data}: {error}")


def build_demo_bundle(
    out: Annotated[Path, typer.Option(help="Bundle directory.")] = Path("var/bundles/demo"),
    seed: int = 0,
    if_stale: Annotated[
        bool, typer.Option("--if-stale", help="Keep a bundle the current training code made.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Train the demo bundle on synthetic phantoms (a few minutes on 2 CPU cores)."""
    settings_for(config)
    from models.training.demo import demo_bundle_is_current, train_demo_bundle

    if if_stale and demo_bundle_is_current(out):
        console.print(f"demo bundle at {out} is current")
        return
    train_demo_bundle(out, seed=seed, progress=True)
    console.print(f"demo bundle written to {out}")


# Long: a command's parameters are its options, one line each.
def train(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    layout: LayoutOption = "mura",
    labels: LabelsOption = None,
    preset: PresetOption = "mura",
    architecture: ArchitectureOption = None,
    init_weights: InitWeightsOption = None,
    image_size: Annotated[int | None, typer.Option(help="Model input side in pixels.")] = None,
    epochs: EpochsOption = None,
    batch_size: int | None = None,
    num_workers: WorkersOption = None,
    device: DeviceOption = "auto",
    sensitivity_target: SensitivityOption = None,
    specificity_target: SpecificityOption = None,
    aggregation: AggregationOption = None,
    tta: TtaOption = None,
    shared_backbone: SharedBackboneOption = None,
    detector_epochs: DetectorEpochsOption = None,
    max_steps_per_epoch: MaxStepsOption = None,
    resume: ResumeOption = False,
    name: str = "fracture-triage",
    version: str = "0.1.0",
    synthetic: SyntheticOption = None,
    label_meaning: LabelMeaningOption = None,
    min_age: AgeOption = None,
    max_age: AgeOption = None,
    seed: int = 0,
    config: ConfigOption = None,
) -> None:
    """Train a two-stage bundle (region, then per-region fracture) on labelled radiographs."""
    settings_for(config)
    from models.training.config import PRESETS, preset_config
    from models.training.layouts import LAYOUT_DEFAULTS, LayoutDefaults
    from models.training.train import train as train_bundle

    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    records = _load_data(data, layout, labels)
    chosen = {
        "architecture": architecture,
        "init_weights": init_weights,
        "image_size": image_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "trained_on_synthetic_data": synthetic,
        "sensitivity_target": sensitivity_target,
        "specificity_target": specificity_target,
        "study_aggregation": aggregation,
        "test_time_augmentation": tta,
        "shared_backbone": shared_backbone,
        "detector_epochs": detector_epochs,
        "max_steps_per_epoch": max_steps_per_epoch,
        "label_meaning": label_meaning,
        "min_age_years": min_age,
        "max_age_years": max_age,
    }
    options = LAYOUT_DEFAULTS.get(layout, LayoutDefaults()).training_options()
    options.update({k: v for k, v in chosen.items() if v is not None})
    options.update(device=device, resume=resume, name=name, version=version, seed=seed)
    options["training_data"] = f"{layout} data set at {data.name}"
    if epochs is not None:
        options.update(region_epochs=epochs, fracture_epochs=epochs, finetune_epochs=epochs)
    try:
        training = preset_config(preset, **options)
    except ValidationError as error:
        fail(f"invalid training option: {_problems(error)}")
    train_bundle(training, records, out, progress=True)
    console.print(f"bundle written to {out} (model card: {out / 'docs' / 'README.md'})")


def _test_split(bundle: Path, data: Path, records: list[ImageRecord]) -> list[ImageRecord]:
    """The records of the patients the bundle's training held out."""
    from models.training.splits import SPLITS_FILE, PatientSplits

    splits = PatientSplits.read(bundle)
    if splits is None:
        fail(
            f"no {bundle / SPLITS_FILE}: the bundle does not record its training split; "
            "pass --split all with data it was not trained on"
        )
    records = [r for r in records if splits.contains("test", r.patient_id)]
    if not records:
        fail(f"no image of {data} is in the bundle's test split")
    return records


# Long: a command's parameters are its options, one line each.
def evaluate(
    bundle: Annotated[Path, typer.Option(help="Bundle directory to evaluate.")],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Report folder (report.md, PNG figures).")],
    layout: LayoutOption = "mura",
    labels: LabelsOption = None,
    split: Annotated[
        str,
        typer.Option(
            help="test (the patients training held out, BUNDLE/training/splits.json) or all."
        ),
    ] = "test",
    occlusion: Annotated[bool, typer.Option(help="Add occlusion sensitivity.")] = False,
    write_card: Annotated[
        bool,
        typer.Option(
            help="Also write the figures into the bundle's model card (refused unless every "
            "patient evaluated was held out of its training and validation)."
        ),
    ] = False,
    beside: BesideOption = None,
    tta: TtaOption = None,
    config: ConfigOption = None,
) -> None:
    """Evaluate a bundle: AUROC with CI, operating points, kappa, calibration, ROC, report.

    ``--tta`` evaluates with another test-time augmentation than the bundle's, to measure
    what it changes (the bundle's operating points are kept; not with ``--write-card``).
    """
    settings_for(config)
    from models.training.evaluation import CardRefusedError, evaluate_bundle, write_beside

    if split not in ("test", "all"):
        fail(f"unknown split {split!r}; choose test or all")
    if beside is not None and not write_card:
        fail("--beside puts figures into the model card: add --write-card")
    from models.runtime.metadata import TestTimeAugmentation  # torch: imported when run

    if tta is not None and tta not in get_args(TestTimeAugmentation):
        fail(f"unknown test-time augmentation {tta!r}; choose none or flip")
    records = _load_data(data, layout, labels)
    if split == "test":
        records = _test_split(bundle, data, records)
    try:
        result = evaluate_bundle(
            bundle,
            records,
            out,
            data_description=f"{layout} data set {data.name}, {split} split",
            occlusion=occlusion,
            write_into_bundle=write_card,
            test_time_augmentation=tta,  # type: ignore[arg-type]
        )
    except CardRefusedError as error:
        fail(str(error))
    if beside is not None:
        try:
            write_beside(bundle, beside)
        except ValueError as error:  # BundleError is one too
            fail(str(error))
    overall = result.metrics.get("overall", {})
    console.print(
        f"AUROC {overall.get('auroc')} (95% CI {overall.get('auroc_ci')}), region accuracy "
        f"{result.metrics['region_accuracy']}, Grad-CAM box hit rate "
        f"{result.metrics['gradcam_box_hit_rate']}; report: {result.report}"
    )


def make_phantom_dataset(
    out: Annotated[Path, typer.Option(help="Folder to write the phantom data set into.")],
    layout: LayoutOption = "mura",
    size: Annotated[int, typer.Option(help="Phantom image side in pixels.")] = 128,
    patients: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Patients per class (csv: images per class; mura: train patients per region, "
            "a third as many in valid; dicom: two-view studies per class). Default: a few.",
        ),
    ] = None,
    seed: int = 0,
    config: ConfigOption = None,
) -> None:
    """Write a small synthetic data set in the MURA, CSV or DICOM layout (for trying train)."""
    settings_for(config)
    from models.training.layouts import LAYOUTS, write_phantom_dataset

    if layout not in LAYOUTS:
        fail(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    path = write_phantom_dataset(out, layout, size, seed, patients)  # type: ignore[arg-type]
    console.print(f"phantom {layout} data set written; pass --data {path} --layout {layout}")
