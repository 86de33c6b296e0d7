"""What a worker loads to triage; never imports :mod:`models.training`.

- ``preprocessing``: display rendering of DICOM and PNG images, fit to the square input,
  per-image standardisation (the one pipeline of training and inference).
- ``networks``: the registry of MONAI architectures a bundle may name, and their Grad-CAM layers.
- ``gradcam``: Grad-CAM / Grad-CAM++ maps (hot = evidence) and the hottest box.
- ``metadata``: what a bundle is (:class:`BundleMetadata`, operating points, file layout)
  and its model card.
- ``inference``: the two-stage :class:`HierarchicalModel` (region, then that region's
  fracture network and its Grad-CAM).
- ``bundle``: reading, writing and loading bundle directories into a HierarchicalModel.
"""
