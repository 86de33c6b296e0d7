"""Mutated DICOM data sets for fuzzing the SCP's store handler and the preprocessing path.

One harness for the CI-sized tests (``tests/dicom_node/test_fuzz_store.py``,
``tests/models/test_fuzz_preprocessing.py``) and the benchmark run
(``benchmarks/fuzz.py``): the same seeds, the same :func:`cases` strategy, the same
checks, only the number of cases differs.

Seeds are real data sets: a DX as the modalities send it, pydicom's MR (implicit VR),
RLE and JPEG 2000 test files and an RT plan (nested sequences). A case takes one seed,
gives it a fresh SOP Instance UID (same length, so every offset stays valid), and
applies one to four mutations: bit flips, truncation, a wrong VR, a wrong or huge
declared length, inserted, deleted or repeated bytes, a deeply nested sequence, or a
presentation context whose transfer syntax does not match the bytes.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from db.audit import AuditEventType
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import AuditEvent, Instance
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from dicom_node.store import InstanceStore
from tests.dicom_node.conftest import make_dx

#: Every seed's SOP Instance UID is this long; a case substitutes a fresh one of equal length.
UID_LENGTH = 44
UID_ROOT = "1.2.826.0.1.3680043.10.4242."
FAILURE_STATUSES = frozenset(
    {OUT_OF_RESOURCES, DATASET_DOES_NOT_MATCH_SOP_CLASS, CANNOT_UNDERSTAND}
)
#: Refusal reasons that mean the node's own code failed, not the input.
INTERNAL_REASONS = frozenset({"internal error"})
#: Explicit VRs with a 4-byte length (and 2 reserved bytes) in the element header.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"})
LONG_VRS |= {b"UR", b"UT", b"UV"}
SOME_VRS = (b"AE", b"CS", b"DS", b"FD", b"IS", b"OB", b"OW", b"SQ", b"UI", b"UL", b"UN", b"US")
SOME_VRS += (b"UT", b"ZZ", b"\x00\x00")
HUGE_LENGTHS = (0, 1, 3, 0xFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 2**31)


def _fixed_length_uid(number: int) -> str:
    uid = UID_ROOT + "1" + str(number).zfill(UID_LENGTH - len(UID_ROOT) - 1)
    assert len(uid) == UID_LENGTH
    return uid


@dataclass(frozen=True)
class Seed:
    """A real data set as a C-STORE brings it: the encoded data set (no File Meta)."""

    name: str
    body: bytes
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str  # UID_LENGTH characters, substituted per case
    explicit: bool
    #: Offsets of the top-level element headers (tag first).
    elements: tuple[int, ...]


def _encode(ds: Dataset, transfer_syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


def _element_offsets(body: bytes, explicit: bool) -> tuple[int, ...]:
    """Top-level element headers, up to the first one of undefined length."""
    offsets, at = [], 0
    while at + 8 <= len(body):
        offsets.append(at)
        if explicit:
            vr = body[at + 4 : at + 6]
            if vr in LONG_VRS:
                (length,) = struct.unpack_from("<I", body, at + 8)
                at += 12
            else:
                (length,) = struct.unpack_from("<H", body, at + 6)
                at += 8
        else:
            (length,) = struct.unpack_from("<I", body, at + 4)
            at += 8
        if length == 0xFFFFFFFF:
            break
        at += length
    return tuple(offsets)


def _seed(name: str, ds: Dataset, transfer_syntax: str, number: int) -> Seed:
    ds = ds.copy()
    ds.SOPInstanceUID = _fixed_length_uid(number)
    body = _encode(ds, transfer_syntax)
    explicit = transfer_syntax != ImplicitVRLittleEndian
    return Seed(
        name,
        body,
        transfer_syntax,
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        explicit,
        _element_offsets(body, explicit),
    )


def _testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's test file {name} is missing"
    return dcmread(path)


def load_seeds() -> list[Seed]:
    """The seed corpus: real, valid data sets the SCP stores as they are."""
    dx = make_dx(
        study_instance_uid="1.2.826.0.1.3680043.10.4242.1",
        series_instance_uid="1.2.826.0.1.3680043.10.4242.1.1",
        sop_instance_uid=_fixed_length_uid(0),
        rows=64,
        columns=64,
    )
    seeds = [
        _seed("dx-explicit", dx, ExplicitVRLittleEndian, 1),
        _seed("dx-implicit", dx, ImplicitVRLittleEndian, 2),
        _seed("mr-implicit", _testdata("MR_small_implicit.dcm"), ImplicitVRLittleEndian, 3),
        _seed("mr-rle", _testdata("MR_small_RLE.dcm"), RLELossless, 4),
        _seed("mr-j2k", _testdata("MR_small_jp2klossless.dcm"), JPEG2000Lossless, 5),
        _seed("rtplan-nested", _testdata("rtplan.dcm"), ImplicitVRLittleEndian, 6),
    ]
    return seeds


# -- mutations -----------------------------------------------------------------------------

Mutation = Callable[[bytes, Seed], bytes]


@dataclass(frozen=True)
class FlipBits:
    positions: tuple[int, ...]

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        if not data:
            return data
        out = bytearray(data)
        for position in self.positions:
            out[(position // 8) % len(out)] ^= 1 << (position % 8)
        return bytes(out)


@dataclass(frozen=True)
class Truncate:
    fraction: float

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        return data[: int(len(data) * self.fraction)]


@dataclass(frozen=True)
class WrongVR:
    element: int
    vr: bytes

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        at = seed.elements[self.element % len(seed.elements)] + 4
        if not seed.explicit or at + 2 > len(data):
            return data
        return data[:at] + self.vr + data[at + 2 :]


@dataclass(frozen=True)
class WrongLength:
    element: int
    length: int

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        at = seed.elements[self.element % len(seed.elements)]
        if seed.explicit and data[at + 4 : at + 6] not in LONG_VRS:
            field_at, encoded = at + 6, struct.pack("<H", self.length & 0xFFFF)
        elif seed.explicit:
            field_at, encoded = at + 8, struct.pack("<I", self.length)
        else:
            field_at, encoded = at + 4, struct.pack("<I", self.length)
        if field_at + len(encoded) > len(data):
            return data
        return data[:field_at] + encoded + data[field_at + len(encoded) :]


@dataclass(frozen=True)
class Splice:
    """Insert ``payload`` at ``at``, after deleting ``delete`` bytes there."""

    at: int
    delete: int
    payload: bytes

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        at = self.at % (len(data) + 1)
        return data[:at] + self.payload + data[at + self.delete :]


@dataclass(frozen=True)
class Repeat:
    """Repeat a span of the data set, e.g. an element appearing twice."""

    at: int
    length: int
    times: int

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        at = self.at % (len(data) + 1)
        span = data[at : at + self.length]
        return data[:at] + span * self.times + data[at:]


@dataclass(frozen=True)
class NestedSequence:
    """Append a private sequence nested ``depth`` deep (undefined lengths, optionally
    without its closing delimiters)."""

    depth: int
    close: bool

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        tag = struct.pack("<HH", 0x0099, 0x1010)
        if seed.explicit:
            opening = tag + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
        else:
            opening = tag + b"\xff\xff\xff\xff"
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        nested = (opening + item) * self.depth
        if self.close:
            nested += (item_end + sequence_end) * self.depth
        # Private group 0x0099 sorts after everything but Pixel Data's group 0x7FE0;
        # appended at the end, so the data set's order is broken too.
        return data + nested


@dataclass(frozen=True)
class WrongTransferSyntax:
    """The presentation context claims another transfer syntax than the bytes use."""

    transfer_syntax: str

    def __call__(self, data: bytes, seed: Seed) -> bytes:
        return data  # applied by Case.transfer_syntax


def mutations() -> st.SearchStrategy[Mutation]:
    """One mutation of any kind."""
    index = st.integers(min_value=0, max_value=2**16)
    return st.one_of(
        st.builds(FlipBits, st.lists(index, min_size=1, max_size=16).map(tuple)),
        st.builds(Truncate, st.floats(min_value=0.0, max_value=1.0)),
        st.builds(WrongVR, index, st.sampled_from(SOME_VRS)),
        st.builds(
            WrongLength,
            index,
            st.sampled_from(HUGE_LENGTHS) | st.integers(min_value=0, max_value=2**32 - 1),
        ),
        st.builds(Splice, index, st.integers(0, 64), st.binary(max_size=64)),
        st.builds(Repeat, index, st.integers(1, 256), st.integers(2, 8)),
        st.builds(NestedSequence, st.integers(1, 2000), st.booleans()),
        st.builds(
            WrongTransferSyntax,
            st.sampled_from(
                (
                    ExplicitVRLittleEndian,
                    ImplicitVRLittleEndian,
                    DeflatedExplicitVRLittleEndian,
                    RLELossless,
                    JPEG2000Lossless,
                )
            ),
        ),
    )


_numbers = itertools.count(1)


@dataclass(frozen=True)
class Case:
    """One mutated data set, as a C-STORE request would carry it."""

    seed: Seed
    mutations: tuple[Mutation, ...]
    sop_instance_uid: str = field(default_factory=lambda: _fixed_length_uid(10**6 + next(_numbers)))

    @property
    def transfer_syntax(self) -> str:
        chosen = [m.transfer_syntax for m in self.mutations if isinstance(m, WrongTransferSyntax)]
        return chosen[-1] if chosen else self.seed.transfer_syntax

    @property
    def sop_class_uid(self) -> str:
        return self.seed.sop_class_uid

    def dataset(self) -> bytes:
        data = self.seed.body.replace(
            self.seed.sop_instance_uid.encode(), self.sop_instance_uid.encode()
        )
        for mutation in self.mutations:
            data = mutation(data, self.seed)
        return data

    def part10(self) -> bytes:
        """The case as a file: preamble, File Meta (as the SCP would write it), data set."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class_uid
        meta.MediaStorageSOPInstanceUID = self.sop_instance_uid
        meta.TransferSyntaxUID = self.transfer_syntax
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        return fp.getvalue() + self.dataset()

    def describe(self) -> str:
        return f"{self.seed.name}: " + ", ".join(type(m).__name__ for m in self.mutations)


