"""Every error SwiftDeploy raises on purpose.

One base class, a few families under it. The CLI maps each family to a one-line message and an
exit code in one place (`swiftdeploy_core.client.cli.errors`); nothing else prints errors for the user.
"""

from __future__ import annotations


class SwiftDeployError(Exception):
    """Base of every deliberate SwiftDeploy error; its message is one line a user can act on."""

    exit_code = 1


class ManifestError(SwiftDeployError):
    """The manifest file is missing, unreadable, not YAML, or does not match the schema."""

    exit_code = 2


class ConfigError(SwiftDeployError):
    """A setting, generated file or project folder is not in a usable state."""

    exit_code = 2


class BusError(SwiftDeployError):
    """Redis could not be reached or answered in a way the bus cannot use."""


class BusLost(BusError):
    """Redis went away in the middle of an operation (refused, reset, timed out): retry later."""


class GroupMissing(BusError):
    """A consumer group is gone (Redis restarted empty, or was flushed): join it again."""


class ControlPlaneDown(BusError):
    """The control plane (Redis and the services) is not running."""


class RequestTimeout(BusError):
    """A request on the bus got no reply within its deadline."""


class RequestRejected(BusError):
    """The service a request went to refused it before any effect (`command.rejected`: it has no
    handler for the type, cannot decode it, or the command is not possible now)."""


class RuntimeDriverError(SwiftDeployError):
    """The runtime (dockerd or local processes) refused or failed an operation."""


class RuntimeUnavailable(RuntimeDriverError):
    """The configured runtime cannot be reached at all (no dockerd socket, no nginx binary)."""


class OperationInProgress(SwiftDeployError):
    """Another operation holds this deployment's lease lock."""


class LeaseLost(SwiftDeployError):
    """This operation's lease ran out or passed to another holder: it stops before its next effect."""


class PolicyEngineError(SwiftDeployError):
    """The policy engine could not give an answer (used inside the gatekeeper, mapped to a deny)."""


class ImagePullError(RuntimeDriverError):
    """An image is not on the docker host and could not be pulled (not found, unauthorized, unreachable)."""


class SecretUnavailable(ConfigError):
    """A secret or env file the manifest names cannot be read where the orchestrator runs."""
