"""The orchestrator: pure plans, the phase table, the lease lock and the real drivers."""
