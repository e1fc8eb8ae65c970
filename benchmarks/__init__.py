"""Benchmark scripts (run as ``python benchmarks/<script>.py`` from any folder) and their shared
helpers: ``common`` (timing, peak memory, alternation) and ``official`` (the official code from
a local clone, in the same process). Commands and figures: docs/results.md.
"""
