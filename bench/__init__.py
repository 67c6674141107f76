"""Benchmarks of ifnd_tf: ratios measured in one process, alternating the variants.

Run from the repository root, e.g. `python -m bench.step`; each script prints a table and
writes JSON to bench/results/. Timings are never asserted in tests (bench/README.md).
"""
