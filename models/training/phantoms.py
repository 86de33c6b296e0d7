"""Synthetic radiograph phantoms: bone-like shapes per region, optional cortical break.

The phantoms let the demo and the tests show real, non-random behaviour without patient
data: each supported region has a distinguishable bone layout, "unsupported" samples are
other things (a chest-like rib cage, noise, gradients, blank exposures), and a fracture
is a dark gap line crossing one bone with a slightly displaced distal fragment. They are
*not* realistic enough to say anything about clinical performance.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from torch.nn import functional

from config import REGION_CLASSES, REGIONS, UNSUPPORTED
from config.domain.anatomy import BODY_PARTS
from models.runtime.preprocessing import preprocess

logger = logging.getLogger(__name__)

#: SOP Class UID of Digital X-Ray Image Storage - For Presentation.
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
#: A fictional birth date, distinctive so tests can prove it never reaches a log.
PHANTOM_BIRTH_DATE = "19480229"


def _anatomy(region: str) -> tuple[str, str, str]:
    """Body Part Examined (PS3.16 Annex L) and the SNOMED CT code and meaning of a phantom's
    region, from the domain's one body-part vocabulary ('unsupported' phantoms are chests)."""
    part = BODY_PARTS["chest" if region == UNSUPPORTED else region]
    _, value, meaning = part.code
    return part.terms[0], value, meaning


@dataclass(frozen=True)
class _Bone:
    """A tapered capsule from p0 to p1 (unit coords, (row, col)), radii r0 at p0, r1 at p1."""

    p0: tuple[float, float]
    p1: tuple[float, float]
    r0: float
    r1: float
    breakable: bool = True


@dataclass(frozen=True)
class _Blob:
    """An ellipse centred at c with semi-axes (a, b) rotated by angle (radians)."""

    c: tuple[float, float]
    a: float
    b: float
    angle: float = 0.0


@dataclass
class Phantom:
    """One synthetic radiograph.

    Attributes
    ----------
    image
        float32 (size, size) in [0, 1], bone bright.
    region
        One of :data:`config.REGION_CLASSES`.
    fracture
        Whether a cortical break was drawn.
    break_box
        ``(row_min, col_min, row_max, col_max)`` of the break in pixels, or None.
    """

    image: np.ndarray
    region: str
    fracture: bool
    break_box: tuple[int, int, int, int] | None = None
    laterality: str = field(default="R")


# ----------------------------------------------------------------------------- layouts
# Canonical layouts in unit coordinates: (row, col) around the origin, roughly within
# [-0.45, 0.45]; a random similarity transform places them in the image.


