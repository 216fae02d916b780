"""captioner's benchmarks: run each from the repository root as `python -m benchmarks.NAME`
(`make bench`, `make bench-gpu`, `make quality`). What they share is in `benchmarks.common`."""
