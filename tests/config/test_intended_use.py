"""The header gate: one body-part vocabulary, and what a header may decide by itself."""

from __future__ import annotations

import pytest

from config.domain.anatomy import BODY_PARTS, finding_site_code, part_of_term, parts_in_text
from config.domain.findings import Gate
from config.domain.intended_use import (
    HeaderFacts,
    IntendedUse,
    header_gate,
    resolve_region,
)
from config.domain.vocabulary import REGIONS

UPPER_LIMB = IntendedUse(
    statement="Fracture triage of adult upper-extremity radiographs.",
    regions=REGIONS,
    min_age_years=18,
)


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("XR WRIST 2 VIEWS", "wrist"),
        ("Handgelenk links d.p.", "wrist"),  # German
        ("Poignet face et profil", "wrist"),  # French
        ("Rx muñeca derecha", "wrist"),  # Spanish, accent folded
        ("RX polso sinistro", "wrist"),  # Italian
        ("Pols rechts", "wrist"),  # Dutch
        ("Punho esquerdo", "wrist"),  # Portuguese
        ("Ellenbogen seitlich", "elbow"),
        ("coude", "elbow"),
        ("Radial head fracture? elbow", "elbow"),  # "head" is not the skull
        ("Avant-bras", "forearm"),
        ("Daumen", "finger"),
        ("Épaule", "shoulder"),
        ("Thorax p.a.", "chest"),
        ("CXR PA", "chest"),
        ("Rx tórax", "chest"),
        ("Knie beidseits", "knee"),
        ("Genou", "knee"),
        ("Sprunggelenk", "ankle"),
        ("Cheville droite", "ankle"),
        ("Non-ossifying fibroma of distal tibia", "lower leg"),
        ("Unterschenkel", "lower leg"),
        ("Becken", "pelvis"),
        ("Hüfte", "hip"),
        ("LWS in 2 Ebenen", "spine"),
        ("C-SPINE", "spine"),
        ("Schädel", "skull"),
        ("Upper arm", "humerus"),  # not the generic "arm"
    ],
)
def test_free_text_in_several_languages(text: str, part: str) -> None:
    assert parts_in_text(text)[0].name == part


def test_words_that_mean_something_else_are_not_matched() -> None:
    assert parts_in_text("main series, côté droit") == []  # French "main", "côté"
    assert parts_in_text("") == []


def test_body_part_examined_terms() -> None:
    assert part_of_term("WRIST").name == "wrist"  # type: ignore[union-attr]
    assert part_of_term("LSPINE").name == "spine"  # type: ignore[union-attr]
    assert part_of_term("EXTREMITY").generic  # type: ignore[union-attr]
    assert part_of_term("Handgelenk").name == "wrist"  # type: ignore[union-attr]
    assert part_of_term("SOMETHING") is None


def test_codes_agree_with_the_standard_annex_l_table() -> None:
    """Each part's first Body Part Examined term is DICOM PS3.16 Annex L's, with its code.

    highdicom ships that table (a data file of its own); read here only to check ours.
    """
    import json
    from importlib.resources import files

    table = json.loads(files("highdicom").joinpath("_standard/anatomic_regions.json").read_text())
    for part in BODY_PARTS.values():
        if part.name == "arm":  # "ARM" is a common value, not an Annex L term
            continue
        scheme, value, _meaning, _laterality = table[part.terms[0]]
        assert (scheme, value) == part.code[:2], part.name
    assert finding_site_code("wrist") == ("SCT", "74670003", "Wrist joint")
    with pytest.raises(ValueError, match="unknown body part 'nose'"):
        finding_site_code("nose")


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (HeaderFacts(body_part_examined="CHEST"), "Body Part Examined names chest"),
        (HeaderFacts(body_part_examined="EXTREMITY",
                     descriptions=("Non-ossifying fibroma of distal tibia",)),
         "a description names lower leg"),
        (HeaderFacts(anatomic_region_codes=("72696002",)), "Anatomic Region Sequence names knee"),
        (HeaderFacts(body_part_examined="LEG"), "names lower limb"),
        (HeaderFacts(species=("Canis lupus familiaris",)), "not human"),
        (HeaderFacts(species=("448771007",)), "not human"),  # SCT code of a dog
        (HeaderFacts(age_years=7.5), "younger than 18"),
        (HeaderFacts(image_type=("DERIVED", "SECONDARY")), "SECONDARY"),
        (HeaderFacts(modality="MR"), "modality MR"),
    ],
)  # fmt: skip
def test_a_header_that_says_outside_stops_the_image(facts: HeaderFacts, reason: str) -> None:
    verdict = header_gate(facts, UPPER_LIMB)
    assert verdict.not_assessed is not None and verdict.not_assessed.gate is Gate.HEADER
    assert reason in verdict.not_assessed.reason


