"""Benchmarks run by `make bench`; each prints its figures and how to reproduce them."""
