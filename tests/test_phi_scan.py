"""The patient-data sweep itself: it must catch what it is there to catch."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from pathlib import Path

from tests.phi import BIRTH_DATES, find_patient_data, log_scanner, scan_files


def test_log_records_are_scanned_after_prefect_configures_logging() -> None:
    # Prefect's logging setup replaces the root logger's handlers (a handler-based scan
    # went blind there); the scan must still see every record.
    from prefect.logging.configuration import setup_logging

    import flows.triage.flow  # noqa: F401  (imports Prefect)

    setup_logging()
    canary = "Canary^Carl"
    with log_scanner.watching(canary) as watch:
        logging.getLogger("flows.triage.flow").warning("study of %s", canary)
        try:
            raise ValueError(f"bad value {canary}")
        except ValueError:
            logging.getLogger("dicom_node.receive.scp").exception("refused")
    assert len(watch.caught) == 2, watch.caught


def test_values_and_birth_dates_are_found_but_not_inside_uids_or_numbers() -> None:
    date = BIRTH_DATES[0]
    assert find_patient_data(f"name Doe^Jane born {date}") == sorted(["Doe^Jane", date])
    assert find_patient_data(f"1.2.826.0.1.3680043.8.498.{date}123 p=0.{date}") == []
    assert find_patient_data("accession ACC0000003, id PHANTOM-004") == ["ACC0000", "PHANTOM-00"]


def test_files_of_other_processes_are_scanned() -> None:
    # Outside pytest's temporary folders, which the session's own sweep scans.
    with tempfile.TemporaryDirectory() as directory:
        _check_scan(Path(directory))


def _check_scan(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    (clean / "worker").mkdir(parents=True)
    (clean / "worker" / "worker.log").write_text("study 1.2.3 triaged\n")
    (clean / "store" / "1.2.3").mkdir(parents=True)
    (clean / "store" / "1.2.3" / "1.dcm").write_bytes(b"Doe^Jane")  # DICOM: where it belongs
    assert scan_files([clean]) == []

    leaky = tmp_path / "leaky"
    (leaky / "node").mkdir(parents=True)
    (leaky / "node" / "node.log").write_text("stored instance of PID-0042\n")
    (leaky / "prefect-server").mkdir()
    (leaky / "prefect-server" / "prefect.db").write_bytes(b"\x00flow_run_name=Phantom^Wanda")
    audit = sqlite3.connect(leaky / "audit.db")
    audit.execute("CREATE TABLE audit_events (id INTEGER, reason TEXT)")
    audit.execute("INSERT INTO audit_events VALUES (1, 'cannot decode ACC123')")
    audit.commit()
    audit.close()

    leaks = scan_files([leaky])
    assert len(leaks) == 3, leaks
    assert any("node.log" in leak and "PID-0042" in leak for leak in leaks)
    assert any("prefect.db" in leak and "Phantom^Wanda" in leak for leak in leaks)
    assert any(leak.startswith("audit event") and "ACC123" in leak for leak in leaks)
