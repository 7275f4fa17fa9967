"""The client: the control plane, status and the CLI's shared conventions."""
