"""The peer app: loader -> series selector -> series to images -> classifier -> text SR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_text_sr_writer_operator import EquipmentInfo, ModelInfo

from benchmarks.monai_deploy_app.operators import (
    FractureClassifierOperator,
    SeriesToImagesOperator,
    StudyFolderFeeder,
    StudyLoaderOperator,
    StudyTimings,
    TimedTextSRWriterOperator,
)

#: Every CR or DX series of the study (one view each), as the SDK's selector rules read.
RADIOGRAPH_RULES = json.dumps(
    {"selections": [{"name": "Radiographs", "conditions": {"Modality": "(?i)^(CR|DX)$"}}]}
)


class FractureClassificationApp(Application):
    """Classifies each study folder under the app's input folder; one text SR per study."""

    def __init__(self, *args: Any, image_size: int, timings: StudyTimings, **kwargs: Any) -> None:
        self.image_size = image_size
        self.timings = timings
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        # Input, output and model paths from the SDK's context (HOLOSCAN_* variables).
        app_context: AppContext = Application.init_app_context(self.argv)
        input_root = Path(app_context.input_path)
        output_folder = Path(app_context.output_path)
        folders = sorted(path for path in input_root.iterdir() if path.is_dir())

        feeder = StudyFolderFeeder(
            self,
            CountCondition(self, len(folders)),
            folders=folders,
            timings=self.timings,
            name="study_feeder_op",
        )
        loader = StudyLoaderOperator(self, input_folder=input_root, name="study_loader_op")
        selector = DICOMSeriesSelectorOperator(
            self, rules=RADIOGRAPH_RULES, all_matched=True, name="series_selector_op"
        )
        to_images = SeriesToImagesOperator(self, name="series_to_images_op")
        classifier = FractureClassifierOperator(
            self, app_context=app_context, image_size=self.image_size, name="classifier_op"
        )
        sr_writer = TimedTextSRWriterOperator(
            self,
            timings=self.timings,
            copy_tags=True,  # the study's Patient and Study modules, as the SDK's example
            model_info=ModelInfo("fracture-triage benchmark", "FractureClassifier", "0.1", ""),
            equipment_info=EquipmentInfo(manufacturer="MONAI Deploy App SDK"),
            custom_tags={"SeriesDescription": "Not for clinical use"},
            output_folder=output_folder,
            name="sr_writer_op",
        )

        self.add_flow(feeder, loader, {("input_folder", "input_folder")})
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        series = ("study_selected_series_list", "study_selected_series_list")
        self.add_flow(selector, to_images, {series})
        self.add_flow(to_images, classifier, {("images", "images")})
        self.add_flow(classifier, sr_writer, {("result_text", "text")})
        self.add_flow(selector, sr_writer, {series})  # the SR copies the study's tags
