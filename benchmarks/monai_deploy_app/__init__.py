"""The peer of ``benchmarks.peer_monai_deploy``: a MONAI Deploy App SDK app doing the node's work.

It runs in its own virtualenv (``monai-deploy-app-sdk``, Holoscan, torch CPU), never in the
project's: nothing here imports the project's packages. Built the way the SDK's own
breast density classifier example is (DICOM data loader -> series selector -> series to
image -> classifier -> the SDK's DICOM text SR writer), as a long-lived app: the network is
loaded once, then one study folder is handed to the loader per tick, as a watcher would.

    HOLOSCAN_INPUT_PATH=studies HOLOSCAN_OUTPUT_PATH=out HOLOSCAN_MODEL_PATH=model.ts \\
        python -m benchmarks.monai_deploy_app --threads 2 --image-size 320 --timings t.json
"""
