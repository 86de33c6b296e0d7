"""Run the peer app once over every study folder; write the timings as JSON.

Paths come the SDK's way, from HOLOSCAN_INPUT_PATH (a folder of study folders),
HOLOSCAN_OUTPUT_PATH and HOLOSCAN_MODEL_PATH (a TorchScript file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from benchmarks.monai_deploy_app.app import FractureClassificationApp
from benchmarks.monai_deploy_app.operators import StudyTimings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--timings", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    timings = StudyTimings()
    started = time.perf_counter()
    # Our own options stay out of the SDK's argument parser (it reads -i/-o/-m/-l only).
    app = FractureClassificationApp([sys.executable, sys.argv[0], "-l", "WARN"],
                                    image_size=args.image_size, timings=timings)  # fmt: skip
    app.compose_graph()  # the SDK's compose: operators built, the network loaded
    composed = time.perf_counter()
    app.run()
    args.timings.write_text(
        json.dumps(
            {
                "compose_seconds": composed - started,
                "handed_over": timings.handed_over,
                "reported": timings.reported,
                "torch_threads": torch.get_num_threads(),
                "versions": {
                    name: version(name)
                    for name in (
                        "monai-deploy-app-sdk",
                        "holoscan-cu13",
                        "monai",
                        "torch",
                        "pydicom",
                    )
                },
            }
        )
    )


if __name__ == "__main__":
    main()
