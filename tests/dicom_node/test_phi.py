"""Patient values never reach a log record, an error reason or the audit trail."""

from __future__ import annotations

import logging
import warnings

import pytest
from pydicom import Dataset

from dicom_node.phi import REDACTED, patient_values, scrub, scrub_quoted


def test_patient_values_and_scrub() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0042"
    ds.PatientBirthDate = "19310417"
    ds.AccessionNumber = "ACC123"
    values = patient_values([ds])
    assert {"Doe^Jane", "Doe", "Jane", "PID-0042", "19310417", "ACC123"} <= values
    text = "cannot use name Doe^Jane (PID-0042, ACC123) born 19310417 in 1.2.3.4"
    scrubbed = scrub(text, values)
    assert not any(value in scrubbed for value in values)
    assert "1.2.3.4" in scrubbed and REDACTED in scrubbed
    assert scrub("Janet and Doesburg stay", values) == "Janet and Doesburg stay"  # whole words


def test_quoted_values_are_scrubbed() -> None:
    assert scrub_quoted("Invalid value 'Doe' for VR PN") == f"Invalid value '{REDACTED}' for VR PN"
    assert scrub_quoted('value "Jane Doe" is unusual') == f"value '{REDACTED}' is unusual"


@pytest.mark.parametrize("logger_name", ["pydicom", "highdicom.sr", "py.warnings"])
def test_library_records_are_made_from_scrubbed_text(
    logger_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    import dicom_node  # noqa: F401  (installs the capture)

    caplog.set_level(logging.WARNING)
    if logger_name == "py.warnings":
        with warnings.catch_warnings():  # pytest records warnings itself: route them here
            logging.captureWarnings(False)  # whatever pytest installed is put back at exit
            logging.captureWarnings(True)
            warnings.simplefilter("always")
            warnings.warn("Value 'Wanda' is an unusual person name", UserWarning, stacklevel=1)
    else:
        logging.getLogger(logger_name).warning("Invalid value for VR PN: '%s'", "Wanda")
    (record,) = [r for r in caplog.records if r.name == logger_name]
    assert "Wanda" not in record.getMessage() and REDACTED in record.getMessage()
    logging.getLogger("flows").warning("study %s", "1.2.3")  # our own records as they are
    assert caplog.records[-1].getMessage() == "study 1.2.3"
