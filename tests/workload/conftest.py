"""The demo workload: its API, chaos and /metrics."""
