"""The router plan renders an nginx.conf that a real nginx runs and that splits traffic as planned."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.router import (
    CANARY_UPSTREAM,
    STABLE_UPSTREAM,
    RouterPlan,
    Upstream,
    conf_dirs,
    plan_for_compose,
    plan_for_process,
    render_nginx_conf,
)
from tests.eventually import eventually_sync
from tests.servers import NginxProcess, free_port, require_binary

REPO = Path(__file__).resolve().parents[2]


class Backend(ThreadingHTTPServer):
    """A tiny loopback HTTP server that says which track it is and echoes the request id."""

    daemon_threads = True

    def __init__(self, track: str) -> None:
        self.track = track
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def upstream(self) -> Upstream:
        return Upstream(host="127.0.0.1", port=self.server_address[1])


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms stalls

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps(
            {"track": self.server.track, "path": self.path, "request_id": self.headers.get("X-Request-ID")}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    servers = {"stable": Backend("stable"), "canary": Backend("canary")}
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture
def manifest():
    return load_manifest(REPO / "manifest.yaml").manifest


@pytest.fixture
def router(tmp_path: Path, backends: dict[str, Backend], manifest) -> Iterator:
    """Start a process nginx for a plan; `router(weight, canary=True)` re-renders and reloads."""
    binary = require_binary("nginx")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    nginx = NginxProcess(binary, tmp_path, conf)

    def apply(weight: int, canary: bool = True) -> RouterPlan:
        plan = plan_for_process(
            manifest,
            tmp_path / "state",
            stable=[backends["stable"].upstream],
            canary=[backends["canary"].upstream] if canary else [],
            canary_weight=weight,
            listen_port=port,
        )
        text = render_nginx_conf(plan, "test")
        for folder in conf_dirs(text):
            folder.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
        if nginx.process is None:
            nginx.start(port)
        else:
            nginx.reload()
        return plan

    yield apply
    nginx.stop()


def _get(url: str, path: str = "/", headers: dict[str, str] | None = None, data: bytes | None = None) -> dict:
    request = urllib.request.Request(url + path, headers=headers or {}, data=data)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
        body["response_request_id"] = response.headers.get("X-Request-ID")
        return body


def _tracks(url: str, n: int, headers: dict[str, str] | None = None) -> Counter:
    return Counter(_get(url, headers=headers)["track"] for _ in range(n))


def test_with_no_canary_every_request_goes_to_stable_even_when_asking_for_canary(router):
    plan = router(0, canary=False)
    assert _tracks(plan.url, 20) == {"stable": 20}
    assert _tracks(plan.url, 5, {"X-Canary": "always"}) == {"stable": 5}
    assert _get(plan.url, "/healthz")["track"] == "stable"


def test_a_zero_percent_canary_gets_only_requests_that_ask_for_it(router):
    plan = router(0)
    assert _tracks(plan.url, 30) == {"stable": 30}
    assert _tracks(plan.url, 5, {"X-Canary": "always"}) == {"canary": 5}


def test_chaos_goes_to_the_canary_track_while_one_runs(router):
    plan = router(0)
    answer = _get(plan.url, "/chaos", data=b'{"mode":"recover"}')
    assert (answer["track"], answer["path"]) == ("canary", "/chaos")


def test_a_hundred_percent_canary_takes_everything(router):
    plan = router(100)
    assert _tracks(plan.url, 30) == {"canary": 30}


def test_a_split_is_a_percentage_of_requests_and_a_reload_changes_it(router):
    plan = router(50)
    counts = _tracks(plan.url, 200)
    assert 60 <= counts["canary"] <= 140, counts  # 50% of 200, with room for chance
    plan = router(0)  # graceful reload, same master
    assert _tracks(plan.url, 30) == {"stable": 30}


def test_request_ids_are_made_when_absent_and_kept_when_given(router, tmp_path):
    plan = router(0)
    made = _get(plan.url)
    assert made["request_id"] and len(made["request_id"]) == 32
    assert made["response_request_id"] == made["request_id"]
    given = _get(plan.url, headers={"X-Request-ID": "abc-123"})
    assert given["request_id"] == given["response_request_id"] == "abc-123"
    log_line = _last_log_line(Path(plan.access_log))
    assert log_line["request_id"] == "abc-123" and log_line["status"] == 200
    assert log_line["upstream"] == STABLE_UPSTREAM


def _last_log_line(path: Path) -> dict:
    def last_line() -> str | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return lines[-1] if lines and '"abc-123"' in lines[-1] else None

    return json.loads(eventually_sync(last_line, f"the access log line in {path}", 5, interval=0.05))


def test_the_compose_plan_names_containers_and_listens_inside_the_container(manifest):
    plan = plan_for_compose(manifest)
    conf = render_nginx_conf(plan, "generated from manifest.yaml (sha256 x); do not edit")
    assert conf.startswith("# generated from manifest.yaml (sha256 x); do not edit\n")
    assert "listen 0.0.0.0:8080;" in conf
    assert "server app-stable-1:3000" in conf
    assert "proxy_read_timeout 30s;" in conf and "proxy_connect_timeout 30s;" in conf
    assert "escape=json" in conf
    assert CANARY_UPSTREAM not in conf  # no canary track until a canary runs
    assert "8181" not in conf and "opa" not in conf.lower()  # nothing routes to OPA


def test_the_canary_split_is_only_a_weight_change(manifest):
    canary = [Upstream(host="app-canary-1", port=3000)]
    plan = plan_for_compose(manifest).with_canary(canary, 10)
    ten, twenty_five = render_nginx_conf(plan, "h"), render_nginx_conf(plan.with_canary(canary, 25), "h")
    changed = [(a, b) for a, b in zip(ten.splitlines(), twenty_five.splitlines()) if a != b]
    assert len(ten.splitlines()) == len(twenty_five.splitlines())
    assert all("%" in a and "%" in b for a, b in changed), changed


def test_a_weight_without_a_canary_or_out_of_range_is_refused(manifest):
    plan = plan_for_compose(manifest)
    with pytest.raises(ValidationError):
        plan.with_canary([], 10)
    with pytest.raises(ValidationError):
        plan.with_canary([Upstream(host="c", port=1)], 101)
    with pytest.raises(ValidationError):
        Upstream(host="bad host;", port=80)
