"""The API's documented bodies and the rows they are made from name the same fields, so a
column added to the alert queue cannot silently go missing from the OpenAPI document."""

from __future__ import annotations

import dataclasses

from vagt.alerts.actions import AlertRow, AuditEntry
from vagt.alerts.api import schemas

# not served: the claim deadline (which the API does serve) already says it
NOT_IN_API = {"time_to_claim"}


def test_the_alert_body_has_every_field_of_an_alert_row() -> None:
    row = {f.name for f in dataclasses.fields(AlertRow)} - NOT_IN_API
    assert row == set(schemas.Alert.model_fields)


def test_the_audit_entry_body_has_every_field_of_an_audit_row() -> None:
    assert {f.name for f in dataclasses.fields(AuditEntry)} == \
        set(schemas.AuditEntry.model_fields)
