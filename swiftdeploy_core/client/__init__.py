"""The client: the `swiftdeploy` Typer CLI, the local control plane and the status dashboard."""
