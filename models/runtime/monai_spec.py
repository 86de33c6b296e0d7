"""A bundle's files in the MONAI Bundle specification's own terms.

``configs/metadata.json`` holds the specification's keys (``version``, ``changelog``,
``monai_version``, ``pytorch_version``, ``numpy_version``, ``required_packages_version``,
``task``, ``description``, ``authors``, ``copyright``, ``network_data_format`` with the
inputs and outputs, ``intended_use``, ``references``, the data source and the label
meaning), so ``monai.bundle`` and tools that read MONAI bundles understand it. Our own
keys (regions, operating points, temperatures, the pixel gate, the structured intended
use, the figures) sit under one namespace, :data:`NAMESPACE`, as
:class:`~models.runtime.metadata.BundleMetadata`. Files written before the namespace
existed hold those keys at the top level and are still read.

``configs/inference.json`` (:data:`INFERENCE_CONFIG`) runs one image through the bundle
with ``python -m monai.bundle run --config_file configs/inference.json --image PATH``;
it calls this package (the two stages and the pixel gate are not expressible as one
MONAI network), so it runs where ``fracture-triage`` is installed.

Where the specification cannot say what we need, it is said under the namespace: two
networks per view (a region network, then that region's fracture network), per-region
operating points and temperatures, and the pixel gate's limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np

from models.runtime.metadata import BundleMetadata

#: The MONAI metadata schema the files claim (MONAI's bundle tools download it to verify).
SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
    "meta_schema_20240725.json"
)
#: Where our own keys live in ``configs/metadata.json``.
NAMESPACE = "fracture_triage"
INFERENCE_FILE = Path("configs/inference.json")

_REFERENCES = [
    "Rajpurkar P et al. MURA: Large Dataset for Abnormality Detection in Musculoskeletal "
    "Radiographs. arXiv:1712.06957, 2017.",
    "Selvaraju RR et al. Grad-CAM: Visual Explanations from Deep Networks via "
    "Gradient-based Localization. ICCV 2017.",
    "Guo C et al. On Calibration of Modern Neural Networks (temperature scaling). ICML 2017.",
]

#: ``configs/inference.json``: one image (``--image``, PNG/JPEG or DICOM) to a JSON file
#: (``--output``, default ``prediction.json`` in the bundle) with stage 1's calibrated
#: probabilities, the pixel gate's answer and the region's fracture probability.
INFERENCE_CONFIG: dict[str, Any] = {
    "imports": ["$from models.runtime.bundle_run import classify_file"],
    "bundle_root": ".",
    "image": "",
    "output": "$@bundle_root + '/prediction.json'",
    "device": "cpu",
    "run": ["$classify_file(@bundle_root, @image, @output, @device)"],
}


def _version(package: str) -> str:
    try:
        return package_metadata.version(package)
    except package_metadata.PackageNotFoundError:
        return "unknown"


def _probabilities(classes: Sequence[str]) -> dict[str, Any]:
    """One output of calibrated class probabilities, in the specification's terms."""
    return {
        "type": "probabilities",
        "format": "classes",
        "num_channels": len(classes),
        "spatial_shape": [1],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_onehot": False,
        "channel_def": {str(k): name for k, name in enumerate(classes)},
    }


def _network_data_format(metadata: BundleMetadata) -> dict[str, Any]:
    """The specification's description of the input and each stage's output."""
    size = metadata.image_size
    outputs = {
        "pred": _probabilities(metadata.region_classes),
        "fracture": _probabilities(
            [f"{metadata.label_meaning.value} (the region's network, calibrated)"]
        ),
    }
    if metadata.type_network is not None:
        outputs["type"] = _probabilities(metadata.fracture_types)
    image = {
        "type": "image",
        "format": "magnitude",
        "modality": "/".join(metadata.intended_use.modalities),
        "num_channels": 1,
        "spatial_shape": [size, size],
        "dtype": "float32",
        "value_range": [],  # standardised per image: zero mean, unit variance
        "is_patch_data": False,
        "channel_def": {"0": "display-rendered radiograph, fitted and standardised"},
    }
    return {"inputs": {"image": image}, "outputs": outputs}


def spec_metadata(metadata: BundleMetadata) -> dict[str, Any]:
    """``configs/metadata.json`` for ``metadata``: the specification's keys, ours under
    :data:`NAMESPACE`."""
    synthetic = " Trained on synthetic data; NOT for clinical use." * (
        metadata.trained_on_synthetic_data
    )
    return {
        "schema": SCHEMA_URL,
        "version": metadata.version,
        "changelog": {metadata.version: f"{metadata.name}, trained {metadata.created}"},
        "monai_version": metadata.monai_version,
        "pytorch_version": metadata.torch_version,
        "numpy_version": np.__version__,
        "required_packages_version": {"fracture-triage": _version("fracture-triage")},
        "name": metadata.name,
        "task": "Anatomical region of a radiograph (or none assessed), then that region's "
        f"{metadata.label_meaning.value} probability",
        "description": metadata.description + synthetic,
        "authors": "fracture-triage contributors",
        "copyright": "fracture-triage contributors, Apache-2.0",
        "data_source": metadata.training_data,
        "data_type": "png, jpeg or dicom",
        "intended_use": metadata.intended_use.statement + synthetic,
        "image_classes": "one channel, a display-rendered radiograph standardised per image",
        "label_classes": f"per image: a region of {list(metadata.regions)} or unsupported; "
        f"positive means {metadata.label_meaning.description}",
        "pred_classes": "stage 1: calibrated probabilities over the regions and unsupported; "
        "stage 2: the region's calibrated probability of a positive label",
        "references": _REFERENCES,
        "network_data_format": _network_data_format(metadata),
        NAMESPACE: metadata.model_dump(mode="json"),
    }


def our_keys(document: dict[str, Any]) -> dict[str, Any]:
    """The :class:`BundleMetadata` fields of a ``configs/metadata.json`` document (under
    the namespace, or at the top level in files written before it existed)."""
    inner = document.get(NAMESPACE)
    return inner if isinstance(inner, dict) else document