@pytest.mark.parametrize(
    "facts",
    [
        HeaderFacts(),  # an empty header leaves it to the pixels
        HeaderFacts(body_part_examined="EXTREMITY"),  # generic: may be an arm
        HeaderFacts(body_part_examined="UPPERLIMB"),
        HeaderFacts(descriptions=("XR WRIST AND KNEE",)),  # ambiguous: names one inside
        HeaderFacts(species=("Homo sapiens",), age_years=45),
        HeaderFacts(image_type=("DERIVED", "PRIMARY")),  # processed DX: not a copy
        HeaderFacts(body_part_examined="nonsense", descriptions=("XR 2 VIEWS",)),
    ],
)
def test_an_empty_or_ambiguous_header_leaves_it_to_the_pixels(facts: HeaderFacts) -> None:
    assert header_gate(facts, UPPER_LIMB).not_assessed is None


def test_a_header_naming_a_region_and_pixels_that_disagree_is_a_conflict() -> None:
    verdict = header_gate(
        HeaderFacts(body_part_examined="WRIST", descriptions=("XR WRIST",)), UPPER_LIMB
    )
    assert verdict.not_assessed is None and verdict.regions == {"wrist"}
    assert resolve_region(verdict.regions, "wrist", UPPER_LIMB) == ("wrist", None)
    region, conflict = resolve_region(verdict.regions, "shoulder", UPPER_LIMB)
    assert region is None and conflict is not None and conflict.gate is Gate.CONFLICT
    assert "wrist" in conflict.reason and "shoulder" in conflict.reason
    pixels_win = UPPER_LIMB.model_copy(update={"header_conflict": "pixels"})
    assert resolve_region(verdict.regions, "shoulder", pixels_win) == ("shoulder", None)
    header_wins = UPPER_LIMB.model_copy(update={"header_conflict": "header"})
    assert resolve_region(verdict.regions, "shoulder", header_wins) == ("wrist", None)
    assert resolve_region(frozenset(), "shoulder", UPPER_LIMB) == ("shoulder", None)


def test_intended_use_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown body parts"):
        IntendedUse(statement="x", regions=("wrist", "tentacle"))
    with pytest.raises(ValueError, match="below min_age_years"):
        IntendedUse(statement="x", regions=("wrist",), min_age_years=18, max_age_years=5)
    with pytest.raises(ValueError, match="twice"):
        IntendedUse(statement="x", regions=("wrist", "wrist"))


def test_a_generic_region_covers_its_parts_the_bundles_other_regions_excepted() -> None:
    """FracAtlas's regions: 'lower limb' beside 'hip'. A knee falls under the former, a hip
    under the latter, a wrist under neither."""
    fracatlas = IntendedUse(statement="x", regions=("hand", "hip", "lower limb", "shoulder"))
    assert fracatlas.region_for("knee") == "lower limb"
    assert fracatlas.region_for("hip") == "hip"
    assert fracatlas.region_for("wrist") is None
    for term, regions in (("KNEE", {"lower limb"}), ("ANKLE", {"lower limb"}), ("HIP", {"hip"})):
        verdict = header_gate(HeaderFacts(body_part_examined=term), fracatlas)
        assert verdict.not_assessed is None and verdict.regions == regions, term
    # "LEG" names the whole lower limb: generic, left to the pixels.
    assert header_gate(HeaderFacts(body_part_examined="LEG"), fracatlas).regions == frozenset()
    wrist = header_gate(HeaderFacts(body_part_examined="WRIST"), fracatlas).not_assessed
    assert wrist is not None and wrist.gate is Gate.HEADER and "wrist" in wrist.reason
    # The knee's header and stage 1's 'lower limb' agree: no conflict.
    assert resolve_region(frozenset({"lower limb"}), "lower limb", fracatlas) == (
        "lower limb",
        None,
    )