def cases(seeds: list[Seed]) -> st.SearchStrategy[Case]:
    """A seed with one to four mutations."""
    return st.builds(
        Case,
        st.sampled_from(seeds),
        st.lists(mutations(), min_size=1, max_size=4).map(tuple),
    )


# -- the store handler ------------------------------------------------------------------------


def store_event(case: Case, calling_ae: str = "FUZZER") -> Event:
    """The C-STORE event pynetdicom hands the SCP's handler, built from the case."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = case.sop_class_uid
    request.AffectedSOPInstanceUID = case.sop_instance_uid
    request.Priority = 0x0000
    request.DataSet = BytesIO(case.dataset())
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = case.sop_class_uid
    context.transfer_syntax = [case.transfer_syntax]
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title=calling_ae, address="127.0.0.1"))
    return Event(assoc, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})


@dataclass
class StoreOutcome:
    """What became of one case."""

    status: int
    seconds: float
    reason: str | None = None


@dataclass(frozen=True)
class StoreHarness:
    """The SCP with its own database and store, as the node wires them."""

    scp: StorageSCP
    sessions: sessionmaker[Session]
    store: InstanceStore

    def refused_count(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(_count(AuditEventType.INSTANCE_REFUSED)) or 0)

    def store_case(self, case: Case) -> StoreOutcome:
        """Run the case through the SCP's C-STORE handler and check what became of it."""
        before = self.refused_count()
        started = time.perf_counter()
        status = self.scp.handle_store(store_event(case))
        outcome = self.check(case, status, before)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def check(self, case: Case, status: int, before_refused: int) -> StoreOutcome:
        """Stored (Success, the exact bytes on disk, a row and an event) or refused (a
        failure status, one more ``instance_refused`` event, nothing on disk, no row)."""
        uid = case.sop_instance_uid
        with self.sessions() as session:
            row = session.scalar(select(Instance).where(Instance.sop_instance_uid == uid))
            refused = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.event_type == str(AuditEventType.INSTANCE_REFUSED))
                .order_by(AuditEvent.id.desc())
                .limit(1)
            ).first()
            refused_count = session.scalar(_count(AuditEventType.INSTANCE_REFUSED))
            stored_events = session.scalar(
                _count(AuditEventType.INSTANCE_STORED).where(AuditEvent.sop_instance_uid == uid)
            )
        if status == SUCCESS:
            assert row is not None, f"Success but no row: {case.describe()}"
            assert stored_events == 1, f"Success but no instance_stored: {case.describe()}"
            path = self.store.absolute(row.path)
            assert path.read_bytes().endswith(case.dataset()), case.describe()
            assert refused_count == before_refused, f"stored and refused: {case.describe()}"
            return StoreOutcome(status, 0.0)
        assert status in FAILURE_STATUSES, f"status 0x{status:04X} for {case.describe()}"
        assert row is None, f"refused but recorded: {case.describe()}"
        assert refused_count == before_refused + 1, f"refusal not audited: {case.describe()}"
        assert refused is not None
        reason = str(refused.detail.get("reason"))
        assert reason not in INTERNAL_REASONS, f"the node failed on {case.describe()}"
        assert not any(self.store.root.rglob(f"{uid}.dcm")), case.describe()
        return StoreOutcome(status, 0.0, reason)


