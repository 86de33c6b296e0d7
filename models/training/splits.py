"""The patients of each split a bundle was trained with, kept without their identifiers.

A bundle is shared (with a vendor, another site, a paper), so it must not carry patient
IDs. It still has to know which patients it saw, so that ``evaluate`` scores only held-out
patients and never writes figures on seen ones into the card. Each patient ID is kept as
a salted SHA-256 (the salt is random per bundle and stored beside the digests): enough to
recognise a patient one already knows, not to list them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Where a bundle records its patients per split (train, val, test), relative to it.
SPLITS_FILE = Path("training") / "splits.json"


@dataclass(frozen=True)
class PatientSplits:
    """Salted digests of the patient IDs of each split (``train``, ``val``, ``test``)."""

    salt: str
    members: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, patients: Mapping[str, Iterable[str]], salt: str | None = None) -> PatientSplits:
        """Digest each split's patient IDs with ``salt`` (a new random one by default)."""
        salt = secrets.token_hex(16) if salt is None else salt
        return cls(
            salt,
            {name: frozenset(_digest(salt, p) for p in ids) for name, ids in patients.items()},
        )

    def contains(self, split: str, patient_id: str) -> bool:
        return _digest(self.salt, patient_id) in self.members.get(split, frozenset())

    def count(self, split: str) -> int:
        return len(self.members.get(split, frozenset()))

    def write(self, bundle_dir: Path) -> None:
        path = bundle_dir / SPLITS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        content = {"patient_ids": "sha256(salt + ':' + patient id)", "salt": self.salt}
        content |= {name: sorted(digests) for name, digests in self.members.items()}
        path.write_text(json.dumps(content, indent=1) + "\n")

    @classmethod
    def read(cls, bundle_dir: Path) -> PatientSplits | None:
        """The bundle's splits; None when it does not record them. A file from before the
        IDs were digested (plain IDs, no salt) is read and digested here."""
        path = bundle_dir / SPLITS_FILE
        if not path.is_file():
            return None
        content = json.loads(path.read_text())
        if "salt" not in content:
            return cls.of(content)
        splits = {k: v for k, v in content.items() if isinstance(v, list)}
        return cls(content["salt"], {name: frozenset(v) for name, v in splits.items()})


def _digest(salt: str, patient_id: str) -> str:
    return hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()
