"""Operators of the peer app; the SDK's own operators wherever it has one for the step.

Written after the SDK's breast density classifier example (``ClassifierOperator``): the
network comes from the app context (a TorchScript file, the SDK's documented model
format) and is loaded once, in the constructor; MONAI transforms prepare each image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.deploy.core import AppContext, Fragment, Image, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.dicom_text_sr_writer_operator import DICOMTextSRWriterOperator
from monai.deploy.operators.monai_seg_inference_operator import InMemImageReader
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureType,
    LoadImage,
    NormalizeIntensity,
    Resize,
    SqueezeDim,
)


@dataclass
class StudyTimings:
    """Stamps of a study handed to the loader and of its SR written.

    Wall clock (``time.perf_counter``) and the process's CPU time (``time.process_time``,
    every thread: Holoscan's scheduler and torch's): on a shared machine the CPU
    seconds show the work when other processes stretch the wall time.
    """

    handed_over: list[tuple[float, float]] = field(default_factory=list)
    reported: list[tuple[float, float]] = field(default_factory=list)


def stamp() -> tuple[float, float]:
    """(wall seconds, CPU seconds) now."""
    return time.perf_counter(), time.process_time()


class StudyFolderFeeder(Operator):
    """Hands one study folder per tick to the loader, as a watcher passes on arrived studies.

    Give it a ``CountCondition`` of the number of folders: the app ends after the last.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        folders: list[Path],
        timings: StudyTimings,
        **kwargs: Any,
    ) -> None:
        self.folders = list(folders)
        self.timings = timings
        self.output_name = "input_folder"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output(self.output_name)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        folder = self.folders[len(self.timings.handed_over)]
        self.timings.handed_over.append(stamp())
        op_output.emit(folder, self.output_name)


class StudyLoaderOperator(DICOMDataLoaderOperator):
    """The SDK's DICOM data loader, run once per folder handed to its ``input_folder`` port.

    The SDK declares that port optional (a loader with a CountCondition of 1 reads its
    constructor's folder); here it is required, so the loader waits for the next study.
    """

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name)
        spec.output(self.output_name)


class SeriesToImagesOperator(DICOMSeriesToVolumeOperator):
    """The SDK's series-to-volume conversion for every selected series, not only the first.

    A radiograph is a series of one image here (the SDK's converter gives a 1xHxW
    volume), so a study of three views yields three images. Output: ``images``.
    """

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name_series)
        spec.output("images")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        images = []
        for study_selected in op_input.receive(self.input_name_series):
            for selected in study_selected.selected_series:
                one = StudySelectedSeries(study_selected.study)
                one.add_selected_series(selected)
                images.append(self.convert_to_image([one]))
        op_output.emit(images, "images")


class FractureClassifierOperator(Operator):
    """One classification network over a study's views in one batch; text result per study.

    Named input ``images`` (list of SDK Images), named output ``result_text``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        app_context: AppContext,
        image_size: int,
        model_name: str = "",
        **kwargs: Any,
    ) -> None:
        self.image_size = image_size
        self.model = app_context.models.get(model_name)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.predictor  # noqa: B018 - loads the TorchScript file now, once, not on study 1
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("images")
        spec.output("result_text")

    def pre_process(self, image: Image) -> Compose:
        # As the SDK's classifier example: the in-memory reader, channel first, drop the
        # depth of 1, normalise, resize to the network's input; then a plain tensor (no
        # MONAI metadata tracked through the network: a little faster, the peer's best).
        return Compose(
            [
                LoadImage(reader=InMemImageReader(image), image_only=True),
                EnsureChannelFirst(),
                SqueezeDim(dim=3),
                NormalizeIntensity(),
                Resize(spatial_size=(self.image_size, self.image_size)),
                EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
            ]
        )

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        images: list[Image] = op_input.receive("images")
        batch = torch.stack([self.pre_process(image)("in-memory") for image in images])
        batch = batch.to(self.device)
        with torch.no_grad():
            probabilities = torch.sigmoid(self.model(batch)).flatten().tolist()
        views = ", ".join(f"{p:.3f}" for p in probabilities)
        op_output.emit(
            f"Fracture probability per view: {views}. Study: {max(probabilities):.3f} (maximum).",
            "result_text",
        )


class TimedTextSRWriterOperator(DICOMTextSRWriterOperator):
    """The SDK's DICOM text SR writer, stamping the time each study's SR is written."""

    def __init__(
        self, fragment: Fragment, *args: Any, timings: StudyTimings, **kwargs: Any
    ) -> None:
        self.timings = timings
        super().__init__(fragment, *args, **kwargs)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        super().compute(op_input, op_output, context)
        self.timings.reported.append(stamp())
