"""Export of the audit trail to the hospital's audit record repository (IHE ATNA)."""
