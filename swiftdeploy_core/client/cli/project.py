"""Commands: `init` (generate files from the manifest) and `validate` (the pre-flight checklist)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from swiftdeploy_core.client.cli.common import ManifestOption, manifest_path
from swiftdeploy_core.settings import load_settings

POLICY_CHECKS = ("services.gatekeeper.checks",)  # `validate` also compiles and tests the policies


def init(manifest: ManifestOption = None) -> None:
    """Generate nginx.conf, docker-compose.yml and opa-config.yaml under generated/, and the default policies under policies/ when that folder has none.

    Everything is rendered first and written only if all of it rendered; the same manifest always gives the same bytes, so `rm -rf generated && swiftdeploy init` restores them.

    \b
    Examples:
      swiftdeploy init
      swiftdeploy init --manifest deploy/manifest.yaml
      rm -rf generated && swiftdeploy init
    """
    from policies import write_default_policies
    from swiftdeploy_core.project.manifest import load_manifest
    from swiftdeploy_core.project.render import init as render_init

    loaded = load_manifest(manifest_path(manifest))
    for path in [*render_init(loaded), *write_default_policies(loaded.root)]:
        typer.echo(f"wrote {_shown(path)}")
    typer.echo(f"from {_shown(loaded.path)} (sha256 {loaded.sha256[:12]})")


def validate(
    manifest: ManifestOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checklist as JSON.")] = False,
) -> None:
    """Run the pre-flight checklist; exit 0 only when every check passes.

    Checks: the manifest schema, the generated files match the manifest, nginx -t accepts nginx.conf, docker-compose accepts the compose file, the nginx port is free, the runtime (dockerd, or the nginx binary for `runtime: process`) is reachable, and Redis answers.

    \b
    Examples:
      swiftdeploy validate
      swiftdeploy validate --manifest deploy/manifest.yaml
      swiftdeploy validate --json | jq '.checks[] | select(.ok == false)'
    """
    from swiftdeploy_core.project.checks import run_checks

    settings = load_settings()
    results = run_checks(manifest_path(manifest, settings), settings, modules=POLICY_CHECKS)
    passed = all(result.ok for result in results)
    if as_json:
        payload = {"ok": passed, "checks": [result.model_dump() for result in results]}
        typer.echo(json.dumps(payload, indent=2))
    else:
        for result in results:
            typer.echo(f"{'✓' if result.ok else '✗'} {result.name}: {result.reason}")
        failed = sum(not result.ok for result in results)
        typer.echo(f"all {len(results)} checks passed" if passed else f"{failed} of {len(results)} checks failed")
    raise typer.Exit(0 if passed else 1)


def _shown(path: Path) -> str:
    """A path relative to the working folder when it is below it."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(init)
    app.command()(validate)
