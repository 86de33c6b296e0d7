"""Training: :func:`train` builds a two-stage bundle from labelled radiographs.

:func:`train` (``fracture-triage train``) reads records of any layout of
:mod:`models.training.layouts`, splits them by patient, and trains stage 1 (the data's
regions plus 'unsupported') and stage 2 (one fracture network on all regions, a break looks
alike on every bone, then a copy fine-tuned per region), and, where the data names two or
more fracture types, a type head over all regions; calibrates by temperature scaling and
picks the study-level operating points on the validation split. Images go through the
node's own display rendering and :func:`models.runtime.preprocessing.preprocess`.
:data:`models.training.config.PRESETS` names two configurations: ``"mura"`` (MURA's
baseline, for a GPU) and ``"phantom"`` (a short CPU run on phantoms).

The parts: :mod:`models.training.config` (what to train), :mod:`models.training.stages`
(one network per stage, checkpointed), :mod:`models.training.operating_points` (the
thresholds) and :mod:`models.training.demo` (the demo bundle: this training on phantoms).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Compose
from monai.utils import set_determinism
from torch import nn
from torch.utils.data import Subset

from config import UNSUPPORTED
from config.domain.intended_use import IntendedUse
from config.domain.vocabulary import region_classes
from models.runtime.bundle import BundleMetadata, save_bundle
from models.runtime.inference import calibrated_fracture_probability, fracture_probability
from models.runtime.networks import (
    NetworkSpec,
    SharedStages,
    build_network,
    resolve_device,
    shared_outputs,
)
from models.training.calibration import fit_temperature
from models.training.config import TrainConfig
from models.training.datasets import (
    ImageRecord,
    data_fracture_types,
    data_regions,
    record_dicts,
    region_counts,
    split_by_patient,
    write_unsupported_phantoms,
)
from models.training.detection import fit_detector
from models.training.fingerprint import training_code_fingerprint
from models.training.initial_weights import load_initial_weights
from models.training.operating_points import RegionOperatingPoints, region_operating_points
from models.training.pixel_gate import FittedPixelGate, StageOneOutputs, fit_pixel_gate
from models.training.progress import progress_bar
from models.training.splits import PatientSplits
from models.training.stages import (
    SharedStagesLoss,
    Stage,
    StageRunner,
    class_weights,
    epoch_steps,
    training_transforms,
)

logger = logging.getLogger(__name__)

#: Share of the synthetic 'unsupported' phantoms that goes to the validation split.
_UNSUPPORTED_VAL_SHARE = 0.2


# Long: a public entry point; its numpy-style docstring is two thirds of it.
def train(
    config: TrainConfig,
    records: Sequence[ImageRecord] | Mapping[str, Sequence[ImageRecord]],
    out_dir: str | Path,
    progress: bool = True,
) -> Path:
    """Train a two-stage bundle (region network, one fracture network per region).

    Stage 1 classifies the regions the training images show (MURA: its seven; FracAtlas:
    its four) plus 'unsupported'; the bundle assesses exactly those regions. If the
    data has no 'unsupported' images (MURA), ``config.unsupported_phantoms`` synthetic
    non-extremity images are added and the model card says so. Stage 2 first trains one
    fracture network on all regions (a break looks alike on every bone), then fine-tunes
    a copy per region; with ``config.shared_backbone`` one network learns both stages at
    once instead (:class:`~models.training.stages.SharedStagesLoss`, for
    ``config.shared_epochs``), and the calibration, gate and operating points below are
    fitted on its views alike. Losses are class-weighted (cross-entropy weights, BCE
    ``pos_weight``), the optimiser is AdamW with ReduceLROnPlateau on the validation loss,
    the best-validation weights are kept, and every epoch is checkpointed under
    ``out_dir/training/`` (``config.resume`` continues from there). Temperature scaling
    is fitted per network on the validation split, then the study-level operating points
    per region on the calibrated validation study probabilities.

    Parameters
    ----------
    config
        Architecture, sizes, schedule, targets.
    records
        All records (split here by patient) or ``{"train", "val"[, "test"]}`` lists.
    out_dir
        Bundle directory to write.
    progress
        Show a rich progress bar.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        If the train or validation split is empty, or a region of the validation images
        has no training images.
    """
    started = time.perf_counter()
    code = training_code_fingerprint()  # of the code that starts the run, not edits during it
    out_dir = Path(out_dir)
    work = out_dir / "training"
    set_determinism(seed=config.seed)
    device = resolve_device(config.device)
    splits, synthetic_unsupported = _split(config, records, work)
    data = _TrainingData.load(config, splits)
    with progress_bar(progress, f"training on {device.type}", data.total_steps(config)) as advance:
        runner = StageRunner(config, device, work / "checkpoints", advance)
        networks = _train_networks(config, runner, data)
    calibration = _calibrate(config, runner, networks, data)
    detector, detector_figures = fit_detector(
        config,
        [r for r in data.train_records if r.region in data.regions],
        [r for r in data.val_records if r.region in data.regions],
        device,
        progress,
    )
    elapsed = time.perf_counter() - started
    metrics = _metrics(splits, calibration, networks.summary, elapsed, runner) | detector_figures
    training_data = _training_data_text(config, splits, synthetic_unsupported)
    metadata = _bundle_metadata(config, data, training_data, calibration, metrics, code)
    if detector is not None:
        metadata = metadata.model_copy(update={"detector": detector.spec})
    (work / "train_config.json").write_text(config.model_dump_json(indent=2) + "\n")
    save_bundle(
        out_dir,
        metadata,
        *networks.stages_on_cpu(),
        calibration.pixel_gate.statistics,
        networks.type.cpu() if networks.type is not None else None,
        detector.network.cpu() if detector is not None else None,
    )
    logger.info("bundle trained in %.1f s on %s: %s", elapsed, device, metrics)
    return out_dir


# ----------------------------------------------------------------------------- data


def _split(
    config: TrainConfig,
    records: Sequence[ImageRecord] | Mapping[str, Sequence[ImageRecord]],
    work: Path,
) -> tuple[dict[str, list[ImageRecord]], int]:
    """Splits by patient (their digests written to ``splits.json``) and the synthetic
    'unsupported' count."""
    if isinstance(records, Mapping):
        splits = {name: list(records.get(name, [])) for name in ("train", "val", "test")}
    else:
        splits = split_by_patient(
            records, config.val_fraction, config.test_fraction, seed=config.seed
        )
    synthetic_unsupported = 0
    if not any(r.region == UNSUPPORTED for r in splits["train"]) and config.unsupported_phantoms:
        extra = write_unsupported_phantoms(
            work / "unsupported", config.unsupported_phantoms, config.image_size, config.seed
        )
        n_val = max(1, round(len(extra) * _UNSUPPORTED_VAL_SHARE))
        splits["val"] += [replace(r, split="val") for r in extra[:n_val]]
        splits["train"] += [replace(r, split="train") for r in extra[n_val:]]
        synthetic_unsupported = len(extra)
    train_records, val_records = splits["train"], splits["val"]
    if not train_records or not val_records:
        raise ValueError(
            f"training needs train and val images; got {len(train_records)} and {len(val_records)}"
        )
    missing = sorted(set(data_regions(val_records)) - set(data_regions(train_records)))
    if missing:
        raise ValueError(f"no training images for regions {missing} of the validation images")
    patients = {name: {r.patient_id for r in split} for name, split in splits.items()}
    PatientSplits.of(patients).write(work.parent)  # work is <bundle>/training
    return splits, synthetic_unsupported


def _cached(
    records: Sequence[ImageRecord],
    classes: tuple[str, ...],
    types: tuple[str, ...],
    transforms: Compose,
    config: TrainConfig,
) -> Any:
    return CacheDataset(
        record_dicts(records, classes, types),
        transforms,
        cache_rate=config.cache_rate,
        num_workers=config.num_workers or None,
        progress=False,
    )


@dataclass
class _TrainingData:
    """The train and validation images of one run, with their stage-1 class indices."""

    regions: tuple[str, ...]
    types: tuple[str, ...]  # the type head's classes; empty: no head (fewer than two types)
    train_records: list[ImageRecord]
    val_records: list[ImageRecord]
    train_set: CacheDataset
    val_set: CacheDataset
    train_regions: np.ndarray
    val_regions: np.ndarray

    @classmethod
    def load(cls, config: TrainConfig, splits: dict[str, list[ImageRecord]]) -> _TrainingData:
        train_records, val_records = splits["train"], splits["val"]
        regions = data_regions(train_records)
        classes = region_classes(regions)
        types = data_fracture_types(train_records)
        types = types if len(types) >= 2 else ()
        augmented, plain = (training_transforms(config, augment=a) for a in (True, False))
        return cls(
            regions,
            types,
            train_records,
            val_records,
            _cached(train_records, classes, types, augmented, config),
            _cached(val_records, classes, types, plain, config),
            np.asarray([classes.index(r.region) for r in train_records]),
            np.asarray([classes.index(r.region) for r in val_records]),
        )

    @property
    def supported_train(self) -> np.ndarray:
        """Indices of the training images of a supported region (stage 2's data)."""
        return np.nonzero(self.train_regions < len(self.regions))[0]

    def typed(self, records: Sequence[ImageRecord]) -> list[int]:
        """Indices of the records that name one of the type head's types."""
        return [i for i, r in enumerate(records) if r.fracture_type in self.types]

    @property
    def supported_val(self) -> np.ndarray:
        """Indices of the validation images of a supported region."""
        return np.nonzero(self.val_regions < len(self.regions))[0]

    def total_steps(self, config: TrainConfig) -> int:
        """Optimiser steps of the whole run (the progress bar's length)."""
        types = config.fracture_epochs * epoch_steps(config, len(self.typed(self.train_records)))
        if config.shared_backbone:
            return types + config.shared_epochs * epoch_steps(config, len(self.train_records))
        total = config.region_epochs * epoch_steps(config, len(self.train_records))
        total += config.fracture_epochs * epoch_steps(config, len(self.supported_train))
        total += types
        return total + config.finetune_epochs * sum(
            epoch_steps(config, int((self.train_regions == k).sum()))
            for k in range(len(self.regions))
        )


# ----------------------------------------------------------------------------- stages


def _network_specs(
    config: TrainConfig, regions: tuple[str, ...]
) -> tuple[NetworkSpec, NetworkSpec]:
    """Stage 1 (logits over the regions and 'unsupported', then in the shared form one
    fracture logit per region) and stage 2 (one fracture logit)."""
    stage_one = shared_outputs(len(regions)) if config.shared_backbone else len(regions) + 1
    return (
        NetworkSpec(architecture=config.architecture, out_channels=stage_one),
        NetworkSpec(architecture=config.architecture, out_channels=1),
    )


@dataclass
class _Networks:
    """The trained networks and each stage's summary (epochs, best validation loss)."""

    region: nn.Module  # of a shared network, its view of stage 1
    fracture: dict[str, nn.Module]  # of a shared network, its view of each region
    summary: dict[str, dict[str, Any]]
    type: nn.Module | None = None  # the type head, when the data names fracture types
    shared: SharedStages | None = None  # the shared-backbone form's one network

    def stages_on_cpu(self) -> tuple[nn.Module, dict[str, nn.Module] | None]:
        """The networks :func:`~models.runtime.bundle.save_bundle` takes for the stages."""
        if self.shared is not None:
            return self.shared.cpu(), None
        return self.region.cpu(), {region: net.cpu() for region, net in self.fracture.items()}


def _train_networks(config: TrainConfig, runner: StageRunner, data: _TrainingData) -> _Networks:
    """Stage 1, then the stage-2 network of all regions, then its fine-tuned copy per
    region; or, for a shared backbone, the one network of both stages."""
    if config.shared_backbone:
        return _train_shared(config, runner, data)
    region_spec, fracture_spec = _network_specs(config, data.regions)
    torch.manual_seed(config.seed)
    region_net = _new_network(region_spec, config)
    weights = class_weights(data.train_regions, region_spec.out_channels)
    region_loss = nn.CrossEntropyLoss(weight=weights)
    region_stage = Stage(
        "region",
        region_net,
        data.train_set,
        data.val_set,
        "region",
        region_loss,
        config.region_epochs,
        config.learning_rate,
    )
    summary = {"region": runner.fit(region_stage)}
    torch.manual_seed(config.seed + 1)
    shared = _new_network(fracture_spec, config)
    fracture_loss = _fracture_loss(data)
    stage = Stage(
        "fracture-shared",
        shared,
        Subset(data.train_set, data.supported_train.tolist()),
        Subset(data.val_set, data.supported_val.tolist()),
        "fracture",
        fracture_loss,
        config.fracture_epochs,
        config.learning_rate,
    )
    summary[stage.name] = runner.fit(stage)
    fracture_nets: dict[str, nn.Module] = {}
    for label, region in enumerate(data.regions):
        val_idx = np.nonzero(data.val_regions == label)[0].tolist()
        stage = Stage(
            f"fracture-{region}",
            copy.deepcopy(shared),
            Subset(data.train_set, np.nonzero(data.train_regions == label)[0].tolist()),
            Subset(data.val_set, val_idx if val_idx else data.supported_val.tolist()),
            "fracture",
            fracture_loss,
            config.finetune_epochs,
            config.finetune_learning_rate,
        )
        summary[stage.name] = runner.fit(stage)
        fracture_nets[region] = stage.network
    type_net = _train_type_head(config, runner, data, summary)
    return _Networks(region_net, fracture_nets, summary, type_net)


def _train_shared(config: TrainConfig, runner: StageRunner, data: _TrainingData) -> _Networks:
    """One network on both stages' targets: every training image teaches stage 1, the
    supported ones also their region's fracture logit."""
    spec, _ = _network_specs(config, data.regions)
    torch.manual_seed(config.seed)
    classes = len(data.regions) + 1
    shared = SharedStages(_new_network(spec, config), data.regions)
    loss = SharedStagesLoss(
        class_weights(data.train_regions, classes), _fracture_loss(data).pos_weight
    )
    stage = Stage(
        "shared",
        shared,
        data.train_set,
        data.val_set,
        "both",
        loss,
        config.shared_epochs,
        config.learning_rate,
    )
    summary = {stage.name: runner.fit(stage)}
    fracture = {region: shared.fracture_view(region) for region in data.regions}
    type_net = _train_type_head(config, runner, data, summary)
    return _Networks(shared.region_view(), fracture, summary, type_net, shared)


def _type_spec(config: TrainConfig, types: tuple[str, ...]) -> NetworkSpec | None:
    """The type head's network: logits over the types (None without two types)."""
    if not types:
        return None
    return NetworkSpec(architecture=config.architecture, out_channels=len(types))


def _train_type_head(
    config: TrainConfig,
    runner: StageRunner,
    data: _TrainingData,
    summary: dict[str, dict[str, Any]],
) -> nn.Module | None:
    """The type head on the positive images that name a type (one network, all regions).

    Validated on the validation images with a type, or on its training images when
    the validation split names none (a small data set; the card's figures say which).
    """
    spec = _type_spec(config, data.types)
    if spec is None:
        return None
    train_idx = data.typed(data.train_records)
    val_idx = data.typed(data.val_records)
    labels = np.asarray([data.types.index(data.train_records[i].fracture_type) for i in train_idx])
    torch.manual_seed(config.seed + 2)
    stage = Stage(
        "fracture-type",
        _new_network(spec, config),
        Subset(data.train_set, train_idx),
        Subset(data.val_set, val_idx) if val_idx else Subset(data.train_set, train_idx),
        "type",
        nn.CrossEntropyLoss(weight=class_weights(labels, len(data.types))),
        config.fracture_epochs,
        config.learning_rate,
    )
    summary[stage.name] = runner.fit(stage)
    return stage.network


def _new_network(spec: NetworkSpec, config: TrainConfig) -> nn.Module:
    """A network of ``spec``, started from ``config.init_weights`` when given."""
    network = build_network(spec)
    if config.init_weights is not None:
        loaded = load_initial_weights(network, config.init_weights)
        logger.info(
            "%s network from %s: %d tensors copied, %d adapted to one channel, %d unused",
            spec.architecture,
            config.init_weights.name,
            loaded.copied,
            len(loaded.adapted),
            len(loaded.unused),
        )
    return network


def _fracture_loss(data: _TrainingData) -> nn.BCEWithLogitsLoss:
    """BCE on the fracture logit, positives weighted by the negatives-to-positives ratio."""
    labels = np.asarray([data.train_records[i].label for i in data.supported_train])
    positives = max(int(labels.sum()), 1)
    pos_weight = torch.tensor([(len(labels) - positives) / positives], dtype=torch.float32)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class _Calibration:
    """Temperatures per network, stage-1 accuracy, the pixel gate and the operating points,
    all fitted on validation (the gate's statistics on training images)."""

    temperatures: dict[str, float]
    region_accuracy: float
    pixel_gate: FittedPixelGate
    operating_points: RegionOperatingPoints


def _calibrate(
    config: TrainConfig, runner: StageRunner, networks: _Networks, data: _TrainingData
) -> _Calibration:
    """Temperature scaling per network, the pixel gate, then the operating points."""
    stage_one = networks.region
    train = StageOneOutputs(*runner.predict_with_features(stage_one, data.train_set, "region"))
    val = StageOneOutputs(*runner.predict_with_features(stage_one, data.val_set, "region"))
    temperatures = {"region": round(fit_temperature(val.logits, val.targets), 4)}
    region_accuracy = float((val.logits.argmax(1) == val.targets).float().mean())
    pixel_gate = fit_pixel_gate(
        train,
        val,
        temperatures["region"],
        config.in_distribution_acceptance,
        config.region_min_probability,
    )
    calibrated: dict[str, tuple[list[ImageRecord], np.ndarray]] = {}
    for label, region in enumerate(data.regions):
        idx = np.nonzero(data.val_regions == label)[0].tolist()
        if not idx:
            temperatures[region] = 1.0
            calibrated[region] = ([], np.empty(0))
            continue
        network = networks.fracture[region]
        logits, targets = runner.predict(network, Subset(data.val_set, idx), "fracture")
        temperatures[region] = round(fit_temperature(logits, targets), 4)
        probabilities = fracture_probability(logits / temperatures[region]).numpy()
        if config.test_time_augmentation != "none":  # the points see what the node computes
            probabilities = _augmented(network, data, idx, temperatures[region], config, runner)
        calibrated[region] = ([data.val_records[i] for i in idx], probabilities)
    points = region_operating_points(
        calibrated, config.study_aggregation, config.sensitivity_target, config.specificity_target
    )
    if networks.type is not None and (typed := data.typed(data.val_records)):
        logits, targets = runner.predict(networks.type, Subset(data.val_set, typed), "type")
        temperatures["type"] = round(fit_temperature(logits, targets), 4)
    return _Calibration(temperatures, region_accuracy, pixel_gate, points)


def _augmented(
    network: nn.Module,
    data: _TrainingData,
    indices: list[int],
    temperature: float,
    config: TrainConfig,
    runner: StageRunner,
) -> np.ndarray:
    """Calibrated validation probabilities with the bundle's test-time augmentation."""
    network.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(indices), config.batch_size):
            images = torch.stack(
                [data.val_set[i]["image"] for i in indices[start : start + config.batch_size]]
            ).to(runner.device)
            chunks.append(
                calibrated_fracture_probability(
                    network, images, temperature, config.test_time_augmentation
                ).cpu()
            )
    return torch.cat(chunks).numpy()


