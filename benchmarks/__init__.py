"""Speed benchmarks, each a module run from the repository root: ``python -m benchmarks.<name>`` (see RESULTS.md)."""
