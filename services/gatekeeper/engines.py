"""The policy engine seam: one small interface, two engines (embedded regopy, OPA over REST).

`PolicyEngine.evaluate(domain, input)` never raises. Whatever goes wrong (bad domain, bad input,
an engine that is down, slow, or answers nonsense) comes back as a deny whose reason says exactly
what; `decide` holds that mapping. An engine implements `answer`, which returns the document at
`data.<domain>` (or `UNDEFINED`) with the revision of the policies that produced it, and raises
`PolicyEngineError` with a one-line reason.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from typing import Any, ClassVar

from services.gatekeeper import decide
from services.gatekeeper.decide import UNDEFINED, Verdict
from swiftdeploy_core.errors import PolicyEngineError

__all__ = ["UNDEFINED", "PolicyEngine", "UnavailableEngine", "Verdict"]

log = logging.getLogger(__name__)


class PolicyEngine(abc.ABC):
    """Answers allow/deny for one policy domain (`infra`, `canary`) and one input document."""

    name: ClassVar[str]

    async def evaluate(self, domain: str, input: Any) -> Verdict:
        """The decision for `input` under `data.<domain>`; fails closed and never raises."""
        revision: str | None = None  # the revision the answer came with; none without an answer
        problem = decide.domain_problem(domain) or decide.input_problem(input)
        if problem:
            verdict = Verdict.deny(problem)
        else:
            try:
                document, revision = await self.answer(domain, decide.engine_input(input))
            except PolicyEngineError as exc:
                verdict = Verdict.deny(str(exc))
            except Exception as exc:
                log.exception("policy engine %s failed on domain %s", self.name, domain)
                verdict = Verdict.deny(f"policy engine error: {type(exc).__name__}: {exc}")
            else:
                verdict = decide.verdict(domain, document)
        return self.stamp(verdict, revision)

    def stamp(self, verdict: Verdict, revision: str | None = None) -> Verdict:
        """`verdict` labelled with the revision it was made with (the engine's current one unless
        given) and the engine's drift note."""
        return dataclasses.replace(
            verdict, revision=self.revision() if revision is None else revision, drift=self.drift()
        )

    @abc.abstractmethod
    async def answer(self, domain: str, input: dict[str, Any]) -> tuple[Any, str]:
        """The document at `data.<domain>` for `input` (or UNDEFINED) and the revision of the
        policies that produced it; PolicyEngineError otherwise."""

    @abc.abstractmethod
    async def health(self) -> str | None:
        """None when the engine can decide; otherwise one line saying why it cannot."""

    @abc.abstractmethod
    def revision(self) -> str:
        """A hash naming the exact policy and data files decisions are made with."""

    def drift(self) -> str:
        """One line when the policies this engine decides with are not the project's files, else ""."""
        return ""

    async def refresh(self) -> None:  # noqa: B027 - an optional hook: only OPA has to ask
        """Bring `revision()` and `drift()` up to date (cheap when they are)."""

    async def close(self) -> None:  # noqa: B027 - an optional hook: most engines hold nothing
        """Release connections; the engine is not used afterwards."""


class UnavailableEngine(PolicyEngine):
    """Stands in when no engine can be built (an unreadable manifest): every decision denies."""

    name = "unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def answer(self, domain: str, input: dict[str, Any]) -> tuple[Any, str]:
        raise PolicyEngineError(self.reason)

    async def health(self) -> str | None:
        return self.reason

    def revision(self) -> str:
        return ""