def _humerus(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    r = rng.uniform(0.045, 0.06)
    bones = [_Bone((-0.3, 0.0), (0.36, 0.0), r, r * 0.9)]
    blobs = [_Blob((-0.36, 0.0), 0.11, 0.1), _Blob((0.4, 0.0), 0.05, 0.11)]
    return bones, blobs


def _forearm(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    gap = rng.uniform(0.06, 0.08)
    bones = [
        _Bone((-0.42, -gap), (0.42, -gap * 1.2), 0.026, 0.034),
        _Bone((-0.42, gap), (0.42, gap * 0.9), 0.032, 0.024),
    ]
    return bones, []


def _finger(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    lengths, radii = (0.28, 0.2, 0.14), (0.05, 0.044, 0.038)
    bones, blobs, row = [], [], 0.36
    for length, radius in zip(lengths, radii, strict=True):
        top = row - length
        bones.append(_Bone((row, 0.0), (top, 0.0), radius, radius * 0.8))
        blobs.append(_Blob((row - 0.01, 0.0), radius * 0.7, radius * 1.25))  # base flare
        row = top - rng.uniform(0.03, 0.04)
    return bones, blobs


def _hand(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    bones: list[_Bone] = []
    blobs: list[_Blob] = []
    cols = (-0.19, -0.085, 0.02, 0.115, 0.2)
    for ray, col in enumerate(cols):
        spread = col * 0.35
        if ray == 0:  # thumb: shorter, angled outwards, two phalanges
            base, tip = (0.25, -0.1), (0.08, -0.25)
            bones.append(_Bone(base, tip, 0.03, 0.026))
            bones.append(_Bone((0.05, -0.27), (-0.07, -0.36), 0.024, 0.02))
            bones.append(_Bone((-0.1, -0.38), (-0.17, -0.42), 0.02, 0.016, breakable=False))
            continue
        top = -0.02 - rng.uniform(0.0, 0.03)
        bones.append(_Bone((0.28, col * 0.6), (top, col + spread * 0.3), 0.029, 0.025))
        row, c = top - 0.025, col + spread * 0.4
        for length, radius in ((0.17, 0.023), (0.1, 0.02), (0.07, 0.017)):
            end_c = c + spread * length
            breakable = length > 0.08  # distal phalanges are too small at demo resolution
            bones.append(_Bone((row, c), (row - length, end_c), radius, radius * 0.85, breakable))
            row, c = row - length - 0.02, end_c
    blobs.append(_Blob((0.35, 0.0), 0.06, 0.16))  # carpal row
    return bones, blobs


def _wrist(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    bones = [
        _Bone((0.46, -0.07), (0.12, -0.1), 0.05, 0.075),  # distal radius
        _Bone((0.46, 0.11), (0.14, 0.11), 0.03, 0.036),  # distal ulna
        _Bone((-0.16, -0.15), (-0.46, -0.2), 0.025, 0.02),
        _Bone((-0.16, -0.04), (-0.46, -0.05), 0.025, 0.02),
        _Bone((-0.16, 0.06), (-0.46, 0.08), 0.025, 0.02),
        _Bone((-0.16, 0.15), (-0.46, 0.2), 0.023, 0.019),
    ]
    blobs = []
    for row in (0.04, -0.08):
        for col in np.linspace(-0.15, 0.15, 4):
            size = rng.uniform(0.035, 0.045)
            blobs.append(_Blob((row + rng.uniform(-0.01, 0.01), col), size, size * 0.8))
    return bones, blobs


def _elbow(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    bend = np.deg2rad(rng.uniform(35, 80))
    direction = (np.cos(bend), np.sin(bend))
    bones = [_Bone((-0.45, -0.05), (-0.02, -0.05), 0.05, 0.06)]
    blobs = [_Blob((0.0, -0.05), 0.06, 0.12)]  # condyles
    for offset, radius in ((-0.065, 0.03), (0.065, 0.026)):
        start = (0.1 + offset * direction[1], -0.05 + offset * direction[0] * -1 + 0.02)
        end = (start[0] + 0.42 * direction[0], start[1] + 0.42 * direction[1])
        bones.append(_Bone(start, end, radius * 1.2, radius))
    return bones, blobs


def _shoulder(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    head = (-0.05, 0.08)
    bones = [
        _Bone((0.05, 0.12), (0.48, 0.16), 0.05, 0.045),  # proximal humeral shaft
        _Bone((-0.32, -0.4), (-0.36, 0.3), 0.03, 0.032),  # clavicle
    ]
    blobs = [_Blob(head, 0.12, 0.12)]
    # Glenoid / scapular arc: short capsules along a circle left of the head.
    angles = np.linspace(np.deg2rad(110), np.deg2rad(250), 6)
    points = [(head[0] - 0.0 + 0.2 * np.sin(a), head[1] + 0.2 * np.cos(a)) for a in angles]
    for p, q in itertools.pairwise(points):
        bones.append(_Bone(p, q, 0.028, 0.028, breakable=False))
    bones.append(_Bone((0.1, -0.25), (0.45, -0.35), 0.03, 0.02, breakable=False))  # scapula
    return bones, blobs


#: A body part's canonical layout of bones and blobs, drawn from the generator.
_Layout = Callable[[np.random.Generator], tuple[list[_Bone], list[_Blob]]]

_LAYOUTS: dict[str, _Layout] = {
    "elbow": _elbow,
    "finger": _finger,
    "forearm": _forearm,
    "hand": _hand,
    "humerus": _humerus,
    "shoulder": _shoulder,
    "wrist": _wrist,
}


# Body parts outside the intended use, never used in training: the pixel gate's held-out
# out-of-distribution set (models.training.ood_set) draws them.


def _knee(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    gap = rng.uniform(0.03, 0.05)
    bones = [
        _Bone((-0.48, 0.0), (-0.08, 0.0), 0.085, 0.1),  # femur
        _Bone((gap, -0.02), (0.48, -0.02), 0.1, 0.075),  # tibia
        _Bone((gap + 0.06, 0.15), (0.48, 0.13), 0.03, 0.025),  # fibula
    ]
    blobs = [
        _Blob((-0.06, 0.0), 0.08, 0.17),  # femoral condyles
        _Blob((gap + 0.03, -0.02), 0.05, 0.17),  # tibial plateau
        _Blob((-0.1, -0.17), 0.09, 0.05),  # patella
    ]
    return bones, blobs


def _spine(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    height = rng.uniform(0.085, 0.1)
    blobs = []
    for row in np.arange(-0.45, 0.46, height + 0.03):
        blobs.append(_Blob((float(row), 0.0), height / 2, rng.uniform(0.11, 0.13)))
        for side in (-1, 1):  # transverse processes
            blobs.append(_Blob((float(row), side * 0.17), 0.018, 0.06))
    return [], blobs


def _pelvis(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    blobs = [_Blob((-0.22, side * 0.26), 0.17, 0.13, side * 0.4) for side in (-1, 1)]  # ilia
    blobs.append(_Blob((-0.2, 0.0), 0.14, 0.07))  # sacrum
    bones = []
    for side in (-1, 1):
        blobs.append(_Blob((0.08, side * 0.3), 0.07, 0.07))  # femoral head
        bones.append(_Bone((0.1, side * 0.34), (0.48, side * 0.4), 0.06, 0.055))  # femur
        bones.append(_Bone((0.05, side * 0.2), (0.22, side * 0.05), 0.025, 0.025))  # pubis
    return bones, blobs


def _foot(rng: np.random.Generator) -> tuple[list[_Bone], list[_Blob]]:
    bones = [_Bone((0.4, -0.3), (0.1, -0.1), 0.08, 0.06, breakable=False)]  # calcaneus
    blobs = [_Blob((0.05, -0.02), 0.08, 0.07), _Blob((-0.02, 0.1), 0.06, 0.05)]  # tarsals
    for k, col in enumerate(np.linspace(-0.05, 0.25, 5)):
        start = (-0.05 - 0.02 * k, float(col))
        end = (-0.35, float(col) + 0.05 * k - 0.05)
        bones.append(_Bone(start, end, 0.026, 0.02))  # metatarsals
    return bones, blobs


#: The held-out body parts a bundle of the upper extremity must not assess.
OTHER_BODY_PARTS: dict[str, _Layout] = {
    "knee": _knee,
    "spine": _spine,
    "pelvis": _pelvis,
    "foot": _foot,
}


# ----------------------------------------------------------------------------- drawing


class _Canvas:
    def __init__(self, size: int) -> None:
        self.size = size
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        self.rows, self.cols = np.meshgrid(coords, coords, indexing="ij")
        self.pixel = 1.0 / size

    def capsule(
        self, bone: _Bone, shift: tuple[float, float] = (0.0, 0.0)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (bone intensity, unit distance-to-edge mask) of a tapered capsule."""
        p0 = np.array(bone.p0, dtype=np.float32) + shift
        p1 = np.array(bone.p1, dtype=np.float32) + shift
        axis = p1 - p0
        length2 = float(axis @ axis) + 1e-12
        t = ((self.rows - p0[0]) * axis[0] + (self.cols - p0[1]) * axis[1]) / length2
        t = np.clip(t, 0.0, 1.0)
        dr, dc = self.rows - (p0[0] + t * axis[0]), self.cols - (p0[1] + t * axis[1])
        dist = np.sqrt(dr * dr + dc * dc)
        radius = bone.r0 + (bone.r1 - bone.r0) * t
        return _bone_profile(dist, radius, self.pixel), dist / radius

    def blob(self, blob: _Blob) -> np.ndarray:
        cos, sin = np.cos(blob.angle), np.sin(blob.angle)
        dr, dc = self.rows - blob.c[0], self.cols - blob.c[1]
        u, v = dr * cos + dc * sin, -dr * sin + dc * cos
        rho = np.sqrt((u / blob.a) ** 2 + (v / blob.b) ** 2)
        radius = min(blob.a, blob.b)
        return _bone_profile(rho * radius, np.float32(radius), self.pixel)


def _bone_profile(dist: np.ndarray, radius: np.ndarray, pixel: float) -> np.ndarray:
    # Bright cortex rim over a less dense medulla, with a one-pixel antialiased edge.
    u = np.clip(dist / radius, 0.0, 1.0)
    density = 0.55 + 0.4 * u**6
    edge = np.clip((radius - dist) / (1.5 * pixel), 0.0, 1.0)
    return (density * edge).astype(np.float32)


def _transform(
    bones: list[_Bone], blobs: list[_Blob], rng: np.random.Generator, flip: bool
) -> tuple[list[_Bone], list[_Blob]]:
    angle = rng.uniform(-np.pi / 7, np.pi / 7)
    scale = rng.uniform(0.85, 1.1)
    offset = rng.uniform(-0.04, 0.04, size=2)
    cos, sin = np.cos(angle), np.sin(angle)

    def point(p: tuple[float, float]) -> tuple[float, float]:
        row, col = p[0], -p[1] if flip else p[1]
        return (
            float(scale * (cos * row - sin * col) + offset[0]),
            float(scale * (sin * row + cos * col) + offset[1]),
        )

    new_bones = [
        _Bone(point(b.p0), point(b.p1), b.r0 * scale, b.r1 * scale, b.breakable) for b in bones
    ]
    new_blobs = [
        _Blob(point(b.c), b.a * scale, b.b * scale, (-b.angle if flip else b.angle) + angle)
        for b in blobs
    ]
    return new_bones, new_blobs


def _soft_tissue(canvas: _Canvas, bones: list[_Bone], rng: np.random.Generator) -> np.ndarray:
    tissue = np.zeros((canvas.size, canvas.size), dtype=np.float32)
    pad = rng.uniform(0.06, 0.1)
    for bone in bones:
        fat = _Bone(bone.p0, bone.p1, bone.r0 + pad, bone.r1 + pad)
        _, rel = canvas.capsule(fat)
        tissue = np.maximum(tissue, np.clip((1.0 - rel) * 4.0, 0.0, 1.0))
    return tissue


def _draw_bones(
    canvas: _Canvas,
    bones: list[_Bone],
    blobs: list[_Blob],
    broken: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    density = np.zeros((canvas.size, canvas.size), dtype=np.float32)
    for blob in blobs:
        density = np.maximum(density, canvas.blob(blob))
    box, gap = None, None
    for index, bone in enumerate(bones):
        if index != broken:
            density = np.maximum(density, canvas.capsule(bone)[0])
            continue
        layer, box, gap = _broken_bone(canvas, bone, rng)
        density = np.maximum(density, layer)
    if gap is not None:
        # Cut the gap through overlapping bones too, so a labelled break is always visible.
        density = np.where(gap, 0.0, density).astype(np.float32)
    return density, box


#: Break centres stay within this distance of the image centre (unit coordinates).
_BREAK_LIMIT = 0.4


def _inside(bone: _Bone) -> bool:
    middle = (np.array(bone.p0) + np.array(bone.p1)) / 2.0
    return bool(np.all(np.abs(middle) < _BREAK_LIMIT))


def _broken_bone(
    canvas: _Canvas, bone: _Bone, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    p0, p1 = np.array(bone.p0), np.array(bone.p1)
    axis = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-12)
    across = np.array([-axis[1], axis[0]])
    t = rng.uniform(0.3, 0.7)
    for _ in range(20):  # keep the break well inside the image
        centre = p0 + t * (p1 - p0)
        if np.all(np.abs(centre) < _BREAK_LIMIT):
            break
        t = rng.uniform(0.2, 0.8)
    # The fracture line is oblique to the shaft: its normal is the axis turned by up to 35°.
    tilt = rng.uniform(-np.deg2rad(35), np.deg2rad(35))
    normal = np.cos(tilt) * axis + np.sin(tilt) * across
    radius = bone.r0 + (bone.r1 - bone.r0) * t
    gap = max(rng.uniform(0.02, 0.028), 2.5 * canvas.pixel)
    # Displace the distal fragment sideways by a visible amount, also on thin bones.
    sideways = max(rng.uniform(0.2, 0.45) * radius, 0.015, 2.0 * canvas.pixel)
    shift = across * sideways * rng.choice([-1.0, 1.0]) + axis * gap * 0.5

    side = (canvas.rows - centre[0]) * normal[0] + (canvas.cols - centre[1]) * normal[1]
    proximal, rel = canvas.capsule(bone)
    distal, _ = canvas.capsule(bone, shift=(float(shift[0]), float(shift[1])))
    shifted_side = side - float(shift @ normal)
    layer = np.where(side < -gap / 2, proximal, 0.0)
    layer = np.maximum(layer, np.where(shifted_side > gap / 2, distal, 0.0)).astype(np.float32)

    near = (np.abs(side) < gap + 2 * canvas.pixel) & (rel < 1.3)
    rows, cols = np.nonzero(near)
    last = canvas.size - 1
    box = (
        int(max(rows.min() - 1, 0)),
        int(max(cols.min() - 1, 0)),
        int(min(rows.max() + 1, last)),
        int(min(cols.max() + 1, last)),
    )
    gap_mask = (np.abs(side) < gap / 2) & (rel < 1.0)
    return layer, box, gap_mask


def _smooth_field(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    coarse = torch.as_tensor(rng.standard_normal((1, 1, cells, cells)), dtype=torch.float32)
    field_ = functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return field_[0, 0].numpy()


def _unsupported(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 4)
    size = canvas.size
    if kind == 0:  # chest-like: spine column and curved ribs on both sides
        image = 0.08 + 0.1 * np.exp(-((canvas.cols / 0.35) ** 2))
        image = image.astype(np.float32)
        spine, _ = canvas.capsule(_Bone((-0.5, 0.0), (0.5, 0.0), 0.05, 0.05))
        image = np.maximum(image, 0.7 * spine)
        spacing = rng.uniform(0.07, 0.09)
        for row in np.arange(-0.42, 0.42, spacing):
            curve = row + 0.25 * (canvas.cols**2) - 0.03
            band = np.abs(canvas.rows - curve) < 0.012
            lung = (np.abs(canvas.cols) > 0.06) & (np.abs(canvas.cols) < 0.42)
            image = np.where(band & lung, np.maximum(image, 0.5), image)
        return image.astype(np.float32)
    if kind == 1:  # noise
        return rng.uniform(0.0, 1.0, (size, size)).astype(np.float32)
    if kind == 2:  # smooth gradients
        return _smooth_field(rng, size, cells=int(rng.integers(2, 6))) * 0.2 + 0.4
    return np.full((size, size), rng.uniform(0.02, 0.6), dtype=np.float32)  # blank exposure


def render_phantom(
    region: str, fracture: bool, rng: np.random.Generator, size: int = 256
) -> Phantom:
    """Render one synthetic radiograph.

    Parameters
    ----------
    region
        One of :data:`config.REGION_CLASSES`; ``"unsupported"`` draws a non-extremity image.
    fracture
        Draw a cortical break on a random bone (only for supported regions).
    rng
        Source of randomness; the same generator state gives the same phantom.
    size
        Side of the square image in pixels.

    Returns
    -------
    Phantom
        Image float32 (size, size) in [0, 1] with bone bright, plus labels and break box.

    Raises
    ------
    ValueError
        For an unknown region, a fracture on an unsupported phantom, or size < 32.
    """
    if region not in REGION_CLASSES:
        raise ValueError(f"unknown region {region!r}; expected one of {REGION_CLASSES}")
    if region == UNSUPPORTED and fracture:
        raise ValueError("an 'unsupported' phantom cannot carry a fracture")
    if size < 32:
        raise ValueError(f"phantom size {size} is too small; need at least 32")
    canvas = _Canvas(size)
    flip = bool(rng.integers(0, 2))
    if region == UNSUPPORTED:
        image = _exposure(_unsupported(canvas, rng), rng)
        return Phantom(image, region, False, None, "L" if flip else "R")
    bones, blobs = _transform(*_LAYOUTS[region](rng), rng, flip)
    broken = None
    if fracture:
        candidates = [i for i, b in enumerate(bones) if b.breakable and _inside(b)]
        candidates = candidates or [i for i, b in enumerate(bones) if b.breakable]
        broken = int(rng.choice(candidates))
    image, box = _radiograph(canvas, (bones, blobs), broken, rng)
    return Phantom(_exposure(image, rng), region, bool(fracture), box, "L" if flip else "R")


def render_other_body_part(kind: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A synthetic radiograph of a body part outside the intended use (never trained on).

    Raises
    ------
    ValueError
        For a kind not in :data:`OTHER_BODY_PARTS`.
    """
    if kind not in OTHER_BODY_PARTS:
        raise ValueError(f"unknown body part {kind!r}; expected one of {sorted(OTHER_BODY_PARTS)}")
    canvas = _Canvas(size)
    anatomy = _transform(*OTHER_BODY_PARTS[kind](rng), rng, bool(rng.integers(0, 2)))
    image, _box = _radiograph(canvas, anatomy, None, rng)
    return _exposure(image, rng)


def _radiograph(
    canvas: _Canvas,
    anatomy: tuple[list[_Bone], list[_Blob]],
    broken: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Bones over soft tissue and a smooth background; the break's box if one is drawn."""
    bones, blobs = anatomy
    density, box = _draw_bones(canvas, bones, blobs, broken, rng)
    tissue = _soft_tissue(canvas, bones, rng)
    background = rng.uniform(0.02, 0.08)
    image = background + rng.uniform(0.15, 0.25) * tissue
    image = np.maximum(image, density * rng.uniform(0.75, 1.0))
    return image + 0.03 * _smooth_field(rng, canvas.size), box


def _exposure(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random gain, offset and noise level, as exposures and detectors vary."""
    size = image.shape[0]
    gain, offset = rng.uniform(0.85, 1.1), rng.uniform(-0.04, 0.04)
    image = gain * image + offset + rng.normal(0.0, rng.uniform(0.005, 0.025), (size, size))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@dataclass
class PhantomSplit:
    """Preprocessed phantoms with labels (boxes in model-input pixels)."""

    images: torch.Tensor
    regions: np.ndarray
    fractures: np.ndarray
    boxes: list[tuple[float, float, float, float] | None]


def make_split(
    rng: np.random.Generator, per_class: int, size: int, render_size: int | None = None
) -> PhantomSplit:
    """Render ``per_class`` phantoms per class of REGION_CLASSES (half fractured), preprocessed.

    Parameters
    ----------
    rng
        Random generator.
    per_class
        Images per class.
    size
        Model input size.
    render_size
        Phantom size before preprocessing (default ``size``).
    """
    images, regions, fractures, boxes = [], [], [], []
    for label, region in enumerate(REGION_CLASSES):
        for k in range(per_class):
            fracture = region != UNSUPPORTED and k % 2 == 1
            phantom = render_phantom(region, fracture, rng, size=render_size or size)
            image, geometry = preprocess(phantom.image, size)
            images.append(image)
            regions.append(label)
            fractures.append(int(fracture))
            box = phantom.break_box
            boxes.append(geometry.box_to_model(*box) if box is not None else None)
    return PhantomSplit(
        torch.as_tensor(np.stack(images)),
        np.asarray(regions),
        np.asarray(fractures),
        boxes,
    )


# ----------------------------------------------------------------------------- DICOM


def _resize(image: np.ndarray, rows: int) -> np.ndarray:
    tensor = torch.as_tensor(image, dtype=torch.float32)[None, None]
    out = functional.interpolate(tensor, size=(rows, rows), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def phantom_dataset(
    phantom: Phantom,
    *,
    patient_name: str,
    patient_id: str,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    accession_number: str,
    instance_number: int,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rows: int | None = None,
    study_datetime: datetime | None = None,
    view_position: str = "PA",
) -> pydicom.Dataset:
    """Wrap a phantom in a DX Image Storage - For Presentation instance.

    Parameters
    ----------
    phantom
        The phantom to encode.
    patient_name, patient_id, accession_number
        Fictional identifiers.
    study_instance_uid, series_instance_uid, sop_instance_uid
        UIDs of the instance.
    instance_number
        Instance Number.
    photometric
        ``"MONOCHROME2"`` or ``"MONOCHROME1"`` (stored values inverted).
    bits_stored
        Bits Stored, 8 to 16 (unsigned, 16 bits allocated).
    rows
        Resample the square image to rows x rows pixels; None keeps the phantom size.
    study_datetime
        Study date and time; defaults to 2024-01-15 10:30.
    view_position
        DX View Position (e.g. ``"PA"``, ``"LL"``).

    Returns
    -------
    pydicom.Dataset
        A FileDataset-ready dataset with explicit VR little endian file meta.
    """
    ds = Dataset()
    ds.file_meta = _file_meta(sop_instance_uid)
    when = study_datetime or datetime(2024, 1, 15, 10, 30, 0)
    body_part = _anatomy(phantom.region)[0]
    _identify(ds, sop_instance_uid, when, accession_number, body_part, view_position)
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate, ds.PatientSex = PHANTOM_BIRTH_DATE, "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_instance_uid, series_instance_uid
    ds.InstanceNumber = int(instance_number)
    _describe_anatomy(ds, phantom)
    image = phantom.image if rows is None else _resize(phantom.image, int(rows))
    _encode_pixels(ds, image, photometric, bits_stored, phantom.image.shape[0])
    return ds


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _identify(
    ds: Dataset,
    sop_instance_uid: str,
    when: datetime,
    accession_number: str,
    body_part: str,
    view_position: str,
) -> None:
    """SOP Common, dates and times, equipment, descriptions and numbers of a DX phantom."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession_number
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "fracture-triage phantoms"
    ds.InstitutionName = "Phantom Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"XR {body_part} (synthetic phantom)"
    ds.SeriesDescription = f"{body_part} {view_position}"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.StudyID = accession_number[-16:] or "1"
    ds.SeriesNumber = 1


def _describe_anatomy(ds: Dataset, phantom: Phantom) -> None:
    """Orientation, laterality and the SNOMED CT anatomic region of the phantom's region."""
    _, code, meaning = _anatomy(phantom.region)
    ds.PatientOrientation = ["A", "F"] if phantom.region == UNSUPPORTED else ["L", "F"]
    ds.Laterality = ""
    ds.ImageLaterality = "U" if phantom.region == UNSUPPORTED else phantom.laterality
    region_item = Dataset()
    region_item.CodeValue = code
    region_item.CodingSchemeDesignator = "SCT"
    region_item.CodeMeaning = meaning
    ds.AnatomicRegionSequence = Sequence([region_item])


def _encode_pixels(
    ds: Dataset, image: np.ndarray, photometric: str, bits_stored: int, phantom_rows: int
) -> None:
    """Stored values, the window that maps them back, pixel spacing and the Image Pixel module."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric {photometric!r} is not MONOCHROME1 or MONOCHROME2")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored {bits_stored} is outside 8..16")
    max_value = 2**bits_stored - 1
    # Use most of the range but not all of it, as a detector would; the window maps it back.
    low, high = 0.05 * max_value, 0.9 * max_value
    stored = np.round(low + np.clip(image, 0.0, 1.0) * (high - low))
    if photometric == "MONOCHROME1":
        stored = max_value - stored
    pixels = stored.astype(np.uint16)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelIntensityRelationship = "LOG"
    # +1: low values = less X-ray intensity (bone dark in stored values, as in MONOCHROME1).
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    pixel_mm = 0.15 * (phantom_rows / pixels.shape[0])
    ds.ImagerPixelSpacing = [f"{pixel_mm:.4f}", f"{pixel_mm:.4f}"]
    ds.PixelSpacing = [f"{pixel_mm:.4f}", f"{pixel_mm:.4f}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.WindowCenter = f"{(low + high) / 2:.1f}"
    ds.WindowWidth = f"{high - low:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def seeded_uids(seed: int) -> Callable[[], str]:
    """A source of UIDs that repeats for the same ``seed`` (pydicom's generate_uid, seeded)."""
    entropy = random.Random(seed)

    def uid() -> str:
        return generate_uid(entropy_srcs=[str(entropy.getrandbits(128))])

    return uid


_SAMPLE_STUDIES: tuple[tuple[str, str, tuple[bool, ...]], ...] = (
    # (region, fictional patient, fracture per view)
    ("wrist", "Phantom^Wanda", (True, True)),
    ("hand", "Phantom^Henry", (False, False)),
    ("elbow", "Phantom^Elena", (True, True)),
    (UNSUPPORTED, "Phantom^Charles", (False,)),
)


def write_sample_studies(out_dir: Path, seed: int = 7) -> list[Path]:
    """Write a few synthetic DX studies as DICOM files under ``out_dir/<study_uid>/``.

    A wrist with a fracture (PA and lateral), a hand without, an elbow with a fracture
    and an 'unsupported' chest-like study. Names are fictional; UIDs are derived from
    ``seed`` so the same seed gives the same files.

    Parameters
    ----------
    out_dir
        Directory to create the studies in.
    seed
        Seed for the phantoms and the UIDs.

    Returns
    -------
    list of pathlib.Path
        The study directories, one per study.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    uid = seeded_uids(seed)
    study_dirs = []
    for index, (region, patient, fractures) in enumerate(_SAMPLE_STUDIES):
        study_uid, series_uid = uid(), uid()
        study_dir = out_dir / study_uid
        study_dir.mkdir(parents=True, exist_ok=True)
        for view, fracture in enumerate(fractures, start=1):
            phantom = render_phantom(region, fracture, rng, size=256)
            ds = phantom_dataset(
                phantom,
                patient_name=patient,
                patient_id=f"PHANTOM-{index + 1:03d}",
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                sop_instance_uid=uid(),
                accession_number=f"ACC{seed:03d}{index + 1:04d}",
                instance_number=view,
                photometric="MONOCHROME1" if index % 2 else "MONOCHROME2",
                rows=512,
                study_datetime=datetime(2024, 1, 15 + index, 9 + view, 0, 0),
                view_position="PA" if view == 1 else "LL",
            )
            path = study_dir / f"{view:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
        study_dirs.append(study_dir)
    logger.info("wrote %d sample studies to %s", len(study_dirs), out_dir)
    return study_dirs


__all__ = [
    "DX_FOR_PRESENTATION",
    "REGIONS",
    "Phantom",
    "PhantomSplit",
    "make_split",
    "phantom_dataset",
    "render_phantom",
    "seeded_uids",
    "write_sample_studies",
]
