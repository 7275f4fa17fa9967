"""A service's handler table: keyed by payload class, checked against the catalogue when built."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import PAYLOADS, DeployRequested, DeployStep, Event, Payload, PingRequested
from swiftdeploy_core.bus.worker import Context, ServiceSpec, handler_pairs

INBOX = streams.ORCHESTRATOR_INBOX


async def on_step(payload: DeployStep, event: Event, ctx: Context) -> None:
    pass


async def on_anything(payload: Payload, event: Event, ctx: Context) -> None:
    pass


def test_the_table_is_keyed_by_payload_class_and_dispatched_by_its_event_type() -> None:
    spec = ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: on_step})
    table = spec.handler_table()
    assert table["deploy.step"] is on_step
    assert set(table) == {"deploy.step", "ping.requested"}  # every service answers ping


def test_a_class_outside_the_catalogue_is_refused_when_the_spec_is_built() -> None:
    class DeployStepV2(Payload):  # a look-alike the catalogue does not know
        type: str = "deploy.step"

    class NotAPayload(BaseModel):
        pass

    for stranger in (DeployStepV2, NotAPayload, "deploy.step"):
        with pytest.raises(TypeError, match="not a payload class of the event catalogue"):
            ServiceSpec(name="orchestrator", streams=[INBOX], handlers={stranger: on_step})  # type: ignore[dict-item]


def test_two_handlers_for_one_class_are_refused() -> None:
    with pytest.raises(TypeError, match="two handlers for DeployStep"):
        handler_pairs((DeployStep, on_step), (DeployStep, on_anything))


def test_a_handler_annotated_for_another_payload_is_refused() -> None:
    with pytest.raises(TypeError, match="on_step takes DeployStep, not DeployRequested"):
        ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployRequested: on_step})


def test_a_handler_for_the_base_payload_takes_any_class_and_may_replace_ping() -> None:
    spec = ServiceSpec(name="auditor", streams=[streams.EVENTS], handlers={m: on_anything for m in PAYLOADS.values()})
    assert spec.handler_table()["ping.requested"] is on_anything
    assert len(spec.handler_table()) == len(PAYLOADS)
    assert PAYLOADS["ping.requested"] is PingRequested
