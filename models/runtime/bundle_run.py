"""What ``python -m monai.bundle run`` calls (``configs/inference.json``): one image through
a bundle, as the node runs it, to a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.runtime.bundle import load_bundle
from models.runtime.preprocessing import display_image_from_file, preprocess


def classify_file(
    bundle_root: str | Path, image: str | Path, output: str | Path, device: str = "cpu"
) -> dict[str, Any]:
    """Stage 1, the pixel gate and the region's fracture probability of one image.

    Parameters
    ----------
    bundle_root
        The bundle directory.
    image
        A PNG/JPEG (already display-rendered) or a DICOM file (rendered as the node
        renders it: Modality LUT, VOI, MONOCHROME1).
    output
        JSON file to write.
    device
        Torch device.

    Returns
    -------
    dict
        What was written: ``region`` (None when not assessed), ``not_assessed`` (why,
        or None), ``region_probabilities`` (calibrated, per class), ``fracture_probability``
        (calibrated; None without a region), ``fracture_type`` (the type head's call
        given a fracture, for a bundle with one) and ``bundle`` (name and version).

    Raises
    ------
    ValueError
        If no image is given (``--image``).
    """
    if not str(image):
        raise ValueError("no image given: pass --image PATH (PNG, JPEG or DICOM)")
    model = load_bundle(Path(bundle_root), device=device)
    tensor, _ = preprocess(display_image_from_file(image), model.image_size)
    batch = tensor[None]
    call = model.classify_regions(batch)[0]
    fracture = model.classify_fractures(batch, [call.region])[0]
    kind = model.classify_types(batch)[0] if call.region is not None else None
    result = {
        "bundle": {"name": model.metadata.name, "version": model.metadata.version},
        "region": call.region,
        "not_assessed": call.reason,
        "region_probabilities": call.probabilities,
        "fracture_probability": fracture,
        # The type head's call given a fracture (not a claim that there is one).
        "fracture_type": None
        if kind is None
        else {"name": kind.name, "probability": kind.probability},
        "trained_on_synthetic_data": model.metadata.trained_on_synthetic_data,
    }
    Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result
