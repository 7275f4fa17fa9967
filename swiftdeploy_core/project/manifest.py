"""The manifest schema and its loader: the one place that says what `manifest.yaml` may hold.

The original's manifest (services, nginx, network) is valid as it is; every other section is
optional with the defaults written here. Loading never raises anything but `ManifestError`, whose
message is one line naming the field path and the problem.
"""

from __future__ import annotations

import hashlib
import itertools
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.project.manifest_errors import codepoint, describe_errors, kind_of, num, show

MAX_MANIFEST_BYTES = 1_000_000

Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Seconds = Annotated[float, Field(gt=0, le=3600)]


class Mode(str, Enum):
    stable = "stable"
    canary = "canary"


class Runtime(str, Enum):
    docker = "docker"
    process = "process"


class PolicyEngine(str, Enum):
    embedded = "embedded"
    opa = "opa"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MetricName = Annotated[str, Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", max_length=200)]
LabelName = Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", max_length=200)]


class AppMetricsSpec(_Section):
    """`services.app_metrics`: the names in the app's /metrics the `app` source reads."""

    requests: MetricName = "http_requests_total"  # counter, by status label
    latency: MetricName = "http_request_duration_seconds"  # histogram (its _bucket series)
    status_label: LabelName = "status_code"
    path_label: LabelName = "path"


class ServiceSpec(_Section):
    """`services`: the one web service SwiftDeploy deploys."""

    name: Name
    image: Annotated[str, Field(min_length=1)]
    port: Port
    version: Annotated[str, Field(min_length=1, strict=True)]
    mode: Mode = Mode.stable
    replicas: Annotated[int, Field(ge=1, le=20, strict=True)] = 1
    # Process runtime only: the command that serves the app with PORT, MODE, VERSION set.
    command: list[str] | None = None
    # Where canary figures come from: nginx's per-request log (any HTTP service), or the app's
    # own /metrics (the seed's metric names).
    metrics: Literal["router", "app"] = "router"
    app_metrics: AppMetricsSpec = AppMetricsSpec()

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value


class NginxSpec(_Section):
    """`nginx`: the router, the only public entry."""

    image: Annotated[str, Field(min_length=1)]
    port: Port
    proxy_timeout: Annotated[int, Field(ge=1, le=3600, strict=True)] = 30


class NetworkSpec(_Section):
    """`network`: the public network the stack joins."""

    name: Name
    driver_type: Literal["bridge", "overlay", "macvlan", "ipvlan"] = "bridge"


class CanarySpec(_Section):
    """`canary`: how a canary is rolled out. version and image default to the service's."""

    version: Annotated[str, Field(min_length=1, strict=True)] | None = None
    image: Annotated[str, Field(min_length=1)] | None = None
    steps: Annotated[list[Annotated[int, Field(ge=1, le=100, strict=True)]], Field(min_length=1)] = [
        10,
        25,
        50,
    ]
    interval: Seconds = 10
    failure_limit: Annotated[int, Field(ge=1, le=100, strict=True)] = 2

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"must be strictly increasing (got {steps})")
        return steps


class PolicySpec(_Section):
    """`policy`: which engine decides."""

    engine: PolicyEngine = PolicyEngine.embedded
    opa_url: Annotated[str, Field(pattern=r"^https?://")] = "http://127.0.0.1:8181"
    opa_image: Annotated[str, Field(min_length=1)] = "openpolicyagent/opa:latest"
    timeout: Seconds = 2.0


class CollectorSpec(_Section):
    """`collector`: how often to scrape and over what window figures are computed."""

    interval: Seconds = 2
    window: Seconds = 60
    targets: list[Annotated[str, Field(pattern=r"^https?://")]] = []

    @model_validator(mode="after")
    def _window_covers_interval(self) -> CollectorSpec:
        if self.window < 2 * self.interval:
            raise ValueError(
                f"window must be at least twice the interval (got window={num(self.window)}, "
                f"interval={num(self.interval)})"
            )
        return self


class AnalysisQuery(_Section):
    """One named PromQL query; `{{ track }}`, `{{ version }}`, `{{ project }}`, `{{ window }}` are
    filled in per track before it is sent."""

    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)]
    query: Annotated[str, Field(min_length=1, max_length=4000)]


class PrometheusSpec(_Section):
    url: Annotated[str, Field(pattern=r"^https?://")]


