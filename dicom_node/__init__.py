"""The DICOM node: storage SCP, durable store, study completion, SR/SC builders, sender.

It imports ``config`` and ``db`` only: never the models or torch, so the
receiving process stays light.
"""
