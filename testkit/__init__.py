"""Support code shared by the tests and the benchmarks (neither's private module).

Throwaway PostgreSQL and Redis servers (:mod:`testkit.servers`), the one live-server
helper (:mod:`testkit.live`), the Go interop peers (:mod:`testkit.gopeer`) and the
Python yamux service they talk to (:mod:`testkit.pyservice`). Not part of the wheel.
"""
