"""A scripted rollout as bus events: deploy, canary, chaos, a blocked promotion, an automatic rollback.

Shared by the report tests (pure) and the auditor service tests (published on a real bus).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from swiftdeploy_core.bus.events import (
    CanaryAnalysis,
    CanaryStarted,
    CanaryWeightChanged,
    ChaosDetected,
    ChaosInjected,
    DecisionMade,
    DeployCompleted,
    DeployStarted,
    DeployStep,
    Event,
    ModeChanged,
    Payload,
    PolicyViolation,
    Pong,
    PromotionBlocked,
    RollbackCompleted,
    Source,
    StatusChecked,
)

ORCHESTRATOR = Source(service="orchestrator", instance="o1")
GATEKEEPER = Source(service="gatekeeper", instance="g1")
COLLECTOR = Source(service="collector", instance="c1")
CLIENT = Source(service="cli", instance="t1")
START = datetime(2026, 11, 26, 7, 0, 0, tzinfo=UTC)
REVISION = "rev-3f2a9c"
ERROR_REASON = "error rate 50.00% exceeds 1.00%"


def _decision(domain: str, allow: bool, reasons: list[str], number: int) -> DecisionMade:
    figures = (
        {"disk_free_gb": 40.0, "cpu_load": 0.4}
        if domain == "infra"
        else {"error_rate": 0.5 if reasons else 0.0, "p99_latency_ms": 80.0, "requests": 120}
    )
    return DecisionMade(
        domain=domain,
        allow=allow,
        reasons=reasons,
        input=figures,
        engine="embedded",
        decision_id=f"dec-{number}",
        policy_revision=REVISION,
        duration_ms=1.2,
    )


def scripted_rollout(start: datetime = START) -> list[Event]:
    """The events of one rollout, in order, one second apart (plus a pong the auditor skips)."""
    deploy, canary, promote, status = "corr-deploy", "corr-canary", "corr-promote", "corr-status"
    steps: list[tuple[str, Source, Payload]] = [
        (deploy, ORCHESTRATOR, DeployStarted(project="app", version="1.0.0", runtime="process")),
        (deploy, GATEKEEPER, _decision("infra", True, [], 1)),
        (deploy, ORCHESTRATOR, DeployStep(step="network created", detail="swiftdeploy-net")),
        (deploy, ORCHESTRATOR, DeployStep(step="nginx healthy")),
        (
            deploy,
            ORCHESTRATOR,
            DeployCompleted(
                project="app", version="1.0.0", url="http://127.0.0.1:8080", instances=["http://127.0.0.1:41001"]
            ),
        ),
        (canary, ORCHESTRATOR, CanaryStarted(version="1.1.0", image="app:1.1.0", weight=10)),
        (canary, ORCHESTRATOR, ModeChanged(mode="canary", previous="stable", version="1.1.0")),
        (canary, ORCHESTRATOR, CanaryWeightChanged(step=0, weight=10, previous=0)),
        (canary, GATEKEEPER, _decision("canary", True, [], 2)),
        (canary, ORCHESTRATOR, CanaryAnalysis(step=0, weight=10, allow=True, decision_id="dec-2")),
        ("corr-chaos", ORCHESTRATOR, ChaosInjected(mode="error", rate=0.5, instances=["http://127.0.0.1:41002"])),
        (
            "corr-chaos",
            COLLECTOR,
            ChaosDetected(target="http://127.0.0.1:41002", track="canary", previous="none", current="error"),
        ),
        (canary, GATEKEEPER, _decision("canary", False, [ERROR_REASON], 3)),
        (canary, GATEKEEPER, PolicyViolation(domain="canary", reasons=[ERROR_REASON], input={}, decision_id="dec-3")),
        (
            canary,
            ORCHESTRATOR,
            CanaryAnalysis(
                step=0, weight=10, allow=False, reasons=[ERROR_REASON], decision_id="dec-3", consecutive_failures=1
            ),
        ),
        (promote, GATEKEEPER, _decision("canary", False, [ERROR_REASON, "p99 latency 900 ms exceeds 500 ms"], 4)),
        (
            promote,
            ORCHESTRATOR,
            PromotionBlocked(reasons=[ERROR_REASON, "p99 latency 900 ms exceeds 500 ms"], decision_id="dec-4"),
        ),
        (
            status,
            CLIENT,
            StatusChecked(
                mode="canary",
                chaos="error",
                error_rate=0.5,
                p99_latency_ms=900.0,
                request_rate=4.0,
                policies={"canary": {"allow": False}},
            ),
        ),
        (status, GATEKEEPER, _decision("canary", False, [ERROR_REASON], 5)),  # a status refresh: not a gate
        (canary, GATEKEEPER, _decision("canary", False, [ERROR_REASON], 6)),
        (
            canary,
            ORCHESTRATOR,
            CanaryAnalysis(
                step=0, weight=10, allow=False, reasons=[ERROR_REASON], decision_id="dec-6", consecutive_failures=2
            ),
        ),
        (canary, ORCHESTRATOR, RollbackCompleted(version="1.0.0", reasons=[ERROR_REASON], automatic=True)),
        (canary, ORCHESTRATOR, ModeChanged(mode="stable", previous="canary", version="1.0.0")),
        ("corr-ping", ORCHESTRATOR, Pong(service="orchestrator", instance="o1")),
    ]
    return [
        Event(payload=payload, source=source, correlation_id=correlation, timestamp=start + timedelta(seconds=i))
        for i, (correlation, source, payload) in enumerate(steps)
    ]


def test_the_script_covers_every_report_section() -> None:
    kinds = {event.type for event in scripted_rollout()}
    assert {
        "deploy.completed",
        "canary.started",
        "chaos.injected",
        "promotion.blocked",
        "rollback.completed",
        "mode.changed",
        "policy.violation",
        "decision.made",
    } <= kinds
