"""Offline tooling: data set layouts, phantoms, training, evaluation and model cards."""
