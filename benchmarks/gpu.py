"""Throughput of the hierarchical model with Grad-CAM against the bare network, by batch size.

For a GPU box (issue goal: at least 0.5x the bare network's images/s at batch 64);
runs on the CPU too (smaller batches), so the command is checked where no GPU is.
The model is a production-sized, untrained bundle (DenseNet121 at 320 px by default,
MURA's baseline: the timing does not depend on the weights) built from the demo
bundle's metadata, on the device the node would use (``model_device = "auto"``).

* pipeline: what ``HierarchicalModel.predict`` does on a batch: stage 1 (region), stage 2
  (each region's fracture network on its images), Grad-CAM of the fracture output, boxes,
  results back on the host; every image is given its phantom's region, since the
  untrained region network is confident of none (predict would skip stage 2);
* reference: the bare networks on the same batch: the region network's forward, one
  fracture network's forward and Grad-CAM of it; with ``--shared-backbone`` (the bundle's
  one-network form) the shared network's forward and Grad-CAM of it.

    python -m benchmarks.gpu --bundle var/bundles/demo [--batch-sizes 1,16,64]
        [--architecture densenet121 --image-size 320] [--shared-backbone] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_report
from benchmarks.inference import realistic_bundle
from config import REGIONS
from models.runtime.bundle import load_bundle
from models.runtime.gradcam import CamExplainer
from models.runtime.inference import HierarchicalModel
from models.runtime.networks import SharedStages, gradcam_target_layer, resolve_device
from models.runtime.preprocessing import preprocess
from models.training.phantoms import render_phantom

#: The issue's goal: the pipeline keeps at least this share of the bare throughput.
GOAL_RATIO = 0.5


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    function: Callable[[], object], batch: int, device: torch.device, seconds: float
) -> float:
    """Batches run back to back for about ``seconds`` (after two warm-up batches)."""
    for _ in range(2):
        function()
    _synchronise(device)
    done, start = 0, time.perf_counter()
    while True:
        function()
        _synchronise(device)
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= 3:
            return done * batch / elapsed


def phantom_batch(size: int, batch: int) -> np.ndarray:
    """Preprocessed phantoms of every region (a realistic mix for the hierarchy)."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(batch):
        phantom = render_phantom(REGIONS[index % len(REGIONS)], index % 2 == 0, rng, size=256)
        images.append(preprocess(phantom.image, size)[0])
    return np.stack(images).astype(np.float32)


def forced_regions(calls: list) -> list[str]:
    """Stage 1's region per image, or the phantom's own (the mix of :func:`phantom_batch`)."""
    return [call.region or REGIONS[k % len(REGIONS)] for k, call in enumerate(calls)]


def bare_networks(model: HierarchicalModel) -> Callable[[torch.Tensor], None]:
    """The reference: the networks' forward passes and one Grad-CAM, nothing around them."""
    layer = gradcam_target_layer(model.metadata.fracture_network)
    shared = model.shared
    if shared is not None:  # one network: its forward, and Grad-CAM of one fracture logit
        explain_shared = CamExplainer(shared, SharedStages.layer_name(layer))
        column = shared.fracture_column(model.metadata.regions[0])

        def one_network(tensor: torch.Tensor) -> None:
            with torch.no_grad():
                shared(tensor).cpu()
            explain_shared(tensor, column)

        return one_network
    region_net = model.region_network
    fracture_net = model.fracture_networks[model.metadata.regions[0]]
    explainer = CamExplainer(fracture_net, layer)

    def two_networks(tensor: torch.Tensor) -> None:
        with torch.no_grad():
            region_net(tensor).cpu()
            fracture_net(tensor).cpu()
        explainer(tensor, 0)

    return two_networks


def measure(bundle: Path, batch_sizes: list[int], seconds: float) -> dict:
    device = resolve_device("auto")
    model = load_bundle(bundle, device=device)
    size = model.image_size
    networks = bare_networks(model)
    rows = []
    for batch_size in batch_sizes:
        host = phantom_batch(size, batch_size)
        tensor = torch.as_tensor(host).to(device)

        def bare(tensor: torch.Tensor = tensor) -> None:
            networks(tensor)

        def pipeline(host: np.ndarray = host) -> None:
            # predict()'s steps, with every image given a region: the untrained region
            # network is confident of none, and predict() would then skip stage 2.
            calls = model.classify_regions(host)
            model.classify_and_explain(host, forced_regions(calls))

        bare_rate = images_per_second(bare, batch_size, device, seconds)
        pipeline_rate = images_per_second(pipeline, batch_size, device, seconds)
        rows.append(
            {
                "batch": batch_size,
                "pipeline_images_per_s": round(pipeline_rate, 1),
                "bare_images_per_s": round(bare_rate, 1),
                "ratio_pipeline_to_bare": round(pipeline_rate / bare_rate, 2),
            }
        )
    return {
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"),
        "network": f"{model.metadata.region_network.architecture} at {size}px",
        "shared_backbone": model.shared is not None,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("var/bundles/demo"))
    parser.add_argument("--batch-sizes", default="1,16,64", help="comma-separated")
    parser.add_argument("--architecture", default="densenet121")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    parser.add_argument(
        "--shared-backbone", action="store_true", help="the bundle's one-network form"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as temp:
        bundle = realistic_bundle(
            args.bundle,
            args.architecture,
            args.image_size,
            Path(temp) / "bundle",
            args.shared_backbone,
        )
        result = measure(bundle, batch_sizes, args.seconds)
    largest = max(result["rows"], key=lambda row: row["batch"])
    result["goal"] = f">= {GOAL_RATIO}x the bare network at batch {largest['batch']}"
    result["goal_met"] = largest["ratio_pipeline_to_bare"] >= GOAL_RATIO
    table = Table(title=f"Throughput on {result['device_name']} ({result['network']})")
    for column in ("batch", "pipeline img/s", "bare img/s", "pipeline / bare"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    Console().print(f"goal {result['goal']}: {'met' if result['goal_met'] else 'not met'}")
    write_report(args.json, **result)


if __name__ == "__main__":
    main()
