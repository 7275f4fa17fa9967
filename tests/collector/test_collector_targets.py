"""The collector finds its targets in the orchestrator's rollout records (real Redis) and the
manifest, and measures the host where the runtime keeps its data (real psutil, real dockerd)."""

from __future__ import annotations

import psutil
import redis.asyncio as aioredis

from services.collector.scrape import Target
from services.collector.targets import Project, discover
from swiftdeploy_core.bus import streams
from swiftdeploy_core.project.host import DataRoots, host_stats
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState

MANIFEST = """\
services: {name: shop, image: "shop:1", port: 3000, version: "1.0"}
nginx: {image: "nginx:1", port: 8080}
network: {name: shop-net}
runtime: process
collector:
  targets: ["http://127.0.0.1:9001", "http://127.0.0.1:9002#canary"]
"""


def rollout(project: str, root: str) -> RolloutState:
    def instance(n: int, track: str, version: str) -> Instance:
        return Instance(
            id=str(n), name=f"{project}-{n}", track=track, version=version, url=f"http://127.0.0.1:{7000 + n}"
        )

    return RolloutState(
        project=project, phase=Phase.progressing, runtime="docker", root=root,
        stable=TrackState(track="stable", version="1.0", image="i:1", weight=90,
                          instances=[instance(1, "stable", "1.0"), instance(2, "stable", "1.0")]),
        canary=TrackState(track="canary", version="2.0", image="i:2", weight=10, instances=[instance(3, "canary", "2.0")]),
    )  # fmt: skip


async def test_every_instance_of_every_rollout_is_a_target_with_its_track(redis_url, tmp_path):
    client = aioredis.Redis.from_url(redis_url)
    await client.set(streams.rollout_key("app"), rollout("app", str(tmp_path)).model_dump_json())
    await client.set(streams.rollout_key("other"), rollout("other", "/srv").model_dump_json().replace("700", "710"))
    await client.set(streams.rollout_key("broken"), "{not json")
    await client.hset(streams.rollout_key("odd"), "field", "value")  # not a record: skipped
    found = await discover(client)
    await client.aclose()

    assert [(t.url, t.project, t.track, t.version) for t in found.targets if t.project == "app"] == [
        ("http://127.0.0.1:7001", "app", "stable", "1.0"),
        ("http://127.0.0.1:7002", "app", "stable", "1.0"),
        ("http://127.0.0.1:7003", "app", "canary", "2.0"),
    ]
    assert len(found.targets) == 6
    assert found.projects["app"] == Project("app", "docker", tmp_path)
    assert set(found.projects) == {"app", "other"}


async def test_the_manifest_adds_static_targets_and_its_project(redis_url, tmp_path):
    (tmp_path / "manifest.yaml").write_text(MANIFEST)
    client = aioredis.Redis.from_url(redis_url)
    found = await discover(client, load_manifest(tmp_path / "manifest.yaml"))
    await client.aclose()
    assert found.targets == [
        Target(url="http://127.0.0.1:9001", project="shop", track="stable", version="1.0"),
        Target(url="http://127.0.0.1:9002", project="shop", track="canary", version="1.0"),
    ]
    assert found.projects["shop"] == Project("shop", "process", tmp_path.resolve())


def test_host_stats_measure_the_filesystem_holding_the_path(tmp_path):
    stats = host_stats(tmp_path / "not-created-yet")
    assert stats.path == str(tmp_path.resolve())
    assert abs(stats.disk_free_gb - psutil.disk_usage(str(tmp_path)).free / 1e9) < 1
    assert stats.cpu_count == psutil.cpu_count() and stats.cpu_load >= 0
    assert 0 < stats.memory_available_gb < psutil.virtual_memory().total / 1e9


async def test_the_docker_runtime_is_measured_on_dockers_data_root(docker_daemon, tmp_path):
    roots = DataRoots(docker_daemon)
    docker_root = await roots.for_runtime("docker", tmp_path)
    assert docker_root != tmp_path and docker_root.exists()
    assert await roots.for_runtime("process", tmp_path) == tmp_path


async def test_an_unreachable_dockerd_falls_back_to_the_project_folder(tmp_path):
    roots = DataRoots(f"unix://{tmp_path}/no-docker.sock")
    assert await roots.for_runtime("docker", tmp_path) == tmp_path
