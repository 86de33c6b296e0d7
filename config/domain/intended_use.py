"""Intended use, declared by a bundle and enforced before any pixel is read (the header gate).

A bundle declares what it was made for: modalities, the regions it assesses, views,
an age range, human subjects. :func:`header_gate` reads what a radiograph's header
says about itself (:class:`HeaderFacts`) and answers:

* the header positively says the image is outside: another body part, a non-human
  subject, an age outside the range, a secondary copy -> "not assessed" with that
  reason, and the fracture model never runs;
* the header names one of the assessed regions -> the pixels decide, and a stage-1
  region that contradicts it is a conflict;
* the header is empty, generic or ambiguous (headers are often blank or wrong) ->
  the pixels decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.domain.anatomy import (
    BODY_PARTS,
    BodyPart,
    part_of_code,
    part_of_term,
    parts_in_text,
    specific_parts,
)
from config.domain.findings import Gate, NotAssessed

#: SNOMED CT "Homo sapiens": the one species a bundle for humans accepts.
HOMO_SAPIENS_CODE = "337915000"
_HUMAN_WORDS = frozenset({"homo sapiens", "human", "humain", "mensch", "humano", "umano"})


def check_age_range(low: float | None, high: float | None) -> None:
    """An age range whose upper end is not below its lower end (None: open)."""
    if low is not None and high is not None and high < low:
        raise ValueError(f"max_age_years ({high}) is below min_age_years ({low})")


class IntendedUse(BaseModel):
    """What a bundle was made for; the model card, the conformance statement and the
    header gate all read it from here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statement: str = Field(min_length=1, description="The intended use in a sentence or two.")
    modalities: tuple[str, ...] = Field(default=("CR", "DX"), min_length=1)
    regions: tuple[str, ...] = Field(min_length=1, description="Body parts the bundle assesses.")
    views: tuple[str, ...] | None = Field(
        default=None, description="View Position values assessed (None: any projection)."
    )
    min_age_years: float | None = Field(default=None, ge=0)
    max_age_years: float | None = Field(default=None, ge=0)
    human_only: bool = True
    secondary_copies: bool = Field(
        default=False, description="Assess Image Type SECONDARY (digitised films, screenshots)."
    )
    burned_in_annotation: bool = Field(
        default=True,
        description="Assess images whose Burned In Annotation is YES (side markers, labels).",
    )
    header_conflict: Literal["not_assessed", "pixels", "header"] = Field(
        default="not_assessed",
        description="When the header names one assessed region and stage 1 another: do not "
        "assess, or let the pixels or the header win.",
    )

    @field_validator("regions")
    @classmethod
    def _known_regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [region for region in value if region not in BODY_PARTS]
        if unknown:
            raise ValueError(
                f"unknown body parts {unknown}; expected names of {sorted(BODY_PARTS)}"
            )
        return value

    @model_validator(mode="after")
    def _age_range(self) -> IntendedUse:
        check_age_range(self.min_age_years, self.max_age_years)
        return self

    @field_validator("regions")
    @classmethod
    def _distinct_regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"regions {list(value)} name a body part twice")
        return value

    def region_for(self, part_name: str) -> str | None:
        """The assessed region a specific body part falls under, or None.

        The region of that name first; else a generic region that covers it (a bundle
        trained on FracAtlas assesses "lower limb" beside "hip": a knee falls under the
        former, a hip under the latter).
        """
        if part_name in self.regions:
            return part_name
        for region in self.regions:
            if part_name in BODY_PARTS[region].parts:
                return region
        return None

    def covers(self, part: BodyPart) -> bool:
        """Whether ``part`` is, or (generic) may be, one of the assessed regions."""
        return any(self.region_for(name) is not None for name in specific_parts(part))


@dataclass(frozen=True)
class HeaderFacts:
    """What a radiograph's header says about itself; never names or IDs.

    ``age_years`` is computed by whoever reads the header (Patient's Age, else Birth
    Date against Study Date); None when neither says.
    """

    modality: str | None = None
    body_part_examined: str | None = None
    anatomic_region_codes: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()  # Study and Series Description, Protocol Name
    view_position: str | None = None
    species: tuple[str, ...] = ()  # Patient Species Description and code values
    age_years: float | None = None
    image_type: tuple[str, ...] = ()
    burned_in_annotation: str | None = None


