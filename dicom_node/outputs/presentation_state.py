"""The triage result as a Grayscale Softcopy Presentation State over the original views.

Viewers that apply GSPS (most PACS do) show the untouched radiograph with, on
a graphic layer ``AI FRACTURE``, the finding box of each positive view and a
short text (e.g. ``AI: fracture likely p=0.83``); views the model assessed as
negative get the text only. Like the annotated captures, the box is dashed
when a fracture is suspected (high-sensitivity operating point) and solid when
it is likely (high-specificity point): each box carries a Line Style Sequence
(0070,0232) with Line Dashing Style ``DASHED`` or ``SOLID`` (PS3.3 C.10.5,
Line Style Sequence Macro). Viewers that ignore line styles still show the
level in the text. The window/level and modality LUT come from the
source images (highdicom copies them), so bone looks as it does without the
presentation state; MONOCHROME1 views get the INVERSE presentation LUT shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset

from config import FractureLevel
from config.domain.findings import AlgorithmIdentity, ImageFinding, StudyFinding
from config.domain.vocabulary import AI_RESULT_DISCLAIMER
from dicom_node.outputs.equipment import common_laterality, contributing_equipment
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.sources import quiet_warnings, study_headers
from dicom_node.outputs.sr import box_polyline
from dicom_node.outputs.wording import GATE_LABELS, probability_text

__all__ = [
    "DASHED_LINE_PATTERN",
    "GSPS_LAYER",
    "GSPS_SERIES_DESCRIPTION",
    "LINE_THICKNESS",
    "build_triage_gsps",
    "gsps_text",
    "line_style",
]

logger = logging.getLogger(__name__)

#: Series Description of the presentation state series.
GSPS_SERIES_DESCRIPTION = "AI annotations (GSPS)"
#: Graphic layer holding the boxes and texts.
GSPS_LAYER = "AI FRACTURE"
_LAYER_COLOUR = hd.color.CIELabColor(97.1, -21.6, 94.5)  # yellow, like the burned-in boxes
_SHADOW_COLOUR = hd.color.CIELabColor(0.0, 0.0, 0.0)
#: Box line width in display pixels.
LINE_THICKNESS = 2.0
#: Line Pattern of a dashed (suspected) box: 4 display pixels on, 4 off.
DASHED_LINE_PATTERN = 0xF0F0F0F0


def gsps_text(image: ImageFinding) -> str:
    """The short text drawn on a view, e.g. ``"AI: fracture likely p=0.83"``."""
    if image.not_assessed is not None:
        return f"AI: not assessed ({GATE_LABELS[image.not_assessed.gate]})"
    assert image.level is not None and image.fracture_probability is not None
    return f"AI: {image.level.value} p={probability_text(image.fracture_probability)}"


def line_style(*, dashed: bool) -> Dataset:
    """A Line Style Sequence item: the layer's yellow, 2 pixels wide, dashed or solid.

    highdicom's graphic objects have no line style yet, so the item is built
    here (PS3.3 Table C.10-26b, Line Style Sequence Macro) and set on the
    graphic object.

    Parameters
    ----------
    dashed: bool
        ``True`` for a suspected fracture's box (``DASHED`` with
        :data:`DASHED_LINE_PATTERN`), ``False`` for a likely one's (``SOLID``).

    Returns
    -------
    pydicom.Dataset
        The item, fully opaque, without shadow.
    """
    item = Dataset()
    item.PatternOnColorCIELabValue = list(_LAYER_COLOUR.value)
    item.PatternOnOpacity = 1.0
    item.LineThickness = LINE_THICKNESS
    item.LineDashingStyle = "DASHED" if dashed else "SOLID"
    if dashed:
        item.LinePattern = DASHED_LINE_PATTERN
    item.ShadowStyle = "OFF"
    item.ShadowOffsetX = 0.0
    item.ShadowOffsetY = 0.0
    item.ShadowColorCIELabValue = list(_SHADOW_COLOUR.value)
    item.ShadowOpacity = 0.0
    return item


def build_triage_gsps(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Build the study's presentation state: boxes on positive views, a text on each.

    ``source_images`` are the study's grayscale views (headers suffice: Rows, Columns,
    window and rescale attributes are read); the state references every view, with
    one graphic annotation per view. Wrong inputs raise TypeError or ValueError.
    """
    sources = study_headers(source_images, finding, algorithm, instance)
    layer = hd.pr.GraphicLayer(
        layer_name=GSPS_LAYER,
        order=1,
        description=f"{algorithm.name} {algorithm.version}: {AI_RESULT_DISCLAIMER}",
        display_color=_LAYER_COLOUR,
    )
    annotations = [_annotation(image, sources, layer) for image in finding.images]
    with quiet_warnings("building the GSPS"):
        gsps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=list(sources.values()),
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            device_serial_number=algorithm.version,
            content_label="AI_FRACTURE",
            content_description="AI fracture triage boxes, not for diagnostic use",
            graphic_annotations=annotations,
            graphic_layers=[layer],
            institution_name=None,
            content_creator_name=None,
            presentation_lut_transformation=_presentation_lut(list(sources.values()), finding),
            contributing_equipment=contributing_equipment(
                algorithm, "AI fracture triage presentation state"
            ),
            **instance.series_attributes(GSPS_SERIES_DESCRIPTION),
        )
    # General Series, Type 2C (empty where the views share no side); no highdicom argument.
    gsps.Laterality = common_laterality(list(sources.values())) or ""
    logger.info(
        "built GSPS %s (series %s) for study %s: %d view(s)",
        instance.sop_instance_uid,
        instance.series_instance_uid,
        finding.study_instance_uid,
        len(annotations),
    )
    return gsps


