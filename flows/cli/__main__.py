"""``python -m flows.cli``: the same command line as ``fracture-triage``."""

from flows.cli.app import main

main()
