"""shapecalc's own cross-check harness (not public API): one case per rule key and random
architectures, each compared with torch by the test suite and benchmarks/fuzz.py."""
