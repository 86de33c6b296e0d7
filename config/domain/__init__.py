"""The triage domain: levels, operating points, findings, the decision, intended use.

Torch-free and socket-free, so every layer (db, models, dicom_node, flows) may import it.
"""
