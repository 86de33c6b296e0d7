"""One vocabulary of body parts: DICOM codes, Body Part Examined terms and everyday words.

Every body part a radiograph header may name maps here, from three kinds of value:

* the coded concept (SNOMED CT, DICOM CID 4 "Anatomic Region") of the Anatomic Region
  Sequence, also what the SR writes as the finding site;
* the Body Part Examined defined terms of DICOM PS3.16 Annex L (e.g. ``WRIST``,
  ``LSPINE``), whose mapping to the codes is the standard's;
* free text as technologists and RIS write it in Study and Series Descriptions and
  Protocol Names, in English, German, French, Spanish, Italian, Dutch and Portuguese
  (matched as whole words after folding case and accents).

Words that mean something else in another language or in another phrase (French
"main" and "cote", Spanish "pie", "dedo" for finger and toe, German "sein", "head" of
"radial head") are left out on purpose: a wrong match could stop a study that should
be assessed, or let one through that should not.

Generic terms (``EXTREMITY``, "upper limb", "leg") name several parts at once; a
header that says only that cannot by itself say a study is outside a bundle's regions
unless none of those parts is one of them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class BodyPart:
    """A body part: its code (scheme, value, meaning), Annex L terms and words for it."""

    name: str
    code: tuple[str, str, str]
    terms: tuple[str, ...] = ()  # Body Part Examined values: Annex L's term first, then others
    words: tuple[str, ...] = ()  # free-text words and phrases, lower case, no accents
    parts: tuple[str, ...] = ()  # a generic term: the specific parts it covers

    @property
    def generic(self) -> bool:
        return bool(self.parts)


UPPER_LIMB_PARTS = ("shoulder", "humerus", "elbow", "forearm", "wrist", "hand", "finger")
LOWER_LIMB_PARTS = ("hip", "femur", "knee", "lower leg", "ankle", "foot")

_PARTS: tuple[BodyPart, ...] = (
    # The upper extremity: MURA's seven regions.
    BodyPart("shoulder", ("SCT", "16982005", "Shoulder"), ("SHOULDER",),
             ("shoulder", "schulter", "epaule", "hombro", "spalla", "schouder", "ombro")),
    BodyPart("humerus", ("SCT", "85050009", "Humerus"), ("HUMERUS",),
             ("humerus", "upper arm", "oberarm", "humero", "omero", "bovenarm", "umero")),
    BodyPart("elbow", ("SCT", "16953009", "Elbow joint"), ("ELBOW",),
             ("elbow", "olecranon", "ellenbogen", "ellbogen", "coude", "codo", "gomito",
              "elleboog", "cotovelo")),
    BodyPart("forearm", ("SCT", "14975008", "Forearm"), ("FOREARM", "RADIUS", "ULNA"),
             ("forearm", "radius", "ulna", "unterarm", "avant bras", "antebrazo",
              "avambraccio", "onderarm", "antebraco")),
    BodyPart("wrist", ("SCT", "74670003", "Wrist joint"), ("WRIST",),
             ("wrist", "carpus", "carpal", "scaphoid", "handgelenk", "poignet", "muneca",
              "polso", "pols", "punho", "handled", "kahnbein", "scaphoide")),
    BodyPart("hand", ("SCT", "85562004", "Hand"), ("HAND",),
             ("hand", "hands", "metacarpal", "metacarpals", "mittelhand", "mano", "hande")),
    BodyPart("finger", ("SCT", "7569003", "Finger"), ("FINGER", "THUMB"),
             ("finger", "fingers", "thumb", "digit", "phalanx", "phalanges", "daumen",
              "doigt", "pouce", "pulgar", "dito", "pollice", "vinger", "duim", "polegar")),
    # Outside a bundle of the upper extremity: what a PACS also sends.
    BodyPart("clavicle", ("SCT", "51299004", "Clavicle"), ("CLAVICLE",),
             ("clavicle", "collarbone", "schlusselbein", "clavicule", "clavicula", "sleutelbeen")),
    BodyPart("scapula", ("SCT", "79601000", "Scapula"), ("SCAPULA",),
             ("scapula", "schulterblatt", "omoplate", "escapula", "schouderblad")),
    BodyPart("chest", ("SCT", "816094009", "Chest"), ("CHEST", "THORAX"),
             ("chest", "thorax", "lung", "lungs", "cxr", "brustkorb", "lunge", "poumon",
              "poumons", "torax", "pulmon", "torace", "polmone", "borstkas", "pulmao")),
    BodyPart("rib", ("SCT", "113197003", "Rib"), ("RIB",),
             ("rib", "ribs", "rippe", "rippen", "costilla", "costola")),
    BodyPart("abdomen", ("SCT", "818981001", "Abdomen"), ("ABDOMEN",),
             ("abdomen", "abdominal", "kub", "bauch", "abdome", "addome", "buik")),
    BodyPart("pelvis", ("SCT", "816092008", "Pelvis"), ("PELVIS", "SACRUM", "COCCYX"),
             ("pelvis", "pelvic", "sacrum", "coccyx", "becken", "bassin", "bacino", "bekken",
              "pelve", "bacia")),
    BodyPart("hip", ("SCT", "24136001", "Hip joint"), ("HIP",),
             ("hip", "hips", "hufte", "hanche", "cadera", "anca", "heup", "quadril")),
    BodyPart("femur", ("SCT", "71341001", "Femur"), ("FEMUR", "THIGH"),
             ("femur", "thigh", "oberschenkel", "cuisse", "muslo", "femore", "coscia",
              "dijbeen", "coxa")),
    BodyPart("knee", ("SCT", "72696002", "Knee"), ("KNEE", "PATELLA"),
             ("knee", "knees", "patella", "knie", "genou", "rodilla", "ginocchio", "joelho",
              "kniescheibe", "rotule", "rotula")),
    BodyPart("lower leg", ("SCT", "30021000", "Lower leg"), ("LOWERLEG", "TIBIA", "FIBULA"),
             ("tibia", "fibula", "shin", "lower leg", "unterschenkel", "jambe", "pierna",
              "gamba", "onderbeen", "perna", "peroneo", "perone")),
    BodyPart("ankle", ("SCT", "70258002", "Ankle joint"), ("ANKLE",),
             ("ankle", "ankles", "malleolus", "sprunggelenk", "knochel", "cheville", "tobillo",
              "caviglia", "enkel", "tornozelo")),
    BodyPart("foot", ("SCT", "56459004", "Foot"), ("FOOT", "TOE", "HEEL", "CALCANEUS"),
             ("foot", "feet", "toe", "toes", "heel", "calcaneus", "metatarsal", "metatarsals",
              "fuss", "fusse", "zehe", "zehen", "pied", "pieds", "orteil", "piede", "voet",
              "calcaneo", "hallux")),
    BodyPart("spine", ("SCT", "421060004", "Spine"),
             ("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "CTSPINE", "TLSPINE", "LSSPINE"),
             ("spine", "spinal", "vertebra", "vertebrae", "cervical", "lumbar", "c spine",
              "l spine", "t spine", "wirbelsaule", "hws", "bws", "lws", "rachis", "colonne",
              "columna", "rachide", "wervelkolom", "coluna")),
    BodyPart("skull", ("SCT", "89546000", "Skull"),
             ("SKULL", "HEAD", "FACE", "JAW", "MANDIBLE", "SINUS", "ORBIT", "NOSE", "TMJ"),
             ("skull", "cranium", "face", "facial", "mandible", "jaw", "sinus",
              "sinuses", "orbit", "orbits", "nasal", "dental", "teeth", "schadel", "kopf",
              "crane", "craneo", "cranio", "schedel", "cranio")),
    BodyPart("neck", ("SCT", "45048000", "Neck"), ("NECK",), ("neck", "hals", "cou", "cuello")),
    BodyPart("breast", ("SCT", "76752008", "Breast"), ("BREAST",),
             ("breast", "mammography", "mammo", "mamma")),
    BodyPart("whole body", ("SCT", "38266002", "Entire body"), ("WHOLEBODY",),
             ("whole body", "babygram", "skeletal survey", "ganzkorper")),
    # Generic terms: several parts at once.
    BodyPart("upper limb", ("SCT", "53120007", "Upper limb"), ("UPPERLIMB", "UPREXM"),
             ("upper limb", "upper extremity", "obere extremitat", "membre superieur",
              "miembro superior", "arto superiore", "bovenste ledemaat", "membro superior"),
             UPPER_LIMB_PARTS),
    BodyPart("lower limb", ("SCT", "61685007", "Lower limb"), ("LOWERLIMB", "LOWEXM", "LEG"),
             ("lower limb", "lower extremity", "leg", "legs", "untere extremitat", "bein",
              "membre inferieur", "miembro inferior", "arto inferiore", "onderste ledemaat",
              "membro inferior"),
             LOWER_LIMB_PARTS),
    BodyPart("extremity", ("SCT", "66019005", "Extremity"), ("EXTREMITY",),
             ("extremity", "extremities", "limb", "limbs", "extremitat"),
             UPPER_LIMB_PARTS + LOWER_LIMB_PARTS),
    BodyPart("arm", ("SCT", "53120007", "Upper limb"), ("ARM",),
             ("arm", "arms", "bras", "brazo", "braccio", "braco"),
             ("humerus", "elbow", "forearm")),
)  # fmt: skip

#: Every body part by name.
BODY_PARTS = MappingProxyType({part.name: part for part in _PARTS})
_BY_TERM = MappingProxyType({term: part for part in _PARTS for term in part.terms})
_BY_CODE = MappingProxyType({part.code[1]: part for part in reversed(_PARTS)})
_PHRASES = sorted(
    ((word, part) for part in _PARTS for word in part.words), key=lambda wp: -len(wp[0])
)


def fold(text: str) -> str:
    """Lower case, accents dropped, every non-alphanumeric a single space, padded."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return " " + re.sub(r"[^a-z0-9]+", " ", plain).strip() + " "


