"""UID checks for anything that becomes part of a file path, and derived UIDs."""

from __future__ import annotations

import re
import uuid

from pydicom.uid import RE_VALID_UID

# PS3.5 9.1: components of digits separated by dots, no leading zero in a multi-digit
# component, 64 characters at most. Nothing else may reach a path.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUIDError(ValueError):
    """A UID is malformed; the message names the attribute (never patient data)."""


def validate_uid(value: object, attribute: str) -> str:
    """Return ``value`` as a str if it is a valid DICOM UID, else raise InvalidUIDError."""
    if not isinstance(value, str) or not value:
        raise InvalidUIDError(f"{attribute} is missing")
    if len(value) > 64:
        raise InvalidUIDError(f"{attribute} is longer than 64 characters")
    if not _UID.match(value):
        # Show the value only when it is harmless to log: digits and dots, bounded length.
        shown = value if re.fullmatch(r"[0-9.]{1,64}", value) else "<not a UID>"
        raise InvalidUIDError(f"{attribute} {shown!r} is not a valid UID")
    return value


def check_new_uid(name: str, value: object) -> None:
    """Check a UID the caller chose for an object we build; the error shows it in full.

    Unlike :func:`validate_uid` (for UIDs received from peers, never echoed when
    malformed), these come from our own code, so naming the bad value is safe.
    """
    if not isinstance(value, str) or len(value) > 64 or not RE_VALID_UID.match(value):
        raise ValueError(f"{name} is not a valid UID: {value!r}")


def check_positive_number(name: str, value: object) -> None:
    """Check a Series or Instance Number for an object we build."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def derived_uid(*parts: str) -> str:
    """A UID that is the same each time for the same inputs (``2.25`` form, UUID version 5)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(parts)).int}"
