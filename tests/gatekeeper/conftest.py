"""The gatekeeper: the policies, both engines, their parity, and the service."""
