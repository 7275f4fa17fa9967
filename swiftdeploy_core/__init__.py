"""SwiftDeploy: policy-gated canary deployments behind nginx.

This package is the shared kernel (manifest schema, settings, errors, event catalogue,
stream names, bus client, service base) and the `swiftdeploy` Typer client.
"""

__version__ = "0.1.0"
