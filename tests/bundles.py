"""An untrained test bundle, built in well under a second, whose results the tests choose.

Flow, DICOM and node tests need a bundle that loads and runs like a real one, not a
good model: this one is tiny (a three-block DenseNet at 64 px) and says so everywhere
(its name, description, model card and metadata: untrained, synthetic, tests only).
Its stage 1 is rigged (a zero final layer whose bias picks one region) and its
intended use lets the header's region win a disagreement, so the region a view is
assessed as comes from its header (Body Part Examined); its per-region operating
points decide the level whatever the untrained stage 2 says: wrist views are
"fracture likely", elbow views "fracture suspected", every other region "no fracture
suspected". Model quality is tested with the demo bundle, trained on phantoms.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from config.domain.findings import OperatingPoints
from config.domain.intended_use import IntendedUse
from config.domain.vocabulary import REGIONS, region_classes
from models.runtime.bundle import save_bundle
from models.runtime.detection import DetectorSpec, build_detector
from models.runtime.metadata import BundleMetadata
from models.runtime.networks import NetworkSpec, SharedStages, build_network, shared_outputs

TEST_BUNDLE_NAME = "untrained-test-bundle"
IMAGE_SIZE = 64
_TINY = {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1), "bn_size": 2}

#: The level each region's views get, whatever the untrained network says.
ALWAYS_LIKELY = OperatingPoints(suspected=0.0, likely=0.0)
ALWAYS_SUSPECTED = OperatingPoints(suspected=0.0, likely=1.0)
NEVER = OperatingPoints(suspected=1.0, likely=1.0)
DEFAULT_POINTS = {region: NEVER for region in REGIONS} | {
    "wrist": ALWAYS_LIKELY,
    "elbow": ALWAYS_SUSPECTED,
}


def _rigged(classes: int, pick: int) -> tuple[NetworkSpec, nn.Module]:
    """A tiny network whose zero final layer and biased output always pick ``pick``."""
    spec = NetworkSpec(architecture="densenet-small", out_channels=classes, kwargs=_TINY)
    network = build_network(spec)
    final = network.class_layers.out
    with torch.no_grad():
        final.weight.zero_()
        final.bias.fill_(-8.0)
        final.bias[pick] = 8.0
    return spec, network


def build_test_bundle(
    path: Path,
    *,
    points: dict[str, OperatingPoints] | None = None,
    stage1_region: str = "wrist",
    version: str = "0.1.0",
    seed: int = 0,
    regions: tuple[str, ...] = REGIONS,
    fracture_types: tuple[str, ...] = (),
    detector: DetectorSpec | None = None,
    shared_backbone: bool = False,
) -> Path:
    """Write the untrained test bundle to ``path`` (see the module's description);
    ``regions`` are its stage-1 regions (MURA's seven unless given). With
    ``fracture_types`` it has a type head rigged (like stage 1) to call the first type;
    with ``detector`` an untrained detector of that spec (a report score of 0 makes it
    box every flagged view). With ``shared_backbone`` stage 1 and stage 2 are one network
    (stage 1 rigged the same way, the fracture logits random)."""
    torch.manual_seed(seed)
    classes = region_classes(regions)
    outputs = shared_outputs(len(regions)) if shared_backbone else len(classes)
    region_spec, region_network = _rigged(outputs, classes.index(stage1_region))
    if shared_backbone:  # the fracture logits random, as the two-network form's stage 2
        final = region_network.class_layers.out
        with torch.no_grad():
            final.bias[len(classes) :] = 0.0
            final.weight[len(classes) :] = 0.1 * torch.randn_like(final.weight[len(classes) :])
    fracture_spec = NetworkSpec(architecture="densenet-small", out_channels=1, kwargs=_TINY)
    type_spec, type_network = _rigged(len(fracture_types), 0) if fracture_types else (None, None)
    metadata = BundleMetadata(
        name=TEST_BUNDLE_NAME,
        version=version,
        description="UNTRAINED test bundle: rigged stage 1, random stage 2. Tests only.",
        intended_use=IntendedUse(
            statement="Tests of the node's pipeline only; untrained, not a model.",
            regions=regions,
            header_conflict="header",
        ),
        training_data="None: untrained (random weights, a rigged final layer), for tests.",
        trained_on_synthetic_data=True,
        image_size=IMAGE_SIZE,
        region_network=region_spec,
        fracture_network=fracture_spec,
        shared_backbone=shared_backbone,
        regions=regions,
        fracture_types=fracture_types,
        type_network=type_spec,
        detector=detector,
        region_min_probability=0.5,
        thresholds=points or DEFAULT_POINTS,
    )
    fracture_networks = {region: build_network(fracture_spec) for region in regions}
    if shared_backbone:
        region_network = SharedStages(region_network, regions)
    detector_network = build_detector(detector).network if detector is not None else None
    return save_bundle(
        path,
        metadata,
        region_network,
        None if shared_backbone else fracture_networks,
        type_network=type_network,
        detector=detector_network,
    )
