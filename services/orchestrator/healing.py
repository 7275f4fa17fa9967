"""Self-healing tracks: the watch that restarts an instance which exited or stopped answering.

Every `services.health.interval` the orchestrator looks at each recorded instance
(`RuntimeDriver.examine`): a dead process or an exited container is restarted at once, one that
runs but fails `services.health.retries` probes in a row is restarted too, and a restart docker's
restart policy did by itself is counted. While a sick instance restarts, nginx holds it out
(`down`) as long as another instance of its track answers; it is put back once it answers again.
Each restart is an `instance.restarted` event and is counted on the instance in the record
(`Instance.restarts`, `restarted_at`); a canary instance restarted `canary.crash_loop.restarts`
times within `canary.crash_loop.window` seconds fails its analysis (`crash_loop`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from services.orchestrator import plans
from services.orchestrator.drivers.base import Examined, InstanceSpec
from services.orchestrator.rollout import Rollout
from swiftdeploy_core.bus.events import InstanceRestarted
from swiftdeploy_core.errors import ConfigError, RuntimeDriverError
from swiftdeploy_core.project.state import Instance, RolloutState, TrackState

KEPT = 100  # restart times kept per instance at most (only the crash-loop window's are needed)

log = logging.getLogger("swiftdeploy.orchestrator.healing")


async def watch(rollout: Rollout) -> list[InstanceRestarted]:
    """One look at every recorded instance; restart what exited or stopped answering. nginx first
    (the sick one held out), the record second, the events last."""
    record, health = rollout.record, rollout.manifest.services.health
    seen = {
        i.name: await rollout.driver.examine(i, health.path, health.timeout)
        for track in _tracks(record)
        for i in track.instances
    }
    now = datetime.now(UTC)
    sick: dict[str, str] = {}  # name -> why it is restarted now
    looked: dict[str, Instance] = {}  # name -> the instance as this look found it
    events: list[InstanceRestarted] = []
    for track in _tracks(record):
        for instance in track.instances:
            found = seen[instance.name]
            looked[instance.name], why = _judge(rollout, instance, found, now)
            if why is not None:
                sick[instance.name] = why
            if found.state == "restarted":  # docker did it: counted, nothing else to do
                events.append(_event(record.project, track, looked[instance.name], found.reason))
    for track in _tracks(record):  # a hung instance waits while a peer is down: it may still serve
        peers_down = any(seen[i.name].state != "healthy" for i in track.instances if i.name not in sick)
        hung = [i.name for i in track.instances if i.name in sick and seen[i.name].state == "unhealthy"]
        exited = [i.name for i in track.instances if i.name in sick and seen[i.name].state == "exited"]
        for name in hung if peers_down or exited else []:
            del sick[name]
    held = _hold_out(record, looked, sick, seen)
    if _routing(held) != _routing(record):
        try:
            await rollout.route(held)  # nginx stops sending requests to the sick ones first (or takes one back)
        except RuntimeDriverError as exc:  # the record keeps what nginx serves: tried again next look
            log.warning("nginx could not hold out or take back instances of %s: %s", record.project, exc)
            held = _with(record, {i.name: i for track in _tracks(held) for i in track.instances}, keep_down=True)
    restarted = dict(looked)
    for track in _tracks(held):
        for instance in track.instances:
            if instance.name not in sick:
                continue
            await rollout.fenced()  # a runtime effect: only while this look holds the project's lease
            try:
                started = await rollout.driver.restart_instance(instance, restart_spec(rollout, track, instance))
            except (RuntimeDriverError, ConfigError) as exc:  # tried again at the next look
                log.warning("could not restart %s: %s", instance.name, exc)
                continue
            restarted[instance.name] = _restarted(rollout, instance, started, now)
            events.append(_event(record.project, track, restarted[instance.name], sick[instance.name]))
    final = _with(held, restarted, keep_down=True)
    if _routing(final) != _routing(held):
        try:
            await rollout.route(final)  # a restart on a new address
        except RuntimeDriverError as exc:  # the record says where it runs: the drift check routes it
            log.warning("nginx could not take the new address of a restarted instance of %s: %s", record.project, exc)
    if final != record:
        await rollout.note(stable=final.stable, canary=final.canary)
    for event in events:
        await rollout.emit(event)
    return events


def crash_loop(rollout: Rollout) -> str | None:
    """Why the canary fails its analysis for crashing: one of its instances restarted
    `canary.crash_loop.restarts` times within the window (None: no crash loop)."""
    record, loop = rollout.record, rollout.manifest.canary.crash_loop
    if record.canary is None:
        return None
    since = datetime.now(UTC) - timedelta(seconds=loop.window)
    for instance in record.canary.instances:
        recent = [t for t in instance.restarted_at if t >= since]
        if len(recent) >= loop.restarts:
            return f"canary instance {instance.name} restarted {len(recent)} times in {loop.window:g} s"
    return None


def restart_spec(rollout: Rollout, track: TrackState, instance: Instance) -> InstanceSpec:
    """The spec `instance` was started from, built again from the record's manifest (secrets
    resolved now, as for any command): the track's settings fingerprint says whether a stable
    track is a promoted canary."""
    manifest = rollout.manifest
    gen = instance.name.removeprefix(f"{manifest.project}-{track.track}-").rpartition("-")[0]
    canary = track.track == "canary"
    candidates = []
    for promoted in (False,) if canary else (False, True):
        env = rollout.service_env(canary=canary or promoted)
        specs = plans.track_specs(manifest, track.track, gen, promoted=promoted, service_env=env, digest=track.digest)
        if not track.settings or plans.settings_of(specs[0], env) == track.settings:
            candidates.append(specs)
        elif specs[0].version == track.version:
            candidates.append(specs)
    specs = candidates[0] if candidates else specs
    named = [s for s in specs if s.name == instance.name]
    return named[0] if named else specs[0].model_copy(update={"name": instance.name})


def _judge(rollout: Rollout, instance: Instance, found: Examined, now: datetime) -> tuple[Instance, str | None]:
    """The instance as this look leaves it, and why it must be restarted now (None: it need not)."""
    health = rollout.manifest.services.health
    if found.state == "healthy":
        return instance.model_copy(update={"down": False, "failed_checks": 0}), None
    if found.state == "restarted" and found.instance is not None:
        return _restarted(rollout, instance, found.instance, now).model_copy(update={"down": False}), None
    if found.state == "exited":
        return instance, found.reason
    grace = health.start_period or rollout.health_timeout  # a restarted instance may boot that long
    if instance.restarted_at and now - instance.restarted_at[-1] < timedelta(seconds=grace):
        return instance, None
    failed = instance.failed_checks + 1
    if failed < health.retries:
        return instance.model_copy(update={"failed_checks": failed}), None
    return instance, f"stopped answering its health check ({found.reason}; {failed} checks in a row)"


def _hold_out(
    record: RolloutState, looked: dict[str, Instance], sick: dict[str, str], seen: dict[str, Examined]
) -> RolloutState:
    """The record with each sick instance marked `down`, as long as another of its track answers
    (nginx then sends it nothing; a track's last instance stays in: there is nowhere else to go)."""
    marked = dict(looked)
    for track in _tracks(record):
        answering = [i.name for i in track.instances if seen[i.name].state == "healthy"]
        for instance in track.instances:
            if instance.name in sick and answering:
                marked[instance.name] = looked[instance.name].model_copy(update={"down": True})
    return _with(record, marked, keep_down=False)


def _restarted(rollout: Rollout, before: Instance, now_running: Instance, at: datetime) -> Instance:
    """`now_running` (a new pid, port or run) carrying `before`'s count, one restart more."""
    since = at - timedelta(seconds=rollout.manifest.canary.crash_loop.window)
    recent = [t for t in before.restarted_at if t >= since][-KEPT + 1 :]
    return now_running.model_copy(
        update={"restarts": before.restarts + 1, "restarted_at": [*recent, at], "down": before.down, "failed_checks": 0}
    )


def _with(record: RolloutState, instances: dict[str, Instance], *, keep_down: bool) -> RolloutState:
    """`record` with its tracks' instances replaced by name (`keep_down`: as they were marked)."""

    def replaced(track: TrackState | None) -> TrackState | None:
        if track is None:
            return None
        new = []
        for old in track.instances:
            instance = instances.get(old.name, old)
            new.append(instance.model_copy(update={"down": old.down}) if keep_down else instance)
        return track.model_copy(update={"instances": new})

    return record.model_copy(update={"stable": replaced(record.stable), "canary": replaced(record.canary)})


def _routing(record: RolloutState) -> list[tuple[str, bool]]:
    """What nginx's config depends on among the instances: each one's address and `down` flag."""
    return [(i.url, i.down) for track in _tracks(record) for i in track.instances]


def _tracks(record: RolloutState) -> list[TrackState]:
    return [t for t in (record.stable, record.canary) if t is not None]


def _event(project: str, track: TrackState, instance: Instance, reason: str) -> InstanceRestarted:
    return InstanceRestarted(
        project=project, track=track.track, instance=instance.name, reason=reason, restarts=instance.restarts
    )
