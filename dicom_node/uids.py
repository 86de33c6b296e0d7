"""UID checks for anything that becomes part of a file path."""

from __future__ import annotations

import re

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
