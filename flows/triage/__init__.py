"""The triage flows and their tasks."""