def part_of_term(value: str) -> BodyPart | None:
    """The body part a Body Part Examined value names: an Annex L term, else its words."""
    term = value.strip().upper().replace(" ", "")
    if term in _BY_TERM:
        return _BY_TERM[term]
    found = parts_in_text(value)
    return found[0] if len(found) == 1 else None


def part_of_code(code_value: str) -> BodyPart | None:
    """The body part of a SNOMED CT code of the Anatomic Region Sequence."""
    return _BY_CODE.get(code_value.strip())


def parts_in_text(text: str) -> list[BodyPart]:
    """The body parts a free text names, longest phrases first, each at most once."""
    folded = fold(text)
    found: list[BodyPart] = []
    for phrase, part in _PHRASES:
        token = f" {phrase} "
        if token in folded:
            folded = folded.replace(token, " ")  # "upper arm" is not also "arm"
            if part not in found:
                found.append(part)
    return found


def specific_parts(part: BodyPart) -> frozenset[str]:
    """The specific parts a body part stands for: itself, or what a generic term covers."""
    return frozenset(part.parts) if part.generic else frozenset({part.name})


def finding_site_code(region: str) -> tuple[str, str, str]:
    """The coded concept (scheme, value, meaning) of a region, for the SR's finding site."""
    part = BODY_PARTS.get(region)
    if part is None:
        raise ValueError(f"unknown body part {region!r}; expected one of {sorted(BODY_PARTS)}")
    return part.code
