"""Benchmark harness for pcclog: peers, load generator, scenarios and driver.

Run with ``python -m benchmarks.run``; see ``benchmarks/README.md``.
"""
