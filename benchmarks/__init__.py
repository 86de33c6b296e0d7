"""On-demand measurements; see BENCHMARKS.md for the figures and how to reproduce them."""
