"""The swarm driver's pure parts: the service specs it sends, and `runtime: swarm` choosing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.orchestrator import plans
from services.orchestrator.drivers import make_driver
from services.orchestrator.drivers.base import Role
from services.orchestrator.drivers.swarm import SwarmDriver, instance_service_spec, router_service_spec, service_of
from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.project.manifest import validate_manifest
from swiftdeploy_core.project.service_env import ServiceEnv


def test_service_specs_are_labelled_dnsrr_host_published_and_keep_secrets_out():
    manifest = validate_manifest(
        {"services": {"name": "shop", "image": "w:1", "port": 3000, "version": "1.0.0", "replicas": 3},
         "nginx": {"image": "n:1", "port": 8080}, "network": {"name": "shop-net"}, "runtime": "swarm",
         "swarm": {"canary": {"constraints": ["node.labels.tier==canary"], "spread": ["node.labels.zone"]}}}
    )  # fmt: skip
    [spec, *_] = plans.track_specs(
        manifest, "canary", "g1", service_env=ServiceEnv(secrets={"TOKEN": SecretStr("s3cr3t-value")})
    )
    secret = {"SecretID": "id", "SecretName": "shop-canary-g1.token", "File": {"Name": "swiftdeploy-env-TOKEN"}}
    body = instance_service_spec(
        spec, service="shop-canary-g1", replicas=3, health=manifest.services.health, where=manifest.swarm.canary,
        secrets=[secret], entrypoint=["python", "-m", "workload"],
    )  # fmt: skip
    assert body["Mode"] == {"Replicated": {"Replicas": 3}}
    assert body["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [{"Protocol": "tcp", "TargetPort": 3000, "PublishMode": "host"}],
    }
    assert body["TaskTemplate"]["Placement"] == {
        "Constraints": ["node.labels.tier==canary"], "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
    }  # fmt: skip
    container = body["TaskTemplate"]["ContainerSpec"]
    assert container["Labels"] == body["Labels"] == plans.labels("shop", Role.instance, "canary", "1.0.0")
    assert container["Command"][-3:] == ["python", "-m", "workload"] and "s3cr3t-value" not in json.dumps(body)
    assert "TOKEN" not in " ".join(container["Env"])
    router = router_service_spec(manifest, "shop", "node1", Path("/c"), Path("/l"))
    assert router["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 8080, "PublishMode": "host"}
    ]
    assert router["TaskTemplate"]["Placement"] == {"Constraints": ["node.id==node1"]}


def test_the_swarm_driver_is_what_runtime_swarm_makes(tmp_path):
    manifest = validate_manifest(
        {"services": {"name": "shop", "image": "w:1", "port": 3000, "version": "1.0.0", "replicas": 2},
         "nginx": {"image": "n:1", "port": 8080}, "network": {"name": "shop-net"}, "runtime": "swarm"}
    )  # fmt: skip
    driver = make_driver(manifest, tmp_path)
    assert isinstance(driver, SwarmDriver) and driver.name == "swarm" and driver.replicas == 2


def test_an_instance_is_a_slot_of_its_tracks_service():
    assert service_of(plans.instance_name("shop", "canary", "ab12cd", 2)) == ("shop-canary-ab12cd", 2)


BASE = {
    "services": {"name": "shop", "image": "w:1", "port": 3000, "version": "1.0.0"},
    "nginx": {"image": "n:1", "port": 8080}, "network": {"name": "shop-net"}, "runtime": "swarm",
}  # fmt: skip


def test_swarm_placement_keys_are_validated_with_one_line_naming_the_field():
    ok = validate_manifest({**BASE, "swarm": {"stable": {"constraints": ["node.role == worker"]}}})
    assert ok.swarm.stable.constraints == ["node.role == worker"] and ok.swarm.canary.spread == []
    with pytest.raises(ManifestError, match=r"^manifest.yaml: swarm.canary.constraints.0: ") as bad:
        validate_manifest({**BASE, "swarm": {"canary": {"constraints": ["node.role=worker"]}}})
    assert "\n" not in str(bad.value)
    with pytest.raises(ManifestError, match=r"swarm.stable.spread.0: "):
        validate_manifest({**BASE, "swarm": {"stable": {"spread": ["zone"]}}})
    with pytest.raises(ManifestError, match=r"swarm.nodes"):
        validate_manifest({**BASE, "swarm": {"nodes": 2}})
