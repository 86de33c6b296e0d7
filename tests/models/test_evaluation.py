"""Operating points, calibration, metrics; train() then evaluate_bundle() end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from config import REGIONS
from models.runtime.bundle import load_bundle, update_metadata
from models.training.calibration import fit_temperature
from models.training.config import PRESETS, TrainConfig, preset_config
from models.training.datasets import split_by_patient, write_phantom_csv, write_phantom_mura
from models.training.evaluation import CardRefusedError, evaluate_bundle
from models.training.fingerprint import training_code_fingerprint
from models.training.layouts import load_records
from models.training.metrics import (
    auroc,
    bootstrap_auroc_ci,
    cohen_kappa,
    expected_calibration_error,
)
from models.training.operating_points import pick_operating_points
from models.training.splits import SPLITS_FILE, PatientSplits
from models.training.train import train
from tests.models.conftest import tiny_train_config


def test_thresholds_on_a_known_score_set_give_the_expected_sensitivity() -> None:
    rng = np.random.default_rng(0)
    positives = rng.uniform(0.3, 1.0, 200)
    negatives = rng.uniform(0.0, 0.7, 300)
    labels = np.r_[np.ones(200), np.zeros(300)]
    scores = np.r_[positives, negatives]
    for target in (0.8, 0.9, 0.95):
        suspected, likely = pick_operating_points(labels, scores, target, target)
        sensitivity = float((positives >= suspected).mean())
        specificity = float((negatives < likely).mean())
        # The highest threshold that reaches the target: exactly ceil(target * n) positives.
        assert sensitivity == pytest.approx(np.ceil(target * 200) / 200)
        assert specificity == pytest.approx(np.ceil(target * 300) / 300)
        assert suspected <= likely


def test_thresholds_sit_in_the_gap_not_on_a_saturated_score() -> None:
    # A confident model on separable data: every positive at exactly 1.0.
    labels = np.r_[np.ones(20), np.zeros(30)]
    scores = np.r_[np.ones(20), np.linspace(0.0, 0.3, 30)]
    suspected, likely = pick_operating_points(labels, scores, 0.95, 0.95)
    assert suspected == pytest.approx(0.65)  # halfway between 0.3 and 1.0
    assert likely == pytest.approx(0.65)
    # The same decisions on these samples: every positive flagged, every negative not.
    assert (scores[labels == 1] >= suspected).all() and (scores[labels == 0] < likely).all()
    # And a fracture at 0.99 is no longer missed.
    assert suspected <= 0.99


def test_temperature_scaling_lowers_ece_on_overconfident_scores() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0.0, 1.5, 4000)
    labels = (rng.uniform(size=4000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    overconfident = 3.0 * true_logits
    before = expected_calibration_error(labels, 1 / (1 + np.exp(-overconfident)))
    temperature = fit_temperature(torch.as_tensor(overconfident)[:, None], labels)
    after = expected_calibration_error(labels, 1 / (1 + np.exp(-overconfident / temperature)))
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert after < before / 2 and after < 0.03, (before, after)
    # Multi-class logits (stage 1) too.
    logits = torch.randn(500, 8) * 4
    targets = torch.distributions.Categorical(logits=logits / 4).sample()
    assert fit_temperature(logits, targets) == pytest.approx(4.0, rel=0.25)


def test_metric_helpers() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert auroc(labels, scores) == pytest.approx(8 / 9)
    low, high = bootstrap_auroc_ci(np.tile(labels, 10), np.tile(scores, 10))
    assert low <= 8 / 9 <= high
    assert cohen_kappa(np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0])) == 1.0
    assert cohen_kappa(np.array([1, 0, 1, 0]), np.array([0, 1, 0, 1])) == -1.0
    with pytest.raises(ValueError, match="2 positives, 0 negatives"):
        auroc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_presets_start_a_config_and_overrides_win() -> None:
    assert TrainConfig() == preset_config("mura")
    phantom = preset_config("phantom", seed=3, image_size=96)
    assert phantom.lr_schedule == "onecycle" and phantom.architecture == "densenet-small"
    assert phantom.trained_on_synthetic_data and "NOT for clinical use" in phantom.intended_use
    assert phantom.seed == 3 and phantom.image_size == 96
    assert set(PRESETS) == {"mura", "phantom"}
    with pytest.raises(ValueError, match="'cifar'"):
        preset_config("cifar")
    with pytest.raises(ValueError, match="lr_schedule"):
        preset_config("phantom", lr_schedule="cosine")


@pytest.mark.slow
def test_train_then_evaluate_writes_a_loadable_bundle_with_a_model_card(tmp_path: Path) -> None:
    mura = write_phantom_mura(tmp_path / "data", (6, 3), size=48, seed=2)
    records = load_records(mura, "mura")
    config = TrainConfig(
        architecture="densenet-small",
        image_size=48,
        batch_size=32,
        region_epochs=2,
        fracture_epochs=2,
        finetune_epochs=1,
        max_steps_per_epoch=3,
        learning_rate=3e-3,
        lr_schedule="onecycle",  # its state must survive a weights-only checkpoint
        unsupported_phantoms=40,
        trained_on_synthetic_data=True,
        val_fraction=0.25,
    )
    bundle = train(config, records, tmp_path / "bundle", progress=False)
    model = load_bundle(bundle)
    metadata = model.metadata
    assert set(metadata.temperatures) == {"region", *REGIONS}
    # The bundle says which code trained it.
    assert metadata.training_code_fingerprint == training_code_fingerprint()
    card = (bundle / "docs" / "README.md").read_text()
    assert f"Training code fingerprint: {training_code_fingerprint()}." in card
    assert all(t > 0 for t in metadata.temperatures.values())
    for region in REGIONS:
        suspected, likely = model.thresholds_for(region)
        assert 0.0 <= suspected <= likely <= 1.0
    checkpoints = bundle / "training" / "checkpoints"
    assert (checkpoints / "region.pt").is_file() and (checkpoints / "fracture-wrist.pt").is_file()
    recorded = PatientSplits.read(bundle)
    assert recorded is not None
    assert not recorded.members["train"] & recorded.members["val"]
    assert not recorded.members["train"] & recorded.members["test"]
    # The bundle knows its patients without naming them: no patient ID is in the file.
    written = (bundle / SPLITS_FILE).read_text()
    assert not any(f'"{record.patient_id}"' in written for record in records)

    # Resume: every stage is complete, so nothing is trained again and the weights match.
    before = model.region_network.state_dict()
    train(config.model_copy(update={"resume": True}), records, tmp_path / "bundle", False)
    after = load_bundle(bundle).region_network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    splits = split_by_patient(records, config.val_fraction, config.test_fraction)
    card_before = (bundle / "docs" / "README.md").read_text()
    # Figures on patients the bundle was trained or validated on never reach its card.
    for seen in (splits["train"], splits["val"] + splits["test"]):
        with pytest.raises(CardRefusedError, match="training or validation split"):
            evaluate_bundle(bundle, seen, tmp_path / "r", write_into_bundle=True, progress=False)
    # Evaluating is not writing: without being asked the card stays as it was.
    evaluate_bundle(bundle, splits["test"], tmp_path / "r", progress=False)
    assert (bundle / "docs" / "README.md").read_text() == card_before
    assert "evaluation" not in load_bundle(bundle).metadata.metrics

    test = splits["test"]
    evaluation = evaluate_bundle(
        bundle, test, tmp_path / "report", write_into_bundle=True, progress=False
    )
    for name in ("report.md", "metrics.json", "roc.png", "reliability.png"):
        assert (tmp_path / "report" / name).is_file(), name
    with Image.open(tmp_path / "report" / "roc.png") as image:
        assert image.size[0] >= 300
    assert evaluation.metrics["overall"]["studies"] > 0
    assert "AUROC" in evaluation.report.read_text()
    # The metrics and figures are in the bundle, and the node still loads it.
    evaluated = load_bundle(bundle)
    assert evaluated.metadata.metrics["evaluation"]["images"] == len(test)
    assert evaluated.metadata.metrics["figures"]["roc"] == "docs/roc.png"
    assert (bundle / "docs" / "roc.png").is_file()
    card = (bundle / "docs" / "README.md").read_text()
    assert "## Evaluation" in card and "![roc](roc.png)" in card


def test_same_seed_same_weights_and_resume_continues_mid_stage(tmp_path: Path) -> None:
    """A fixed seed reproduces a run; an interrupted stage resumes after its last epoch."""
    records = load_records(write_phantom_mura(tmp_path / "data", (3, 2), size=40, seed=4), "mura")
    config = tiny_train_config(
        region_epochs=2, max_steps_per_epoch=2, learning_rate=1e-3, lr_schedule="plateau"
    )

    def region_weights(bundle: Path) -> dict[str, torch.Tensor]:
        return load_bundle(bundle).region_network.state_dict()

    first = region_weights(train(config, records, tmp_path / "a", progress=False))
    again = region_weights(train(config, records, tmp_path / "b", progress=False))
    assert all(torch.equal(first[k], again[k]) for k in first)

    # Interrupted after epoch 1 of 2 (a run with 1 epoch leaves that checkpoint), resumed.
    interrupted = config.model_copy(update={"region_epochs": 1})
    train(interrupted, records, tmp_path / "c", progress=False)
    checkpoint = tmp_path / "c" / "training" / "checkpoints" / "region.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    train(config.model_copy(update={"resume": True}), records, tmp_path / "c", progress=False)
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 2
    # The optimiser went on from where it stopped: two epochs of two steps each.
    steps = {int(s["step"]) for s in state["optimiser"]["state"].values()}
    assert steps == {4}


@pytest.mark.slow
def test_demo_bundle_evaluation_meets_the_bars(demo_bundle_dir: Path, tmp_path: Path) -> None:
    """Held-out phantoms with known breaks (CSV layout): region, AUROC, Grad-CAM boxes."""
    labels = write_phantom_csv(tmp_path / "data", per_class=16, size=256, seed=77)
    records = load_records(labels, "csv")
    evaluation = evaluate_bundle(
        demo_bundle_dir, records, tmp_path / "report", write_into_bundle=False, progress=False
    )
    metrics = evaluation.metrics
    assert metrics["region_accuracy"] >= 0.9, metrics["region_accuracy"]
    assert metrics["overall"]["auroc"] >= 0.9, metrics["overall"]
    assert metrics["gradcam_detected_positives_with_box"] >= 20
    assert metrics["gradcam_box_hit_rate"] >= 0.8, metrics["gradcam_box_hit_rate"]
    assert metrics["gradcampp_box_hit_rate"] >= 0.8, metrics["gradcampp_box_hit_rate"]
    # Far above what a box of the same size hits without looking.
    assert metrics["gradcam_box_hit_rate"] > metrics["centre_box_hit_rate"] + 0.3
    assert metrics["gradcam_box_hit_rate"] > metrics["random_box_hit_rate"] + 0.3
    assert 0.0 < metrics["gradcam_box_iou_mean"] <= 1.0
    # End to end (stage 1's region, as the node): no better than with the true region.
    end_to_end, stage2 = metrics["end_to_end"], metrics["overall"]
    assert end_to_end["studies"] == stage2["studies"]
    assert end_to_end["sensitivity_suspected"] <= stage2["sensitivity_suspected"]
    report = evaluation.report.read_text()
    assert "Grad-CAM++" in report and "## End to end (what the node would say)" in report


@pytest.mark.slow
def test_occlusion_sensitivity_is_a_second_opinion_on_the_break(
    demo_bundle_dir: Path, tmp_path: Path
) -> None:
    labels = write_phantom_csv(tmp_path / "data", per_class=6, size=256, seed=78)
    evaluation = evaluate_bundle(
        demo_bundle_dir,
        load_records(labels, "csv"),
        tmp_path / "report",
        occlusion=True,
        write_into_bundle=False,
        progress=False,
    )
    metrics = evaluation.metrics
    assert metrics["gradcam_detected_positives_with_box"] >= 10
    # Occluding the break is what lowers the fracture output most.
    assert metrics["occlusion_box_hit_rate"] >= 0.8, metrics["occlusion_box_hit_rate"]
    report = evaluation.report.read_text()
    assert f"occlusion sensitivity (second opinion): {metrics['occlusion_box_hit_rate']}" in report


def test_the_card_states_what_the_labels_meant(test_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(test_bundle, bundle)
    update_metadata(bundle, label_meaning="fracture")  # the card is made anew from metadata
    assert (
        "Labels: fracture: a positive training label meant a fracture."
        in (bundle / "docs" / "README.md").read_text()
    )
    update_metadata(bundle, label_meaning="abnormality")
    card = (bundle / "docs" / "README.md").read_text()
    assert "Labels: abnormality:" in card and "not a fracture" in card
