"""Models of fracture-triage: preprocessing, phantoms, networks, bundles, inference, overlays.

Importing this package pulls in torch and MONAI; the DICOM node does not import it.
"""

from models.bundle import BundleError, BundleMetadata, OperatingPoints, load_bundle, save_bundle
from models.decision import aggregate_study, study_region
from models.gradcam import CamExplainer, compute_cam, hottest_box
from models.inference import HierarchicalModel, ImagePrediction
from models.networks import NetworkSpec, build_network, gradcam_target_layer
from models.overlay import render_overlay
from models.phantoms import Phantom, phantom_dataset, render_phantom, write_sample_studies
from models.preprocessing import (
    FitToSquare,
    FitToSquared,
    Geometry,
    display_image_from_dataset,
    display_image_from_png,
    preprocess,
    preprocess_dicom_file,
    preprocessing_transform,
)

__all__ = [
    "BundleError",
    "BundleMetadata",
    "CamExplainer",
    "FitToSquare",
    "FitToSquared",
    "Geometry",
    "HierarchicalModel",
    "ImagePrediction",
    "NetworkSpec",
    "OperatingPoints",
    "Phantom",
    "aggregate_study",
    "build_network",
    "compute_cam",
    "display_image_from_dataset",
    "display_image_from_png",
    "gradcam_target_layer",
    "hottest_box",
    "load_bundle",
    "phantom_dataset",
    "preprocess",
    "preprocess_dicom_file",
    "preprocessing_transform",
    "render_overlay",
    "render_phantom",
    "save_bundle",
    "study_region",
    "write_sample_studies",
]
