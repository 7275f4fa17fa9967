"""The manifest schema and its loader: the one place that says what `manifest.yaml` may hold.

The original's manifest (services, nginx, network) is valid as it is; every other section is
optional with the defaults written here. Loading never raises anything but `ManifestError`, whose
message is one line naming the field path and the problem.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.limits import INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, InputTooLarge, check_value
from swiftdeploy_core.project.manifest_errors import codepoint, describe_errors, kind_of, num, show

MAX_MANIFEST_BYTES = 1_000_000

Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Seconds = Annotated[float, Field(gt=0, le=3600)]
EnvName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# An HTTP path without a query: letters, digits and `._~%/:@+=,-` only (it goes into nginx.conf
# and into the compose healthcheck's shell command unquoted).
HealthPath = Annotated[str, Field(max_length=1024, pattern=r"^/[A-Za-z0-9._~%/:@+=,-]*$")]
RESERVED_ENV = frozenset({"HOST", "PORT", "MODE", "VERSION"})  # set by SwiftDeploy on every instance


class Mode(str, Enum):
    stable = "stable"
    canary = "canary"


class Runtime(str, Enum):
    docker = "docker"
    process = "process"
    swarm = "swarm"  # Docker Swarm services across nodes (see the `swarm` section)


class PolicyEngine(str, Enum):
    embedded = "embedded"
    opa = "opa"


class PullPolicy(str, Enum):
    missing = "missing"  # pull an image only when dockerd does not have it
    always = "always"  # pull on every deploy and canary (a moved tag is followed)
    never = "never"  # use local images only


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _image(value: str) -> str:
    from swiftdeploy_core.project.images import parse_reference

    parse_reference(value)
    return value


Image = Annotated[str, Field(min_length=1), AfterValidator(_image)]


def _env_map(value: Any) -> Any:
    """YAML scalars (numbers, booleans) become the strings a process environment holds."""
    if isinstance(value, dict):
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) if isinstance(v, int | float) else v
                for k, v in value.items()}  # fmt: skip
    return value


def _not_reserved(env: dict[str, str]) -> dict[str, str]:
    taken = sorted(RESERVED_ENV & set(env))
    if taken:
        raise ValueError(
            f"{', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by SwiftDeploy on every instance"
        )
    return env


Env = Annotated[dict[EnvName, str], BeforeValidator(_env_map), AfterValidator(_not_reserved)]


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        import shlex

        return shlex.split(value)
    return value


Command = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1), BeforeValidator(_split_command)]


class SecretSpec(_Section):
    """One `services.secrets` entry: an environment variable whose value is read at deploy time,
    from the orchestrator's environment (`env`, default: the same name) or a file (`file`)."""

    name: EnvName
    env: EnvName | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> SecretSpec:
        if self.env is not None and self.file is not None:
            raise ValueError(f"secret {self.name}: give env or file, not both")
        if self.name in RESERVED_ENV:
            raise ValueError(f"secret {self.name}: the name is set by SwiftDeploy on every instance")
        return self

    @property
    def source(self) -> str:
        """Where the value comes from, for messages (never the value)."""
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env or self.name}"


class HealthSpec(_Section):
    """`services.health`: how an instance says it is ready (the compose healthcheck too)."""

    path: HealthPath = "/healthz"
    interval: Seconds = 5.0  # compose healthcheck; the orchestrator's own wait polls every 50 ms
    timeout: Seconds = 3.0
    retries: Annotated[int, Field(ge=1, le=100, strict=True)] = 5
    # How long a starting instance may take: the orchestrator waits this long for its first 200
    # (None: its own health timeout, 30 s; the compose healthcheck then says 5s).
    start_period: Seconds | None = None


class ResourcesSpec(_Section):
    """`services.resources` (docker runtime): limits per instance."""

    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    memory: Annotated[str, Field(pattern=r"^[0-9]+[bkmgBKMG]?$")] | None = None  # e.g. 256m

    @property
    def memory_bytes(self) -> int | None:
        if self.memory is None:
            return None
        unit = self.memory[-1].lower()
        scale = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
        return int(self.memory[:-1]) * scale[unit] if unit in scale else int(self.memory)


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
    image: Image
    port: Port
    version: Annotated[str, Field(min_length=1, strict=True)]
    mode: Mode = Mode.stable
    replicas: Annotated[int, Field(ge=1, le=20, strict=True)] = 1
    # What runs: the process runtime runs `command` (default `python -m workload`); docker runs
    # the image with `command` as its CMD (default: the image's). `args` follow either.
    command: Command | None = None
    args: list[str] = []
    env: Env = {}
    env_file: Path | None = None  # KEY=VALUE lines, relative to the manifest; read at deploy time
    secrets: list[SecretSpec] = []
    health: HealthSpec = HealthSpec()
    resources: ResourcesSpec = ResourcesSpec()
    # Where canary figures come from: nginx's per-request log (any HTTP service), or the app's
    # own /metrics (the seed's metric names).
    metrics: Literal["router", "app"] = "router"
    app_metrics: AppMetricsSpec = AppMetricsSpec()

    @model_validator(mode="after")
    def _secrets_apart(self) -> ServiceSpec:
        names = [s.name for s in self.secrets]
        twice = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(self.env)))
        if twice:
            raise ValueError(f"secret {twice[0]} is given twice (secrets and env must not share a name)")
        return self


