"""The kernel: the bus client, consumer groups, the worker and its processes."""
