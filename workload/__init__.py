"""The SwiftDeploy workload: a small Quart service with exact Prometheus metrics and chaos.

`python -m workload` serves it with hypercorn; `create_app(settings)` builds one app with its own
metrics registry and chaos state, so several apps can live in one process.
"""

from workload.app import create_app

__all__ = ["create_app"]
