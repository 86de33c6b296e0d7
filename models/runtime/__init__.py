"""What a worker loads to triage: preprocessing, networks, Grad-CAM, bundles, inference."""
