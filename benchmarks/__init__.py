"""kdetect's benchmarks: ``python -m benchmarks`` prints the summary table (see __main__.py)."""