# ----------------------------------------------------------------------------- the bundle


def _metrics(
    splits: dict[str, list[ImageRecord]],
    calibration: _Calibration,
    summary: dict[str, dict[str, Any]],
    elapsed: float,
    runner: StageRunner,
) -> dict[str, Any]:
    """The training figures of the model card (validation split, time, device, data sizes)."""
    return {
        "split": "validation split (by patient); thresholds and temperatures fitted on it",
        "val_region_accuracy": round(calibration.region_accuracy, 4),
        "val_pixel_gate": calibration.pixel_gate.validation,
        "val_fracture_auroc_study": calibration.operating_points.validation_auroc,
        "thresholds_pooled_for": calibration.operating_points.pooled_for,
        "training_seconds": round(elapsed, 1),
        "device": str(runner.device),
        "mixed_precision": runner.amp,
        "stages": summary,
        "images": {name: len(split) for name, split in splits.items()},
        "patients": {name: len({r.patient_id for r in s}) for name, s in splits.items()},
    }


def _training_data_text(
    config: TrainConfig, splits: dict[str, list[ImageRecord]], synthetic_unsupported: int
) -> str:
    """The model card's description of the data: the configured text plus the counts."""
    counts = {name: region_counts(split) for name, split in splits.items()}
    text = config.training_data or "Labelled radiographs"
    text += f". Images per split/region/label: {json.dumps(counts)}."
    if config.init_weights is not None:
        text += f" Networks started from the weights in {config.init_weights.name}."
    if synthetic_unsupported:
        text += (
            f" The data has no 'unsupported' images, so {synthetic_unsupported} synthetic "
            "non-extremity phantoms (chest-like, noise, gradients, blank) were added for stage 1."
        )
    return text