class NginxSpec(_Section):
    """`nginx`: the router, the only public entry."""

    image: Image
    port: Port
    proxy_timeout: Annotated[int, Field(ge=1, le=3600, strict=True)] = 30


class NetworkSpec(_Section):
    """`network`: the public network the stack joins."""

    name: Name
    driver_type: Literal["bridge", "overlay", "macvlan", "ipvlan"] = "bridge"


SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _secret_reference(value: str) -> str:
    """A secret is named, never written: `${ENV_VAR}`, read by the process that signs, so the
    secret itself never reaches the bus, a record or the history (the value is not echoed)."""
    if not SECRET_REF.fullmatch(value):
        raise ValueError("must be an environment reference like ${WEBHOOK_SECRET}, never the secret itself")
    return value


SecretRef = Annotated[str, AfterValidator(_secret_reference)]


class GateSpec(_Section):
    """`canary.gates[]`: a URL asked (signed POST of the rollout's state) before a transition; 2xx allows."""

    on: Literal["promotion", "step"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Seconds = 5.0
    secret: SecretRef | None = None


class OpenPause(_Section):
    """`{pause: {}}`: wait for `swiftdeploy promote canary --continue`."""


class PauseStep(_Section):
    """A step that holds the weight reached so far: `{pause: 60}` for that many seconds,
    `{pause: {}}` until `promote canary --continue`. Analysis goes on while it waits."""

    pause: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] | OpenPause

    @property
    def seconds(self) -> float | None:
        """How long it waits; None for an open pause."""
        return None if isinstance(self.pause, OpenPause) else self.pause


Weight = Annotated[int, Field(ge=1, le=100, strict=True)]
Step = Weight | PauseStep


class NoData(str, Enum):
    fail = "fail"  # an interval without usable figures counts as a failed check
    hold = "hold"  # it counts as nothing: the rollout waits (a progress deadline still applies)


class CanarySpec(_Section):
    """`canary`: how a canary is rolled out. version and image default to the service's."""

    version: Annotated[str, Field(min_length=1, strict=True)] | None = None
    image: Image | None = None
    env: Env = {}  # over services.env for the canary's instances
    command: Command | None = None  # instead of services.command for the canary
    steps: Annotated[list[Step], Field(min_length=1)] = [10, 25, 50]
    interval: Seconds = 10
    failure_limit: Annotated[int, Field(ge=1, le=100, strict=True)] = 2
    gates: list[GateSpec] = []
    no_data: NoData = NoData.fail
    # Seconds a step (not an open pause) may take before the rollout rolls back; None: no limit.
    progress_deadline: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] | None = None

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[Step]) -> list[Step]:
        if isinstance(steps[0], PauseStep):
            raise ValueError("must start with a weight (a pause holds the weight reached before it)")
        weights = [s for s in steps if isinstance(s, int)]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"weights must be strictly increasing (got {weights})")
        return steps

    def weight_at(self, step: int) -> int:
        """The canary's percent of traffic at `step`: the last weight at or before it (0 before the first)."""
        weights = [s for s in self.steps[: step + 1] if isinstance(s, int)] if 0 <= step < len(self.steps) else []
        return weights[-1] if weights else 0

    def pause_at(self, step: int) -> PauseStep | None:
        found = self.steps[step] if 0 <= step < len(self.steps) else None
        return found if isinstance(found, PauseStep) else None

    def is_last(self, step: int) -> bool:
        return step >= len(self.steps) - 1


