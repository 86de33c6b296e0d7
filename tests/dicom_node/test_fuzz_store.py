"""Fuzzing the storage SCP: mutated real data sets through the C-STORE handler.

Every case is either stored (Success, its exact bytes on disk, a row, an
``instance_stored`` event) or refused (a failure status, an ``instance_refused``
event with a reason that is not the node's own failure, nothing on disk); what is
stored is then read by the triage flow's loader, which either makes a finite model
input of it or reports the view unreadable. The same harness runs thousands of
cases in ``python -m benchmarks.fuzz``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from config import load_settings
from db.audit import verify_chain
from dicom_node.receive.scp import ACCEPTED_TRANSFER_SYNTAXES
from dicom_node.receive.statuses import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS, SUCCESS
from tests.fuzzing import (
    Case,
    StoreHarness,
    WrongLength,
    WrongVR,
    cases,
    load_seeds,
    make_store_harness,
    preprocess_case,
)

SEEDS = load_seeds()
#: A case that takes longer than this hangs (a 2-core machine shared with other work).
CASE_DEADLINE = dt.timedelta(seconds=20)
FUZZ = settings(
    deadline=CASE_DEADLINE,
    database=None,  # no example database left behind in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> StoreHarness:
    directory = tmp_path_factory.mktemp("fuzz-store")
    return make_store_harness(
        load_settings(
            None,
            port=0,
            store_dir=directory / "store",
            database_url=f"sqlite:///{directory / 'audit.db'}",
        )
    )


def test_every_seed_is_stored_as_it_is(harness: StoreHarness) -> None:
    """The oracle's baseline: unmutated seeds are stored and preprocessed or reported."""
    for seed in SEEDS:
        outcome = harness.store_case(Case(seed, ()))
        assert outcome.status == SUCCESS, (seed.name, outcome.reason)
    assert preprocess_case(_stored_path(harness, Case(SEEDS[0], ())))[0] == "ok"


def _stored_path(harness: StoreHarness, case: Case) -> Path:
    outcome = harness.store_case(case)
    assert outcome.status == SUCCESS
    return next(harness.store.root.rglob(f"{case.sop_instance_uid}.dcm"))


@settings(FUZZ, max_examples=250)
@given(case=cases(SEEDS))
def test_mutated_data_sets_are_stored_or_refused_and_audited(
    harness: StoreHarness, case: Case
) -> None:
    outcome = harness.store_case(case)
    if outcome.status == SUCCESS:
        stored = next(harness.store.root.rglob(f"{case.sop_instance_uid}.dcm"))
        result, _ = preprocess_case(stored)
        assert result  # "ok" or the error the flow reports for the view


def test_the_audit_chain_holds_after_fuzzing(harness: StoreHarness) -> None:
    with harness.sessions() as session:
        result = verify_chain(session)
    assert result.ok and result.checked > 0, result


# -- over a real association ------------------------------------------------------------------


@pytest.fixture(scope="module")
def listening(harness: StoreHarness) -> Iterator[int]:
    _, port = harness.scp.start()
    yield port
    harness.scp.stop()


def _send(port: int, path: Path, case: Case) -> int | None:
    """pynetdicom sends the file's bytes as they are (no decoding on our side)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FUZZER")
    for transfer_syntax in ACCEPTED_TRANSFER_SYNTAXES:  # one context each: any may be the case's
        ae.add_requested_context(case.sop_class_uid, transfer_syntax)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACTURE_TRIAGE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        if "Status" not in status:
            return None
        echo = assoc.send_c_echo() if assoc.is_established else None
        assert echo is not None and echo.get("Status") == SUCCESS, (
            f"the association did not survive {case.describe()}"
        )
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        if assoc.is_established:
            assoc.release()


@settings(FUZZ, max_examples=25)
@given(case=cases(SEEDS))
def test_mutated_data_sets_over_a_real_association(
    harness: StoreHarness, listening: int, case: Case, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.getbasetemp() / f"{case.sop_instance_uid}.dcm"
    path.write_bytes(case.part10())
    before = harness.refused_count()
    status = _send(listening, path, case)
    assert status is not None, f"no response for {case.describe()}"
    harness.check(case, status, before)


# -- found by the fuzzer ------------------------------------------------------------------------


def test_a_uid_that_swallows_the_patient_name_is_refused_without_logging_it(
    harness: StoreHarness, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """A wrong length on SOP Instance UID makes the following elements, Patient Name
    among them, part of its value. pydicom warned about the invalid UI value *with the
    value* (a warning and a log line): patient data in the node's logs. The node reads
    with pydicom's value validation off and checks UIDs itself, never echoing them."""
    case = Case(SEEDS[0], ())
    body = case.dataset()
    header = body.index(b"\x08\x00\x18\x00UI")  # (0008,0018) SOP Instance UID
    name_end = body.index(b"Doe^Jane") + len(b"Doe^Jane")
    length = name_end - (header + 8) + (name_end - header) % 2
    swallowed = Case(
        SEEDS[0], (WrongLength(SEEDS[0].elements.index(header), length),), case.sop_instance_uid
    )
    assert b"Doe^Jane" in swallowed.dataset()[header + 8 : header + 8 + length]
    caplog.set_level(logging.DEBUG)
    outcome = harness.store_case(swallowed)
    assert outcome.status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOPInstanceUID" in str(outcome.reason) and "Doe" not in str(outcome.reason)
    assert not [r for r in caplog.records if "Doe^Jane" in r.getMessage()]
    assert not [w for w in recwarn if "Doe^Jane" in str(w.message)]


def test_an_unknown_vr_in_a_uid_is_the_peers_error_not_the_nodes(harness: StoreHarness) -> None:
    """A flipped bit made SOP Class UID's VR 'UH'. pydicom decodes a value when it is
    first read, which the handler did outside its decoding guard: NotImplementedError,
    answered 0xA700 "internal error" (the peer retries for ever). Now 0xC000."""
    seed = SEEDS[0]
    header = seed.body.index(b"\x08\x00\x16\x00UI")  # (0008,0016) SOP Class UID
    case = Case(seed, (WrongVR(seed.elements.index(header), b"UH"),))
    outcome = harness.store_case(case)
    assert outcome.status == CANNOT_UNDERSTAND
    assert outcome.reason == "dataset cannot be decoded (NotImplementedError)"
