"""The pure plan builders: names, labels, steps, router plans, analysis input and recovery."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from services.orchestrator import plans
from services.orchestrator.drivers.base import InstanceSpec, NetworkSpec, RuntimeObject
from swiftdeploy_core.bus.events import CustomMetric, MetricsSnapshot
from swiftdeploy_core.project.manifest import CanarySpec, validate_manifest
from swiftdeploy_core.project.router import Upstream, render_nginx_conf
from swiftdeploy_core.project.service_env import ServiceEnv
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState

MANIFEST = validate_manifest(
    {
        "services": {
            "name": "shop",
            "image": "swiftdeploy/workload:1.0.0",
            "port": 3000,
            "version": "1.0.0",
            "replicas": 2,
        },
        "nginx": {"image": "swiftdeploy/nginx", "port": 8080},
        "network": {"name": "shop-net"},
        "canary": {"version": "2.0.0", "image": "swiftdeploy/workload:2.0.0", "steps": [10, 25, 50]},
    }
)
LABELS_STABLE = {
    "swiftdeploy.project": "shop",
    "swiftdeploy.role": "instance",
    "swiftdeploy.track": "stable",
    "swiftdeploy.version": "1.0.0",
}


def instance(name: str, track: str = "stable", version: str = "1.0.0", port: int = 4001) -> Instance:
    return Instance(id="1", name=name, track=track, version=version, url=f"http://127.0.0.1:{port}")


def test_a_stable_track_is_one_labelled_spec_per_replica():
    assert plans.track_specs(MANIFEST, "stable", "abc123") == [
        InstanceSpec(
            name=f"shop-stable-abc123-{i}",
            project="shop",
            track="stable",
            version="1.0.0",
            image="swiftdeploy/workload:1.0.0",
            port=3000,
            network="shop-net",
            env={"MODE": "stable", "VERSION": "1.0.0"},
            labels=LABELS_STABLE,
        )
        for i in (1, 2)
    ]


def test_the_canary_runs_the_canary_version_in_canary_mode_and_a_promoted_stable_runs_it_in_stable_mode():
    canary = plans.track_specs(MANIFEST, "canary", "c")[0]
    promoted = plans.track_specs(MANIFEST, "stable", "p", promoted=True)[0]
    assert (canary.version, canary.image, canary.env["MODE"]) == ("2.0.0", "swiftdeploy/workload:2.0.0", "canary")
    assert (promoted.version, promoted.image, promoted.env["MODE"]) == ("2.0.0", "swiftdeploy/workload:2.0.0", "stable")
    assert promoted.labels["swiftdeploy.track"] == "stable"


def test_generations_are_stable_per_seed_and_differ_between_commands():
    assert plans.generation("cmd-1") == plans.generation("cmd-1") != plans.generation("cmd-2")
    assert len(plans.generation("x")) == 6


def test_weights_follow_the_steps():
    canary = CanarySpec(steps=[10, 25, 50])
    assert [canary.weight_at(s) for s in (-1, 0, 1, 2, 3)] == [0, 10, 25, 50, 0]
    assert [canary.is_last(s) for s in (0, 1, 2)] == [False, False, True]


def test_a_pause_holds_the_weight_reached_before_it():
    canary = CanarySpec.model_validate({"steps": [10, {"pause": 60}, 25, {"pause": {}}, 50]})
    assert [canary.weight_at(s) for s in range(5)] == [10, 10, 25, 25, 50]
    assert [p.seconds if (p := canary.pause_at(s)) else "-" for s in range(5)] == ["-", 60, "-", None, "-"]
    assert canary.is_last(4) and not canary.is_last(3)


def test_the_deploy_creates_only_the_public_network_even_with_opa():
    public = [NetworkSpec(name="shop-net", labels={"swiftdeploy.project": "shop", "swiftdeploy.role": "network"})]
    assert plans.network_specs(MANIFEST) == public
    with_opa = MANIFEST.model_copy(update={"policy": MANIFEST.policy.model_copy(update={"engine": "opa"})})
    assert plans.network_specs(with_opa) == public  # OPA is the control plane's, not the app stack's


def test_process_router_plan_points_at_loopback_ports_with_the_weight(tmp_path: Path):
    plan = plans.process_router_plan(
        MANIFEST, tmp_path, [instance("a", port=4001)], [instance("b", "canary", "2.0.0", 4002)], 25
    )
    assert (plan.stable, plan.canary, plan.canary_weight, plan.listen_port) == (
        [Upstream(host="127.0.0.1", port=4001)], [Upstream(host="127.0.0.1", port=4002)], 25, 8080,
    )  # fmt: skip
    assert plans.process_router_plan(MANIFEST, tmp_path, [instance("a")], [], 25).canary_weight == 0


def test_docker_router_plan_points_at_container_names_on_the_service_port():
    plan = plans.docker_router_plan(
        MANIFEST, [instance("shop-stable-x-1")], [instance("shop-canary-y-1", "canary")], 10
    )
    assert (plan.stable, plan.canary, plan.canary_weight, plan.listen_host) == (
        [Upstream(host="shop-stable-x-1", port=3000)], [Upstream(host="shop-canary-y-1", port=3000)], 10, "0.0.0.0",
    )  # fmt: skip


def test_an_instance_held_out_while_it_restarts_is_marked_down_by_its_address_on_docker():
    sick = instance("shop-stable-x-1").model_copy(update={"url": "http://172.27.0.3:3000", "down": True})
    plan = plans.docker_router_plan(MANIFEST, [sick, instance("shop-stable-x-2")], [], 0)
    assert plan.stable == [
        Upstream(host="172.27.0.3", port=3000, down=True),
        Upstream(host="shop-stable-x-2", port=3000),
    ]
    process = plans.process_router_plan(MANIFEST, Path("/tmp/s"), [sick], [], 0)
    assert process.stable == [Upstream(host="172.27.0.3", port=3000, down=True)]
    conf = render_nginx_conf(plan, "test")
    assert "server 172.27.0.3:3000 max_fails=3 fail_timeout=10s down;" in conf
    assert "server shop-stable-x-2:3000 max_fails=3 fail_timeout=10s;" in conf


def _snapshot(**fields) -> MetricsSnapshot:
    base = {"project": "shop", "track": "canary", "version": "2.0.0", "window_seconds": 10, "error_rate": 0.5,
            "p99_latency_ms": 30.0, "requests": 40.0}  # fmt: skip
    return MetricsSnapshot(**{**base, **fields})


CANARY = TrackState(
    track="canary", version="2.0.0", image="i", weight=10, instances=[instance("c", "canary", "2.0.0", 4002)]
)


def test_analysis_input_comes_from_a_fresh_snapshot_of_this_canary():
    assert plans.canary_input(_snapshot(), CANARY) == {
        "error_rate": 0.5, "p99_latency_ms": 30.0, "requests": 40.0,
        "source": "app", "window_seconds": 10, "samples": None, "metrics": {}, "metric_reasons": {},
    }  # fmt: skip
    assert plans.canary_input(_snapshot(targets=["http://127.0.0.1:4002"]), CANARY) is not None


def test_analysis_input_says_where_the_figures_came_from_and_carries_each_custom_metric():
    snapshot = _snapshot(
        source="router", samples=40, window_seconds=9.5,
        metrics={"ratio": CustomMetric(value=0.25), "latency": CustomMetric(reason="no data: the query returned an empty result")},
    )  # fmt: skip
    found = plans.canary_input(snapshot, CANARY)
    assert found is not None
    assert (found["source"], found["window_seconds"], found["samples"]) == ("router", 9.5, 40)
    assert found["metrics"] == {"ratio": 0.25, "latency": None}
    assert found["metric_reasons"] == {"latency": "no data: the query returned an empty result"}


def test_analysis_waits_when_the_snapshot_is_missing_empty_or_about_another_canary():
    assert plans.canary_input(None, CANARY) is None
    assert plans.canary_input(_snapshot(version="1.9.0"), CANARY) is None
    assert plans.canary_input(_snapshot(targets=["http://127.0.0.1:9999"]), CANARY) is None
    assert plans.canary_input(_snapshot(requests=0, error_rate=None), CANARY) is None


def test_the_promotion_gate_always_asks_even_without_figures():
    assert plans.promotion_input(None) == {"error_rate": None, "p99_latency_ms": None, "requests": 0}


def _obj(name: str, track: str, version: str, role: str = "instance") -> RuntimeObject:
    labels = {
        "swiftdeploy.project": "shop",
        "swiftdeploy.role": role,
        "swiftdeploy.track": track,
        "swiftdeploy.version": version,
    }
    return RuntimeObject(kind="process", name=name, id=name, labels=labels, url=f"http://x/{name}")


def test_instances_the_record_does_not_know_are_orphans():
    record = RolloutState(
        project="shop", stable=TrackState(track="stable", version="1.0.0", image="i", instances=[instance("a")])
    )
    objects = [_obj("a", "stable", "1.0.0"), _obj("b", "canary", "2.0.0"), _obj("shop-nginx", "", "", role="router")]
    assert [o.name for o in plans.orphans(record, objects)] == ["b"]


def test_a_lost_record_is_rebuilt_from_labels_and_a_found_canary_is_rolled_back():
    rebuilt = plans.reconstruct("shop", "process", [_obj("a", "stable", "1.0.0"), _obj("b", "canary", "2.0.0")])
    assert rebuilt is not None
    assert (rebuilt.phase, rebuilt.stable.version, rebuilt.stable.weight) == (Phase.rolling_back, "1.0.0", 100)
    assert (rebuilt.canary.weight, [i.name for i in rebuilt.canary.instances]) == (0, ["b"])
    only_stable = plans.reconstruct("shop", "process", [_obj("a", "stable", "1.0.0")])
    assert only_stable.phase == Phase.stable and only_stable.canary is None
    assert plans.reconstruct("shop", "process", []) is None


# --- the service's own settings in the specs and docker's container configs ---------------------

SETTINGS = validate_manifest(
    {
        "services": {
            "name": "ledger", "image": "127.0.0.1:5000/team/ledger:1", "port": 8000, "version": "1.0.0",
            "command": "python3 /srv/ledger/app.py", "args": ["--quiet"], "env": {"GREETING": "hi", "FAIL_RATE": 0},
            "secrets": ["LEDGER_TOKEN"], "health": {"path": "/status"}, "resources": {"cpus": 0.5, "memory": "128m"},
        },
        "nginx": {"image": "n:1", "port": 8080},
        "network": {"name": "ledger-net"},
        "canary": {"env": {"GREETING": "hello"}},
    }
)  # fmt: skip


def test_a_docker_instance_runs_its_digest_with_env_secrets_command_args_and_limits():
    env = ServiceEnv(env=dict(SETTINGS.services.env), secrets={"LEDGER_TOKEN": SecretStr("t0ken")})
    digest = "127.0.0.1:5000/team/ledger@sha256:" + "a" * 64
    [spec] = plans.track_specs(SETTINGS, "stable", "g", service_env=env, digest=digest)
    assert plans.instance_config(spec) == {
        "Image": digest,
        "Cmd": ["python3", "/srv/ledger/app.py", "--quiet"],
        "Env": ["HOST=0.0.0.0", "PORT=8000", "GREETING=hi", "FAIL_RATE=0", "MODE=stable", "VERSION=1.0.0",
                "LEDGER_TOKEN=t0ken"],
        "Labels": {"swiftdeploy.project": "ledger", "swiftdeploy.role": "instance", "swiftdeploy.track": "stable",
                   "swiftdeploy.version": "1.0.0"},
        "ExposedPorts": {"8000/tcp": {}},
        "HostConfig": {"NetworkMode": "ledger-net", "RestartPolicy": {"Name": "unless-stopped"}, "NanoCpus": 500_000_000,
                       "Memory": 128 * 1024**2},
        "NetworkingConfig": {"EndpointsConfig": {"ledger-net": {"Aliases": ["ledger-stable-g-1"]}}},
    }  # fmt: skip
    assert "t0ken" not in spec.model_dump_json() and "t0ken" not in repr(spec)


def test_the_seed_like_manifest_keeps_the_images_cmd_and_sets_no_limits():
    [spec] = plans.track_specs(MANIFEST.model_copy(update={}), "stable", "g")[:1]
    config = plans.instance_config(spec)
    assert "Cmd" not in config and config["Image"] == "swiftdeploy/workload:1.0.0"
    assert config["HostConfig"] == {"NetworkMode": "shop-net", "RestartPolicy": {"Name": "unless-stopped"}}


def test_a_canary_that_only_changes_env_has_another_fingerprint_and_one_identical_has_the_same():
    stable_env = ServiceEnv(env=dict(SETTINGS.services.env))
    canary_env = ServiceEnv(env=SETTINGS.canary_env)
    [stable] = plans.track_specs(SETTINGS, "stable", "a", service_env=stable_env, digest="r@sha256:1")
    [canary] = plans.track_specs(SETTINGS, "canary", "b", service_env=canary_env, digest="r@sha256:1")
    [twin] = plans.track_specs(SETTINGS, "canary", "c", service_env=stable_env, digest="r@sha256:1")
    assert canary.env["GREETING"] == "hello"
    assert plans.settings_of(canary, canary_env) != plans.settings_of(stable, stable_env)
    assert plans.settings_of(twin, stable_env) == plans.settings_of(stable, stable_env)
    [moved] = plans.track_specs(SETTINGS, "canary", "d", service_env=stable_env, digest="r@sha256:2")
    assert plans.settings_of(moved, stable_env) != plans.settings_of(stable, stable_env)


def test_nginx_asks_the_services_own_health_path_and_docker_lists_the_images_it_runs():
    plan = plans.docker_router_plan(SETTINGS, [instance("ledger-stable-g-1")], [], 0)
    assert plan.health_path == "/status"
    assert "proxy_pass http://$swiftdeploy_upstream/status;" in render_nginx_conf(plan, "h")
    assert plans.images(SETTINGS) == ["127.0.0.1:5000/team/ledger:1", "n:1"]