def _count(kind: AuditEventType) -> Select[tuple[int]]:
    return select(func.count()).select_from(AuditEvent).where(AuditEvent.event_type == str(kind))


def make_store_harness(settings: Settings) -> StoreHarness:
    """The SCP on ``settings`` (database migrated), not listening: the handler is called."""
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    store = InstanceStore(settings.store_dir)
    return StoreHarness(StorageSCP(settings, sessions, store), sessions, store)


# -- the preprocessing path ------------------------------------------------------------------


def preprocess_case(path: Path, size: int = 64) -> tuple[str, float]:
    """Run a file through the loader the triage flow uses.

    Returns ``("ok", seconds)`` with a checked model input, or ``(exception type,
    seconds)`` for a file the flow reports as an unreadable view. Anything else
    (a crash, a hang, a non-finite or misshapen input) fails the caller.
    """
    from models.runtime.preprocessing import preprocess_dicom_file

    started = time.perf_counter()
    try:
        tensor, geometry = preprocess_dicom_file(path, size)
    except Exception as error:  # the flow's own contract: reported, the study goes on
        kind = type(error)
        name = (
            kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        )
        return name, time.perf_counter() - started
    seconds = time.perf_counter() - started
    assert tensor.shape == (1, size, size) and tensor.dtype == np.float32, tensor.shape
    assert np.all(np.isfinite(tensor)), "non-finite model input"
    assert geometry.source_rows >= 1 and geometry.source_cols >= 1
    return "ok", seconds


def write_case(case: Case, directory: Path) -> Path:
    path = directory / f"{case.sop_instance_uid}.dcm"
    path.write_bytes(case.part10())
    return path


def status_name(status: int) -> str:
    names = {
        SUCCESS: "stored",
        OUT_OF_RESOURCES: "refused 0xA700",
        DATASET_DOES_NOT_MATCH_SOP_CLASS: "refused 0xA900",
        CANNOT_UNDERSTAND: "refused 0xC000",
    }
    return names.get(status, f"0x{status:04X}")
