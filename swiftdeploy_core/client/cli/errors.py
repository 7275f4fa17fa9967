"""The one place where errors become one-line messages and exit codes."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from swiftdeploy_core.errors import SwiftDeployError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # bad input: manifest, arguments, settings
EXIT_DENIED = 3  # blocked or rolled back by policy
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one line to stderr and exit with `code`."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_app(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run the Typer app, turning SwiftDeploy errors into one line and an exit code.

    Usage errors are Typer's own (exit 2); our errors carry their exit code.
    """
    try:
        app(args=argv, prog_name="swiftdeploy")
    except SwiftDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    return EXIT_OK
