"""The ``fracture-triage`` command line."""

from flows.cli.app import app

__all__ = ["app"]
