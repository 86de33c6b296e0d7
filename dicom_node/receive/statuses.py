"""DIMSE status codes the node answers with, named (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

SUCCESS = 0x0000
#: Refused: Out of Resources (disk, database, internal failure; the peer may retry).
OUT_OF_RESOURCES = 0xA700
#: Error: Data Set does not match SOP Class (missing or inconsistent UIDs).
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: Cannot understand (the data set cannot be decoded).
CANNOT_UNDERSTAND = 0xC000
