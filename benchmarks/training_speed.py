"""Training speed of a preset, and the hours it projects for MURA v1.1.

Trains a preset (default ``mura``: DenseNet121 at 320 px, batch 16, mixed precision on
CUDA) for one epoch of each stage on a phantom data set in MURA's own layout, on the
device ``train`` would use, and reports the images per second of that run. From it, the
hours a full run on MURA v1.1 would take: its 36,808 training images through the preset's
epochs (stage 1 and the shared fracture network see every image; the per-region
fine-tuning sees each image once per epoch, with its region's network).

Two rates bound the projection: the whole short run (caching, validation, calibration and
the bundle included, which a short run pays out of proportion: the slow end) and the bare
training step of the preset's network on batches already on the device (forward,
backward and optimiser step under the same precision: the fast end). Reading MURA's PNGs
from disk is in neither.

    python -m benchmarks.training_speed [--preset mura] [--patients 40] [--size 512]
        [--num-workers 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import write_report
from models.runtime.networks import NetworkSpec, build_network, resolve_device
from models.training.config import TrainConfig, preset_config
from models.training.datasets import load_mura, split_by_patient, write_phantom_mura
from models.training.train import train

#: MURA v1.1's training images (its train split; valid has 3,197).
MURA_TRAIN_IMAGES = 36_808


def projected_hours(seconds_per_image_epoch: float, epochs: int) -> float:
    """Hours for MURA's training images through ``epochs`` image-epochs at the measured rate."""
    return seconds_per_image_epoch * MURA_TRAIN_IMAGES * epochs / 3600


def bare_step_rate(config: TrainConfig, steps: int = 30) -> float:
    """Images/s of the preset's network training on random batches already on the device."""
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    network = build_network(NetworkSpec(architecture=config.architecture, out_channels=1))
    network.to(device).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    size = config.image_size
    images = torch.rand(config.batch_size, 1, size, size, device=device)
    labels = torch.randint(0, 2, (config.batch_size, 1), device=device).float()
    loss_function = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_function(network(images).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * config.batch_size / (time.perf_counter() - started)


def measure(
    preset: str, patients: int, size: int, num_workers: int, work: Path, image_size: int | None
) -> dict:
    folder = write_phantom_mura(work / "mura", (patients, max(1, patients // 3)), size=size)
    records = load_mura(folder.parent)
    splits = split_by_patient(records, 0.1, 0.0, seed=0)
    sized = {"image_size": image_size} if image_size else {}
    full = preset_config(preset, **sized)
    epochs = full.region_epochs + full.fracture_epochs + full.finetune_epochs
    config = preset_config(
        preset,
        region_epochs=1,
        fracture_epochs=1,
        finetune_epochs=1,
        unsupported_phantoms=max(8, len(splits["train"]) // 8),
        num_workers=num_workers,
        training_data="phantoms in MURA's layout (benchmarks.training_speed)",
        **sized,
    )
    started = time.perf_counter()
    bundle = train(config, splits, work / "bundle", progress=False)
    seconds = time.perf_counter() - started
    images = len(splits["train"]) + config.unsupported_phantoms
    per_image_epoch = seconds / (3 * images)  # three stages of one epoch each
    step_rate = bare_step_rate(full)
    return {
        "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
        "preset": preset,
        "architecture": config.architecture,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "mixed_precision": torch.cuda.is_available() and config.amp,
        "source_image_size": size,
        "train_images": images,
        "seconds_one_epoch_per_stage": round(seconds, 1),
        "images_per_second": round(1 / per_image_epoch, 1),
        "preset_image_epochs": epochs,
        "projected_hours_mura_whole_run_rate": round(projected_hours(per_image_epoch, epochs), 2),
        "bare_step_images_per_second": round(step_rate, 1),
        "projected_hours_mura_bare_step_rate": round(projected_hours(1 / step_rate, epochs), 2),
        "bundle_written": bundle.is_dir(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mura")
    parser.add_argument("--patients", type=int, default=40, help="train patients per region")
    parser.add_argument("--size", type=int, default=512, help="phantom size (MURA's ~512)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--image-size", type=int, help="model input (default: the preset's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="training-speed-") as work:
        result = measure(
            args.preset, args.patients, args.size, args.num_workers, Path(work), args.image_size
        )
    for key, value in result.items():
        print(f"{key}: {value}")
    write_report(args.json, **result)


if __name__ == "__main__":
    main()
