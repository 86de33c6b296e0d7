"""Models of fracture-triage: pixels and networks, never sockets or the database.

``models.runtime`` is what a worker loads to triage (preprocessing, networks,
Grad-CAM, bundles, inference); ``models.training`` is the offline tooling
(data sets, phantoms, training, evaluation). Importing either pulls in torch and
MONAI; the DICOM node never imports this package.
"""
