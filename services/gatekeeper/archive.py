"""Every policy revision the gatekeeper decides with, kept content-addressed under the state folder.

`<paths.state>/policies/<revision>/` holds the policy and data files that hash to `<revision>`
(`policies.revision`) and the input schemas beside them (`schemas/<domain>.json`), so
`swiftdeploy policy replay --revision <revision>` decides again with exactly those files. A
revision's folder is written once (into a temporary folder, then renamed) and never changed.

The gatekeeper asks `keep` after each decision: a revision already kept costs one set lookup.
For a new one it reads the folder the decision came from and keeps it when the files still hash
to that revision (a file edited in between is kept by the next decision made with it); a revision
no folder hashes to (an OPA serving other files) is looked for again at most every RETRY_S.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import policies

log = logging.getLogger(__name__)

FOLDER = "policies"  # under the state folder
_REVISION = re.compile(r"^[0-9a-f]{4,64}$")
RETRY_S = 5.0  # a revision no folder hashes to (OPA serving other files) is looked for again after this


class PolicyArchive:
    """The kept revisions under one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / FOLDER
        self._kept: set[str] = set()
        self._missed: dict[str, float] = {}  # revision -> when no source matched it

    def keep(self, revision: str, sources: list[Path]) -> bool:
        """Keep `revision` from the first of `sources` whose files hash to it; True when it is kept."""
        if not revision or revision in self._kept:
            return bool(revision)
        if time.monotonic() - self._missed.get(revision, -RETRY_S) < RETRY_S:
            return False
        if (self.root / revision).is_dir():
            self._kept.add(revision)
            return True
        for source in sources:
            files = {path.name: path.read_bytes() for path in policies.policy_files(source)}
            if files and policies.revision(files) == revision:
                self._write(revision, files, source)
                self._kept.add(revision)
                return True
        self._missed[revision] = time.monotonic()
        return False

    def folder(self, revision: str) -> Path:
        """The folder of a kept revision (a unique prefix of at least 4 digits will do);
        LookupError with one line when there is none."""
        if not _REVISION.match(revision):
            raise LookupError(f"revision {revision!r} is not a policy revision (hex digits, such as 6948fc1dac599533)")
        found = sorted(p for p in self.root.glob(f"{revision}*") if p.is_dir()) if self.root.is_dir() else []
        if not found:
            raise LookupError(f"policy revision {revision} was never decided with here (nothing in {self.root})")
        if len(found) > 1:
            raise LookupError(f"policy revision {revision} is ambiguous: {', '.join(p.name for p in found)}")
        return found[0]

    def _write(self, revision: str, files: dict[str, bytes], source: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{revision}.", dir=self.root))
        try:
            for name, body in files.items():
                (staging / name).write_bytes(body)
            schemas = policies.schema_dir(source)
            if schemas.is_dir():
                shutil.copytree(schemas, policies.schema_dir(staging), ignore=shutil.ignore_patterns(".*"))
            os.rename(staging, self.root / revision)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (self.root / revision).is_dir():  # another replica kept it first: fine
                raise
        log.info("kept policy revision %s from %s in %s", revision, source, self.root / revision)
