"""The routing tree: label matchers choose an alert's queue, priority and time to claim.

As in Alertmanager: the root matches every alert; an alert goes down into the first child
whose matchers all match, then stops, unless that child says `continue = true`, when the
next matching siblings are taken too. A node no child of which matches is itself the match.
A child inherits what it does not set from its parent; the root's unset values are the
rule's own queue and priority. The first match gives the queue; later ones (through
`continue`) add their queues, where the alert is listed and can be taken as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vagt.alerts.matchers import Matcher, all_match


@dataclass(frozen=True)
class Route:
    name: str
    matchers: tuple[Matcher, ...] = ()
    queue: str | None = None
    priority: int | None = None
    time_to_claim_s: float | None = None   # None: the priority's time to claim
    continue_: bool = False
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Destination:
    """Where an alert goes: the route that decided, its queue and priority."""

    route: str
    queue: str
    priority: int
    time_to_claim_s: float
    extra_queues: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Settings:
    queue: str
    priority: int
    time_to_claim_s: float | None


def route_alert(root: Route, labels: Mapping[str, object], *, default_queue: str,
                default_priority: int, time_to_claim: Mapping[int, float]) -> Destination:
    """The destination of an alert with these labels; defaults are the rule's queue and priority."""
    base = _Settings(default_queue, default_priority, None)
    matches = _walk(root, labels, _inherit(base, root))
    first_name, first = matches[0]
    extra = tuple(dict.fromkeys(s.queue for _, s in matches[1:] if s.queue != first.queue))
    ttc = first.time_to_claim_s
    if ttc is None:
        ttc = time_to_claim_for(first.priority, time_to_claim)
    return Destination(first_name, first.queue, first.priority, ttc, extra)


def time_to_claim_for(priority: int, table: Mapping[int, float]) -> float:
    """The priority's time to claim; a priority missing from the table takes the next lower one's."""
    for p in range(priority, max(table, default=priority) + 1):
        if p in table:
            return table[p]
    return max(table.values(), default=3600.0)


def _inherit(parent: _Settings, node: Route) -> _Settings:
    return _Settings(node.queue if node.queue is not None else parent.queue,
                     node.priority if node.priority is not None else parent.priority,
                     node.time_to_claim_s if node.time_to_claim_s is not None
                     else parent.time_to_claim_s)


def _walk(node: Route, labels: Mapping[str, object],
          settings: _Settings) -> list[tuple[str, _Settings]]:
    found: list[tuple[str, _Settings]] = []
    for child in node.routes:
        if not all_match(child.matchers, labels):
            continue
        found.extend(_walk(child, labels, _inherit(settings, child)))
        if not child.continue_:
            break
    return found or [(node.name, settings)]


def queues_of(root: Route) -> list[str]:
    """Every queue named anywhere in the tree, in the order they appear."""
    seen: dict[str, None] = {}

    def visit(node: Route) -> None:
        if node.queue:
            seen.setdefault(node.queue)
        for child in node.routes:
            visit(child)

    visit(root)
    return list(seen)


def describe(dest: Destination) -> Sequence[str]:
    """What `vagt alerts route` prints."""
    lines = [f"queue:         {dest.queue}",
             f"priority:      {dest.priority}",
             f"time to claim: {_duration(dest.time_to_claim_s)}",
             f"route:         {dest.route}"]
    if dest.extra_queues:
        lines.append(f"also listed in: {', '.join(dest.extra_queues)} (continue)")
    return lines


def _duration(seconds: float) -> str:
    s = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