def _annotation(
    image: ImageFinding, sources: dict[str, Dataset], layer: hd.pr.GraphicLayer
) -> hd.pr.GraphicAnnotation:
    """One view's box (positive views with a box) and its text."""
    source = sources.get(image.sop_instance_uid)
    if source is None:
        raise ValueError(f"image finding {image.sop_instance_uid} has no source image")
    rows, columns = int(source.Rows), int(source.Columns)
    graphics = []
    if image.is_positive and image.box is not None:
        box = hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(image.box, rows, columns),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
        )
        # highdicom's graphic objects take no line style (see line_style()).
        box.LineStyleSequence = [line_style(dashed=image.level is FractureLevel.SUSPECTED)]
        graphics.append(box)
    # The text sits in the top left corner of the view, clear of the anatomy.
    margin = min(max(1.0, columns / 100), columns / 10, rows / 10)
    right = max(columns * 0.6, min(float(columns), margin + 1.0))
    bottom = min(float(rows), margin + max(12.0, rows / 20))
    text = hd.pr.TextObject(
        text_value=gsps_text(image),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(margin, margin, right, bottom),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )
    return hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=[text],
    )


def _presentation_lut(
    sources: list[Dataset], finding: StudyFinding
) -> hd.PresentationLUTTransformation:
    """INVERSE for MONOCHROME1 views (a presentation state ignores the photometric
    interpretation, and CR is often MONOCHROME1), else IDENTITY."""
    photometric = {str(ds.get("PhotometricInterpretation") or "MONOCHROME2") for ds in sources}
    if len(photometric) > 1:
        logger.warning(
            "study %s mixes %s views: GSPS shown with IDENTITY presentation LUT",
            finding.study_instance_uid,
            " and ".join(sorted(photometric)),
        )
    shape = (
        hd.PresentationLUTShapeValues.INVERSE
        if photometric == {"MONOCHROME1"}
        else hd.PresentationLUTShapeValues.IDENTITY
    )
    return hd.PresentationLUTTransformation(presentation_lut_shape=shape)
