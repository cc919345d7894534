"""The REST API's request and response bodies (they are the OpenAPI document's schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from vagt.alerts.actions import MAX_NOTE


def _text(value: str) -> str:
    """A request's string that is text: JSON's `\\ud800` (half of a pair, alone) is none, and
    failed where it was written or answered (HTTP 500); pydantic refuses it only in strings
    it measures (a note's `max_length`), so the others are `Text`."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("not valid text: it holds half of a UTF-16 surrogate pair, "
                         "alone") from None
    return value


Text = Annotated[str, AfterValidator(_text)]


class Alert(BaseModel):
    id: int
    fingerprint: str
    rule: str
    device_id: str | None
    labels: dict[str, object]
    summary: str
    severity: str
    priority: int = Field(description="1 is the most urgent")
    base_priority: int | None = Field(description="the priority before any escalation")
    queue: str
    extra_queues: list[str] = Field(description="further queues it is listed in (continue)")
    route: str | None
    status: str = Field(description="open, claimed, acknowledged, resolved or suppressed")
    opened_at: datetime
    created_at: datetime
    last_fired_at: datetime
    repeat_count: int
    queued_at: datetime | None
    claim_deadline: datetime | None
    breaches: int
    escalated_at: datetime | None
    reopen_count: int
    reopened_at: datetime | None
    claimed_at: datetime | None
    claimed_by: str | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_code: str | None
    note: str | None
    suppressed_at: datetime | None
    suppressed_reason: str | None
    municipality: str | None


class AuditEntry(BaseModel):
    at: datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str
    note: str | None
    details: dict[str, object]


class AlertWithHistory(Alert):
    history: list[AuditEntry]


class Acknowledge(BaseModel):
    note: str | None = Field(default=None, max_length=MAX_NOTE)


class Resolve(BaseModel):
    code: Text = Field(description="a resolution code of the policy, e.g. visit_arranged")
    note: str = Field(min_length=1, max_length=MAX_NOTE, description="what was done")


class Note(BaseModel):
    note: str = Field(min_length=1, max_length=MAX_NOTE)


class NextRequest(BaseModel):
    queues: list[Text] | None = Field(
        default=None, description="the queues to take from; default: the operator's queues "
                                  "(all when the account has none)")


class QueueCounts(BaseModel):
    queue: str
    open: int
    claimed: int
    acknowledged: int
    suppressed: int
    open_by_priority: dict[str, int]
    oldest_open_at: datetime | None


class Silence(BaseModel):
    id: int
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    author: str
    comment: str
    created_at: datetime
    expired_at: datetime | None
    expired_by: str | None
    state: str = Field(description="pending, active or expired")
    warnings: list[str] = Field(
        default_factory=list,
        description="why the silence, made before today's limits, would be refused now, "
                    "and what it does meanwhile (e.g. it holds back no critical alert)")


class NewSilence(BaseModel):
    matchers: list[Text] = Field(min_length=1, examples=[['device_id="OXI-0001"']],
                                description='Alertmanager matchers: name="v", name!="v", '
                                            'name=~"regex", name!~"regex"')
    # with a time zone ("Z" or "+01:00"): a time without one means nothing for sure to
    # a centre on Danish time with a server on UTC
    starts_at: AwareDatetime | None = Field(default=None, description="default: now")
    ends_at: AwareDatetime
    comment: Text = Field(min_length=1)


class Device(BaseModel):
    device_id: str
    vendor: str
    model: str
    type: str
    municipality: str
    status: str
    last_seen: datetime | None
    battery: float | None
    signal: float | None
    firmware: str | None


class Me(BaseModel):
    username: str
    role: str
    municipality: str | None
    queues: list[str]
    via: str


class Session(BaseModel):
    token: str = Field(description="send as `Authorization: Bearer TOKEN`")
    expires_at: datetime


class Problem(BaseModel):
    detail: str
