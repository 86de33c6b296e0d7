"""The DICOM node: storage SCP, durable store, study completion, SR/SC builders, sender.

It imports ``config`` and ``db`` only: never the models or torch, so the
receiving process stays light.
"""

from pydicom import config as _pydicom_config

# No patient data in logs: pydicom's reading validation reports an invalid value *with
# the value*, as a warning and a log line, and a malformed data set can make a patient's
# name part of a UID's value (a wrong length). The node checks what it uses itself
# (dicom_node.uids never echoes a malformed UID), so every process that runs the node
# reads with pydicom's value validation off. Writing validation stays on.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE

# Library warnings and log lines that quote a value (a person name highdicom finds unusual,
# a date pydicom cannot parse) go through logging with the quoted values scrubbed.
from dicom_node.phi import capture_warnings as _capture_warnings  # noqa: E402

_capture_warnings()
