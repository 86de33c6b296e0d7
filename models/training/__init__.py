"""Offline tooling: data sets, phantoms, training, evaluation; a worker never imports it.

- ``datasets``: MURA, CSV and DICOM-folder layouts as one record type, split by patient,
  and phantom data sets written in each layout.
- ``phantoms``: synthetic radiographs per region with known breaks, as arrays and DICOM.
- ``config``: :class:`TrainConfig` and its named presets.
- ``stages``: one network trained per stage, checkpointed and resumable.
- ``calibration``: temperature scaling.
- ``operating_points``: study scores and the per-region ``suspected``/``likely`` thresholds.
- ``train``: :func:`train`, a two-stage bundle from labelled records.
- ``metrics``: AUROC, confusion, calibration error (MONAI's), kappa, bootstrap CI, ROC points.
- ``evaluation``: a bundle run over labelled records as the node runs it; ``report``: its
  figures and Markdown report.
- ``demo``: the demo bundle (the phantom preset on phantoms); ``fingerprint``: the hash of
  the code that trains a bundle, recorded in it.
- ``progress``: the optional progress bar of the long commands.
"""