class NotificationSpec(_Section):
    """`notifications[]`: POST each event whose type matches one of `events` (globs) to `url`, signed."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    events: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    secret: SecretRef | None = None
    format: Literal["json", "slack"] = "json"


DEFAULT_OPA_URL = "http://127.0.0.1:8181"


class OpaRun(str, Enum):
    """Who runs OPA when `policy.engine` is `opa`."""

    external = "external"  # the user does; the gatekeeper asks `opa_url`
    process = "process"  # `swiftdeploy up` runs `opa_binary`, on a unix socket in a private folder
    container = "container"  # `swiftdeploy up` runs `opa_image` on an internal Docker network


class PolicySpec(_Section):
    """`policy`: which engine decides, and with `engine: opa`, which OPA."""

    engine: PolicyEngine = PolicyEngine.embedded
    opa: OpaRun = OpaRun.external
    # opa: external only (None: DEFAULT_OPA_URL); unset, not defaulted, so that a manifest that
    # went over the bus (every field dumped) validates again the same way.
    opa_url: Annotated[str, Field(pattern=r"^(https?://|unix:///)")] | None = None
    opa_binary: Annotated[str, Field(min_length=1)] = "opa"
    opa_image: Image = "openpolicyagent/opa:latest"
    timeout: Seconds = 2.0

    @model_validator(mode="after")
    def _one_opa(self) -> PolicySpec:
        if self.opa is not OpaRun.external and self.opa_url is not None:
            raise ValueError(
                f"opa_url is for an OPA you run (opa: external); with opa: {self.opa.value} the control plane chooses where OPA listens"
            )
        return self

    @property
    def external_url(self) -> str:
        """Where the gatekeeper asks an OPA the user runs."""
        return self.opa_url or DEFAULT_OPA_URL


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


# A Swarm placement constraint as `docker service create --constraint` takes it, e.g.
# `node.role==worker`, `node.labels.zone!=eu-1`, `node.hostname==web-2`.
Constraint = Annotated[str, Field(max_length=300, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*\s*(==|!=)\s*[A-Za-z0-9_.:/@-]+$")]
# A spread preference: the node label the tasks spread over, e.g. `node.labels.zone`.
SpreadLabel = Annotated[str, Field(max_length=200, pattern=r"^node\.labels\.[A-Za-z0-9_.-]+$")]


class PlacementSpec(_Section):
    """Where one track's tasks may run on a swarm: every constraint holds, spread over each label."""

    constraints: list[Constraint] = []
    spread: list[SpreadLabel] = []


class SwarmSpec(_Section):
    """`swarm` (runtime swarm): where each track's tasks are placed. nginx always runs on the
    manager the orchestrator talks to (its config and access log are that node's files)."""

    stable: PlacementSpec = PlacementSpec()
    canary: PlacementSpec = PlacementSpec()


class ImagesSpec(_Section):
    """`images` (docker runtime): when images are pulled, and with which credentials."""

    pull: PullPolicy = PullPolicy.missing
    credentials: Path | None = None  # a Docker config.json; None: $DOCKER_CONFIG or ~/.docker/config.json


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
    images: ImagesSpec = ImagesSpec()
    swarm: SwarmSpec = SwarmSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    paths: PathsSpec = PathsSpec()
    notifications: list[NotificationSpec] = []

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

    @property
    def canary_env(self) -> dict[str, str]:
        return {**self.services.env, **self.canary.env}

    @property
    def canary_command(self) -> list[str] | None:
        return self.canary.command or self.services.command


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
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ManifestError(f"{path}: is a symbolic link loop (it never reaches a file)") from None
        if path.is_symlink():
            raise ManifestError(f"{path}: is a symbolic link to {os.readlink(path)}, which does not exist") from None
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
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one, and
    bounds the document before anything is built: nesting depth, and integers by their digits
    (Python refuses to convert more than 4,300, with a traceback far from the field)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[Any] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._path.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            if len(self._path) > INPUT_MAX_DEPTH:
                # types-PyYAML leaves Parser.peek_event unannotated; the next event always has a mark
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
                mark = event.start_mark
                assert mark is not None  # the parser marks every event it builds from a stream
                raise ManifestError(
                    f"{self._field()}: nested more than {INPUT_MAX_DEPTH} levels deep"
                    f" (line {mark.line + 1}, column {mark.column + 1})"
                )
            node = super().compose_node(parent, index)
            if isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG:
                digits = sum(c.isalnum() for c in node.value)
                if digits > INPUT_MAX_DIGITS:
                    raise ManifestError(
                        f"{self._field()}: a number of {digits} digits is too large"
                        f" (at most {INPUT_MAX_DIGITS}; line {node.start_mark.line + 1})"
                    )
            return node
        finally:
            self._path.pop()

    def _field(self) -> str:
        parts = [
            show(p) if not str(p).isidentifier() and not str(p).isdigit() else str(p)
            for p in self._path
            if p is not None
        ]
        if len(parts) > 6:
            parts = [*parts[:3], "…", *parts[-2:]]
        return ".".join(parts) or "(top level)"


_INT_TAG = "tag:yaml.org,2002:int"


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
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
    try:  # aliases can build what the text does not show: bound the built value too
        check_value(data, INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, where="")
    except InputTooLarge as exc:
        raise ManifestError(f"{name}: {str(exc).lstrip('.')}") from None
    return data


def validate_manifest(data: dict[str, Any], name: str = "manifest.yaml") -> Manifest:
    """Validate a parsed mapping; every problem names its field path."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc, Manifest)
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise ManifestError(f"{name}: {problems[0]}{more}") from None
