"""The queue-time budget of /v1/decode (``http.max_queue_ms``): a late request is shed, not computed.

Why time and not only counts: the count bounds (`megdecode.serve.admission`) cap how many
requests wait, but not how long: on a loaded CPU the same queue drains slower, and a BCI
client prefers a fast 503 to a late answer. So the ingress stamps each request when its
route starts (`Deadline.start`), and whoever takes it from a queue checks its age: the
decoder's batch handler answers every request of a batch older than the budget with a
`Shed` marker instead of computing it (the rest of the batch goes on), and the ingress
turns the marker into 503 ``overloaded`` + Retry-After. An accepted request then takes at
most the budget + one batch forward + the HTTP hops.

The stamp is the wall clock (``time.time()``): comparable between the processes of one
node. Across nodes (an ingress and a decoder replica on different machines) the clocks'
skew, typically a few ms under NTP, shifts the budget by as much. The time a request spends
in Serve's proxy before the ingress route starts is not counted: the proxy does not say
when it received it (the proxy's own count bound, ``http.max_queued_requests``, covers it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from megdecode.serve.errors import ApiError


@dataclass(frozen=True)
class Deadline:
    """When the ingress received a request and how long it may wait (0: forever)."""

    arrival_s: float  # time.time() when the ingress route started
    budget_ms: float  # http.max_queue_ms; 0 disables shedding (the age is still reported)

    @classmethod
    def start(cls, budget_ms: float) -> Deadline:
        return cls(time.time(), float(budget_ms))

    def age_ms(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.arrival_s) * 1e3

    def expired(self, now: float | None = None) -> bool:
        return self.budget_ms > 0 and self.age_ms(now) > self.budget_ms


@dataclass(frozen=True)
class Shed:
    """What the batch handler answers, in place of a latent, for a request past its budget."""

    waited_ms: float
    budget_ms: float


def split_expired(deadlines: Sequence[Deadline | None], now: float) -> tuple[list[int], list[int]]:
    """(indices past their budget, indices to compute) of a batch taken at `now`.

    A request without a deadline (a caller that sets none) is always computed."""
    expired: list[int] = []
    live: list[int] = []
    for i, deadline in enumerate(deadlines):
        (expired if deadline is not None and deadline.expired(now) else live).append(i)
    return expired, live


def shed_error(waited_ms: float, budget_ms: float, where: str) -> ApiError:
    """The 503 of a shed request (the ingress adds Retry-After to every 503 it relays)."""
    return ApiError(
        503,
        "overloaded",
        f"the request waited {waited_ms:.0f} ms {where}, past the queue budget of "
        f"{budget_ms:g} ms (http.max_queue_ms); retry later",
    )