def _bundle_metadata(
    config: TrainConfig,
    data: _TrainingData,
    training_data: str,
    calibration: _Calibration,
    metrics: dict[str, Any],
    code_fingerprint: str,
) -> BundleMetadata:
    regions = data.regions
    region_spec, fracture_spec = _network_specs(config, regions)
    return BundleMetadata(
        name=config.name,
        version=config.version,
        description=(
            f"Two-stage fracture triage ({config.architecture}, {config.image_size}px): region, "
            "then per-region fracture"
            + (" (one shared network)" if config.shared_backbone else "")
            + ", calibrated by temperature scaling, with Grad-CAM."
        ),
        intended_use=IntendedUse(
            statement=config.intended_use,
            regions=regions,
            min_age_years=config.min_age_years,
            max_age_years=config.max_age_years,
        ),
        training_data=training_data,
        trained_on_synthetic_data=config.trained_on_synthetic_data,
        label_meaning=config.label_meaning,
        image_size=config.image_size,
        region_network=region_spec,
        fracture_network=fracture_spec,
        shared_backbone=config.shared_backbone,
        regions=regions,
        fracture_types=data.types,
        type_network=_type_spec(config, data.types),
        region_min_probability=calibration.pixel_gate.region_min_probability,
        pixel_gate=calibration.pixel_gate.gate,
        thresholds=calibration.operating_points.thresholds,
        study_aggregation=config.study_aggregation,
        test_time_augmentation=config.test_time_augmentation,
        temperatures=calibration.temperatures,
        metrics=metrics,
        training_code_fingerprint=code_fingerprint,
    )
