"""Prefect flows and the CLI: the only place where model results meet DICOM.

Prefect reads its settings when it is first imported, so the embedded defaults
are put in the environment here, before any flow module imports prefect.
"""

from flows.prefect_env import apply_prefect_defaults

apply_prefect_defaults()