class AnalysisSpec(_Section):
    """`analysis`: PromQL queries evaluated each interval; each value reaches the canary policy
    as `input.metrics.<name>`."""

    prometheus: PrometheusSpec | None = None
    metrics: list[AnalysisQuery] = []

    @model_validator(mode="after")
    def _queries_need_prometheus(self) -> AnalysisSpec:
        if self.metrics and self.prometheus is None:
            raise ValueError("metrics need prometheus.url (where to send the queries)")
        names = [query.name for query in self.metrics]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"metric names must be unique (repeated: {', '.join(doubled)})")
        return self


class PathsSpec(_Section):
    """`paths`: where SwiftDeploy writes, relative to the manifest's folder."""

    history: Path = Path("history.jsonl")
    report: Path = Path("audit_report.md")
    state: Path = Path(".swiftdeploy")
    generated: Path = Path("generated")  # what `swiftdeploy init` writes

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL bytes")
        return value


class Manifest(_Section):
    """The whole of `manifest.yaml`."""

    services: ServiceSpec
    nginx: NginxSpec
    network: NetworkSpec
    canary: CanarySpec = CanarySpec()
    policy: PolicySpec = PolicySpec()
    runtime: Runtime = Runtime.docker
    collector: CollectorSpec = CollectorSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    paths: PathsSpec = PathsSpec()

    @property
    def project(self) -> str:
        """The name every runtime object of this deployment is labelled with."""
        return self.services.name

    @property
    def canary_version(self) -> str:
        return self.canary.version or self.services.version

    @property
    def canary_image(self) -> str:
        return self.canary.image or self.services.image


class LoadedManifest(BaseModel):
    """A manifest together with where it came from."""

    model_config = ConfigDict(frozen=True)

    manifest: Manifest
    path: Path
    sha256: str

    @property
    def root(self) -> Path:
        """The manifest's folder: every relative path is resolved against it."""
        return self.path.parent

    def resolve(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.root / relative


def load_manifest(path: Path | str) -> LoadedManifest:
    """Read, parse and validate a manifest file; raise `ManifestError` with one line on any problem."""
    path = Path(path)
    raw = _read(path)
    data = parse_manifest_text(raw, name=path.name)
    return LoadedManifest(
        manifest=validate_manifest(data, name=path.name),
        path=path.resolve(),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _read(path: Path) -> bytes:
    try:
        return _read_bounded(path)
    except PermissionError:
        raise ManifestError(f"{path}: permission denied (cannot read the file)") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_bounded(path: Path) -> bytes:
    if not path.exists():
        raise ManifestError(f"{path}: no such file (write one, or pass --manifest)")
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, not a manifest file")
    if not path.is_file():
        raise ManifestError(f"{path}: is not a regular file (a pipe or a device?)")
    with path.open("rb") as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        size = path.stat().st_size
        raise ManifestError(
            f"{path}: {size / 1e6:.1f} MB is too large for a manifest (limit {MAX_MANIFEST_BYTES // 1_000_000} MB)"
        )
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # construct_mapping below refuses an unhashable key with its line and column
        if key in seen:
            mark = key_node.start_mark
            raise ManifestError(f"line {mark.line + 1}, column {mark.column + 1}: duplicate key {show(key)}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_manifest_text(raw: bytes, name: str = "manifest.yaml") -> dict[str, Any]:
    """Decode and parse manifest bytes into a mapping; `ManifestError` on anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{name}: not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise ManifestError(f"{name}: the file is empty")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ManifestError as exc:
        raise ManifestError(f"{name}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(exc.problem or exc).split())
        raise ManifestError(f"{name}: invalid YAML at {where}{problem}") from None
    except yaml.reader.ReaderError as exc:
        raise ManifestError(
            f"{name}: invalid YAML: character {codepoint(exc.character)} is not allowed (at offset {exc.position})"
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{name}: invalid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ManifestError(f"{name}: invalid YAML (nested too deeply)") from None
    if data is None:
        raise ManifestError(f"{name}: the file holds no YAML document")
    if not isinstance(data, dict):
        raise ManifestError(f"{name}: the top level must be a mapping of sections (got {kind_of(data)})")
    return data


def validate_manifest(data: dict[str, Any], name: str = "manifest.yaml") -> Manifest:
    """Validate a parsed mapping; every problem names its field path."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc, Manifest)
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise ManifestError(f"{name}: {problems[0]}{more}") from None
