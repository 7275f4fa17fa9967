"""The embedded policy engine: regopy (a Rego v1 interpreter) inside the gatekeeper's process.

It loads a policy folder (`*.rego` except tests, and `data.json` as the data document), compiles
it once, and recompiles before the next decision whenever a file changed, so editing thresholds
takes effect with no restart. Broken files fail closed: every decision denies, saying what is
wrong, until the files are fixed.

All regopy work (polling the folder, compiling, querying) is serialized through one thread of
the engine's own: regopy's interpreter is not thread-safe, and a query releases the GIL (ctypes),
so under load the event loop keeps serving the bus while policies evaluate, on two cores when the
host has them. A lone decision that is known to be quick is answered on the loop (no wake-ups).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import policies
from services.gatekeeper import rego
from services.gatekeeper.batches import BatchingThread
from services.gatekeeper.engines import PolicyEngine
from services.gatekeeper.folder import FolderWatch
from swiftdeploy_core.errors import PolicyEngineError

log = logging.getLogger(__name__)

DATA_FILE = "data.json"
INLINE_BELOW_S = 0.002  # a lone query faster than this is answered on the event loop itself


def split_files(contents: dict[str, bytes]) -> tuple[dict[str, str], str | None]:
    """Rego modules by file name, and the text of data.json (None when there is none)."""
    try:
        modules = {name: text.decode("utf-8") for name, text in contents.items() if name.endswith(".rego")}
        data = contents[DATA_FILE].decode("utf-8") if DATA_FILE in contents else None
    except UnicodeDecodeError as exc:
        raise PolicyEngineError(f"policy files invalid: not UTF-8 text ({exc.reason})") from exc
    return modules, data


def read_folder(folder: Path, include_tests: bool) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in policies.policy_files(folder, include_tests)}


def run_folder_tests(folder: Path) -> list[rego.RegoTest]:
    """Run a policy folder's Rego unit tests; PolicyEngineError when the files do not compile."""
    try:
        contents = read_folder(folder, include_tests=True)
    except OSError as exc:
        raise PolicyEngineError(f"policy files unreadable: {exc}") from exc
    modules, data = split_files(contents)
    return rego.run_tests(modules, data)


class EmbeddedEngine(PolicyEngine):
    """Decides with regopy on the policy files of one folder, reloading them when they change."""

    name = "embedded"

    def __init__(self, folder: Path, fallback: Path | None = None) -> None:
        self.folder = folder
        self._watch = FolderWatch(folder, fallback)
        self._compiled: rego.CompiledPolicies | None = None
        self._error: str | None = "policies not loaded yet"
        self._revision = ""
        self._thread = BatchingThread("rego", inline_below=INLINE_BELOW_S)

    async def answer(self, domain: str, input: dict[str, Any]) -> tuple[Any, str]:
        return await self._thread.call(self._answer, domain, input)

    async def health(self) -> str | None:
        return await self._thread.call(self._health)

    def revision(self) -> str:
        return self._revision

    async def close(self) -> None:
        self._thread.close()

    def _answer(self, domain: str, input: dict[str, Any]) -> tuple[Any, str]:
        compiled = self._current()
        return compiled.query(domain, input), self._revision

    def _health(self) -> str | None:
        try:
            compiled = self._current()
        except PolicyEngineError as exc:
            return str(exc)
        return None if compiled.domains else f"no policies in {self._watch.source}"

    def _current(self) -> rego.CompiledPolicies:
        """The compiled policies matching the files on disk now; PolicyEngineError if they do not compile."""
        try:
            contents = self._watch.poll()
        except OSError as exc:
            raise PolicyEngineError(f"policy files unreadable: {exc}") from exc
        if contents is not None:
            self._reload(contents)
        if self._compiled is None:
            raise PolicyEngineError(self._error or "policies not loaded")
        return self._compiled

    def _reload(self, contents: dict[str, bytes]) -> None:
        self._revision = policies.revision(contents)
        try:
            modules, data = split_files(contents)
            self._compiled, self._error = rego.compile_policies(modules, data), None
        except PolicyEngineError as exc:
            self._compiled, self._error = None, str(exc)
            log.error("policies in %s (revision %s) do not compile: %s", self._watch.source, self._revision, exc)
            return
        log.info(
            "policies loaded from %s: revision %s, packages %s",
            self._watch.source,
            self._revision,
            ", ".join(self._compiled.domains),
        )
