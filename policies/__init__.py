"""SwiftDeploy's default policies, shipped as package data, and a project's own policy folder.

The files beside this module are the defaults `swiftdeploy init` copies into a project's
`policies/` folder: `infra.rego`, `canary.rego`, the shared `lib.rego`, the thresholds in
`data.json`, their Rego unit tests (`*_test.rego`), and each domain's input as a JSON Schema in
`schemas/<domain>.json` (OPA's convention for `opa check --schema`). A project's folder, once
written, is the user's: nothing here overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

FOLDER_NAME = "policies"
TEST_SUFFIX = "_test.rego"  # `opa test` files: run by validate and the suite, never loaded to decide
DEFAULT_FILES = (
    "lib.rego",
    "infra.rego",
    "canary.rego",
    "data.json",
    "infra_test.rego",
    "canary_test.rego",
)
SCHEMA_DIR = "schemas"  # <domain>.json: the JSON Schema of that domain's input (not loaded as data)
DATA_FILE = "data.json"
DEFAULT_SCHEMAS = ("infra.json", "canary.json")
# Integers beyond this magnitude lose precision in the embedded engine (regopy reads 2**70 as 0),
# so they are handed to every engine as floats; the policies then reject them as out of range.
_SAFE_INTEGER = 2**53


def default_files() -> dict[str, bytes]:
    """The default policy files by name, read from the installed package."""
    folder: Traversable = resources.files(__name__)
    return {name: folder.joinpath(name).read_bytes() for name in DEFAULT_FILES}


def default_schemas() -> dict[str, bytes]:
    """The default input schemas by file name (`infra.json`, ...), read from the installed package."""
    folder: Traversable = resources.files(__name__).joinpath(SCHEMA_DIR)
    return {name: folder.joinpath(name).read_bytes() for name in DEFAULT_SCHEMAS}


def schema_dir(folder: Path) -> Path:
    """Where a policy folder keeps its input schemas."""
    return folder / SCHEMA_DIR


def schema_path(folder: Path, domain: str) -> Path:
    """The JSON Schema of `domain`'s input in a policy folder."""
    return schema_dir(folder) / f"{domain}.json"


def default_dir() -> Path:
    """The folder that holds the default policies (a real directory: the package is not zipped)."""
    return Path(str(resources.files(__name__)))


def project_dir(root: Path | str) -> Path:
    """Where the project whose manifest lives in `root` keeps its policies."""
    return Path(root) / FOLDER_NAME


def has_policies(folder: Path) -> bool:
    """True when `folder` already holds a policy or data file of the user's."""
    return folder.is_dir() and any(policy_files(folder, include_tests=True))


def write_default_policies(root: Path | str) -> list[Path]:
    """Write the default policies and input schemas into `root/policies/` when it holds no policy;
    return what was written.

    A folder that already holds any `.rego` or `.json` file is left exactly as it is, and no
    existing file is ever overwritten.
    """
    folder = project_dir(root)
    if has_policies(folder):
        return []
    return _write_missing(folder, default_files()) + _write_missing(schema_dir(folder), default_schemas())


def _write_missing(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        target = folder / name
        if not target.exists():
            target.write_bytes(content)
            written.append(target)
    return written


def policy_files(folder: Path, include_tests: bool = False) -> list[Path]:
    """The `.rego` and `.json` files an engine loads from `folder`, sorted by name."""
    if not folder.is_dir():
        return []
    files = [path for path in folder.iterdir() if is_policy_name(path.name, include_tests) and path.is_file()]
    return sorted(files, key=lambda path: path.name)


def is_policy_name(name: str, include_tests: bool = False) -> bool:
    """A file name an engine loads: `.rego` or `.json`, not hidden, tests only when asked for."""
    if name.startswith(".") or not name.endswith((".rego", ".json")):
        return False
    return include_tests or not name.endswith(TEST_SUFFIX)


def revision(contents: dict[str, bytes]) -> str:
    """A short hash naming one exact set of policy and data files: each module's name and bytes,
    and each data file's name and JSON content (canonical: key order, spacing and `2.0` versus `2`
    do not count). OPA serves the same two things (`GET /v1/policies` gives each module's text,
    `GET /v1/data/<key>` the data), so `served_revision` of what it serves equals this when it
    serves these files."""
    digest = hashlib.sha256()
    for name in sorted(contents):
        body = contents[name] if name.endswith(".rego") else _canonical_bytes(contents[name])
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    return digest.hexdigest()[:16]


def served_revision(modules: dict[str, str], data: Any) -> str:
    """`revision` of what an OPA server serves: its modules by file name (tests left out) and the
    data it holds under the top-level keys of the project's `data.json` (a key it does not serve is
    left out, which makes the revisions differ)."""
    contents = {name: text.encode() for name, text in modules.items() if is_policy_name(name)}
    contents[DATA_FILE] = json.dumps(data).encode()
    return revision(contents)


def data_keys(contents: dict[str, bytes]) -> list[str]:
    """The top-level keys of a policy folder's data.json (what to ask OPA for), [] when unreadable."""
    try:
        data = json.loads(contents.get(DATA_FILE, b"{}"))
    except ValueError:
        return []
    return sorted(data) if isinstance(data, dict) else []


def _canonical_bytes(raw: bytes) -> bytes:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":")).encode()


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def json_safe(value: Any) -> Any:
    """`value` with what JSON cannot carry made explicit, identically for every engine.

    NaN and the infinities become the strings "NaN", "Infinity" and "-Infinity" (so a policy says
    "must be a number (got string "NaN")" instead of the value silently turning into null), and
    integers too large for the embedded engine become floats.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, int):
        return float(value) if abs(value) > _SAFE_INTEGER else value
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return str(value)
