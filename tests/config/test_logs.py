"""config.logs: one record a line (plain or JSON), library loggers kept quiet."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from config import load_settings
from config.logs import OUR_PACKAGES, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the root handlers and the levels this test process had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = (*OUR_PACKAGES, "highdicom", "pynetdicom")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    logging.captureWarnings(False)


def _boom() -> None:
    raise ValueError("first line\nsecond line")


def test_plain_records_are_one_line_tracebacks_included(restore_logging: None) -> None:
    stream = io.StringIO()  # not a terminal: plain, not Rich
    configure_logging(load_settings(None), stream=stream)
    logger = logging.getLogger("flows.test")
    logger.info("study %s ready", "1.2.826.0.1.3680043.10.1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16")
    try:
        _boom()
    except ValueError:
        logger.exception("triage failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("1.2.826.0.1.3680043.10.1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16 ready")
    assert " INFO " in lines[0] and "flows.test: study" in lines[0]
    assert (
        "triage failed | Traceback" in lines[1]
        and "ValueError: first line | second line" in (lines[1])
    )


def test_json_lines_parse_and_carry_the_traceback(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(load_settings(None, log_format="json"), stream=stream)
    try:
        _boom()
    except ValueError:
        logging.getLogger("dicom_node.test").exception("refused %d", 3)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["logger"] == "dicom_node.test"
    assert record["message"] == "refused 3" and "ValueError" in record["exc_info"]
    assert record["time"].endswith("Z")


def test_libraries_log_from_their_own_level_and_pynetdicom_never_below_warning(
    restore_logging: None,
) -> None:
    stream = io.StringIO()
    settings = load_settings(None, log_level="DEBUG", third_party_log_level="INFO")
    configure_logging(settings, stream=stream)
    logging.getLogger("flows.test").debug("ours at debug")
    logging.getLogger("highdicom.base").debug("library debug")
    logging.getLogger("highdicom.base").info("library info")
    logging.getLogger("pynetdicom.acse").info("a data set, patient name included")
    text = stream.getvalue()
    assert "ours at debug" in text and "library info" in text
    assert "library debug" not in text and "patient name" not in text
