"""The device lifecycle: its statuses, the transitions allowed between them, and why a
refused one is refused. Pure rules; `vagt.devices.actions` applies them under a row lock,
and migration 0003's trigger holds the database to the same table.

| action          | from                          | to                   |
| --------------- | ----------------------------- | -------------------- |
| register        | (new)                         | in_stock             |
| deploy          | in_stock                      | deployed             |
| return          | deployed                      | in_stock, in_repair  |
| send_to_repair  | in_stock                      | in_repair            |
| repaired        | in_repair                     | in_stock             |
| retire          | in_stock, in_repair           | retired (final)      |
| lost            | deployed, in_stock, in_repair | lost (final)         |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vagt.devices.errors import InvalidTransition


class Status(StrEnum):
    IN_STOCK = "in_stock"
    DEPLOYED = "deployed"
    IN_REPAIR = "in_repair"
    RETIRED = "retired"
    LOST = "lost"


FINAL = frozenset({Status.RETIRED, Status.LOST})


@dataclass(frozen=True)
class Action:
    name: str                       # audit_log.action is "devices.{name}"
    command: str                    # how a person asks for it: `vagt devices {command} ID`
    past: str                       # "a retired device cannot be {past}"
    sources: frozenset[Status]
    targets: frozenset[Status]
    opens_assignment: bool = False
    closes_assignment: bool = False


DEPLOY = Action("deploy", "deploy", "deployed", frozenset({Status.IN_STOCK}),
                frozenset({Status.DEPLOYED}), opens_assignment=True)
RETURN = Action("return", "return", "returned", frozenset({Status.DEPLOYED}),
                frozenset({Status.IN_STOCK, Status.IN_REPAIR}), closes_assignment=True)
SEND_TO_REPAIR = Action("send_to_repair", "repair --send", "sent to repair",
                        frozenset({Status.IN_STOCK}), frozenset({Status.IN_REPAIR}))
REPAIRED = Action("repaired", "repair", "marked repaired", frozenset({Status.IN_REPAIR}),
                  frozenset({Status.IN_STOCK}))
RETIRE = Action("retire", "retire", "retired", frozenset({Status.IN_STOCK, Status.IN_REPAIR}),
                frozenset({Status.RETIRED}))
LOST = Action("lost", "lost", "reported lost",
              frozenset({Status.DEPLOYED, Status.IN_STOCK, Status.IN_REPAIR}),
              frozenset({Status.LOST}), closes_assignment=True)

ACTIONS = {a.name: a for a in (DEPLOY, RETURN, SEND_TO_REPAIR, REPAIRED, RETIRE, LOST)}
REGISTER = "register"


def allowed(status: Status, target: Status) -> Action | None:
    """The action that moves a device from `status` to `target`, if one may."""
    for action in ACTIONS.values():
        if status in action.sources and target in action.targets:
            return action
    return None


def check(device_id: str, status: Status, action: Action, target: Status) -> None:
    """InvalidTransition, saying why and what to do, unless `action` may take the device
    from `status` to `target`."""
    if target not in action.targets:
        raise ValueError(f"{action.name} never leads to {target}")  # a bug, not a refusal
    if status not in action.sources:
        raise InvalidTransition(refusal(device_id, status, action))


def refusal(device_id: str, status: Status, action: Action) -> str:
    """Why `action` is refused for a device in `status`, and what would be allowed."""
    if status in FINAL:
        if status in action.targets:
            return f"{device_id} is already {status}: {status} is final"
        return (f"{device_id} is {status}: {status} is final; a {status} device cannot be "
                f"{action.past}")
    hint = _HINTS.get((action.name, status))
    if hint is None:
        sources = ", ".join(s.value for s in Status if s in action.sources)
        hint = f"only a device that is {sources} can be {action.past}"
    return f"{device_id} is {status}: {hint.format(id=device_id)}"


_HINTS: dict[tuple[str, Status], str] = {
    ("deploy", Status.DEPLOYED): "a device is deployed to one citizen at a time; return it "
                                 "first (vagt devices return {id})",
    ("deploy", Status.IN_REPAIR): "a device in repair cannot be deployed; once repaired "
                                  "(vagt devices repair {id}) it is in stock and can be",
    ("return", Status.IN_STOCK): "only a deployed device can be returned; it is in stock "
                                 "already",
    ("return", Status.IN_REPAIR): "only a deployed device can be returned; it is in repair",
    ("send_to_repair", Status.DEPLOYED): "a deployed device goes to repair when it is "
                                         "returned (vagt devices return {id} --to repair)",
    ("send_to_repair", Status.IN_REPAIR): "it is in repair already",
    ("repaired", Status.IN_STOCK): "only a device in repair can be marked repaired",
    ("repaired", Status.DEPLOYED): "only a device in repair can be marked repaired; a deployed "
                                   "device goes to repair when it is returned "
                                   "(vagt devices return {id} --to repair)",
    ("retire", Status.DEPLOYED): "a deployed device cannot be retired; return it first "
                                 "(vagt devices return {id})",
}