@dataclass(frozen=True)
class HeaderVerdict:
    """The header gate's answer: outside (with why), or the assessed regions it names."""

    not_assessed: NotAssessed | None = None
    regions: frozenset[str] = frozenset()


def named_parts(facts: HeaderFacts) -> list[tuple[str, BodyPart]]:
    """(where, body part) for every body part the header names, most specific first."""
    named: list[tuple[str, BodyPart]] = []
    if facts.body_part_examined:
        part = part_of_term(facts.body_part_examined)
        if part is not None:
            named.append(("Body Part Examined", part))
    for code in facts.anatomic_region_codes:
        part = part_of_code(code)
        if part is not None:
            named.append(("Anatomic Region Sequence", part))
    for text in facts.descriptions:
        named += [("a description", part) for part in parts_in_text(text)]
    return sorted(named, key=lambda item: item[1].generic)


def header_gate(facts: HeaderFacts, use: IntendedUse) -> HeaderVerdict:
    """Whether the header puts the image outside ``use``, and the regions it names."""
    for check in (_modality, _species, _age, _secondary, _view, _annotation):
        reason = check(facts, use)
        if reason is not None:
            return HeaderVerdict(NotAssessed(Gate.HEADER, reason))
    named = named_parts(facts)
    inside = [(where, part) for where, part in named if use.covers(part)]
    outside = [(where, part) for where, part in named if not use.covers(part)]
    if outside and not any(not part.generic for _, part in inside):
        where, part = outside[0]
        regions = ", ".join(use.regions)
        return HeaderVerdict(
            NotAssessed(
                Gate.HEADER,
                f"{where} names {part.name}: outside the intended use (assessed: {regions})",
            )
        )
    specific = {use.region_for(part.name) for _, part in inside if not part.generic}
    return HeaderVerdict(regions=frozenset(region for region in specific if region is not None))


def resolve_region(
    header_regions: frozenset[str], stage1_region: str, use: IntendedUse
) -> tuple[str | None, NotAssessed | None]:
    """The region stage 2 runs with, given what the header named and what stage 1 said.

    Agreement (or a header that names no assessed region) keeps stage 1's region. A
    disagreement is a conflict: not assessed, unless the bundle lets the pixels win
    (stage 1's region) or the header win (its region, when it names exactly one).
    """
    if not header_regions or stage1_region in header_regions or use.header_conflict == "pixels":
        return stage1_region, None
    if use.header_conflict == "header" and len(header_regions) == 1:
        return next(iter(header_regions)), None
    named = ", ".join(sorted(header_regions))
    return None, NotAssessed(
        Gate.CONFLICT, f"the header names {named} but the image looks like {stage1_region}"
    )


def _modality(facts: HeaderFacts, use: IntendedUse) -> str | None:
    if facts.modality and facts.modality.strip() and facts.modality.strip() not in use.modalities:
        return f"modality {facts.modality.strip()} is not one of {', '.join(use.modalities)}"
    return None


def _species(facts: HeaderFacts, use: IntendedUse) -> str | None:
    if not use.human_only:
        return None
    for value in facts.species:
        text = value.strip().lower()
        if text and text != HOMO_SAPIENS_CODE and text not in _HUMAN_WORDS:
            return "the patient is not human (Patient Species)"
    return None


def _age(facts: HeaderFacts, use: IntendedUse) -> str | None:
    age = facts.age_years
    if age is None:
        return None
    if use.min_age_years is not None and age < use.min_age_years:
        return f"the patient is younger than {use.min_age_years:g} years"
    if use.max_age_years is not None and age > use.max_age_years:
        return f"the patient is older than {use.max_age_years:g} years"
    return None


def _secondary(facts: HeaderFacts, use: IntendedUse) -> str | None:
    values = [value.strip().upper() for value in facts.image_type]
    if not use.secondary_copies and len(values) > 1 and values[1] == "SECONDARY":
        return "Image Type says SECONDARY: a copy (a digitised film or a screenshot)"
    return None


def _view(facts: HeaderFacts, use: IntendedUse) -> str | None:
    view = (facts.view_position or "").strip().upper()
    if use.views is not None and view and view not in use.views:
        return f"View Position {view} is not one of {', '.join(use.views)}"
    return None


def _annotation(facts: HeaderFacts, use: IntendedUse) -> str | None:
    if not use.burned_in_annotation and (facts.burned_in_annotation or "").upper() == "YES":
        return "Burned In Annotation is YES and the model was not made for annotated images"
    return None
