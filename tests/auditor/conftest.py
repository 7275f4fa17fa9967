"""The auditor: the hash-chained history, the report, and the service on real Redis."""
