"""Alerts: the call-centre queue. The engine writes it (`store`), operators act on it
(`actions`, the REST `api`), the policy (`policy`) routes, escalates and suppresses, and the
outbox (`outbox`, `delivery`) tells the call centre's systems."""

from vagt.alerts.actions import (
    AlertBusy,
    AlertError,
    AlertNotFound,
    AlertRow,
    AlertStatus,
    InvalidOperator,
    InvalidResolution,
    InvalidTransition,
    acknowledge,
    add_note,
    audit_trail,
    claim,
    get_alert,
    list_alerts,
    next_alert,
    release,
    resolve,
)

__all__ = [
    "AlertBusy",
    "AlertError",
    "AlertNotFound",
    "AlertRow",
    "AlertStatus",
    "InvalidOperator",
    "InvalidResolution",
    "InvalidTransition",
    "acknowledge",
    "add_note",
    "audit_trail",
    "claim",
    "get_alert",
    "list_alerts",
    "next_alert",
    "release",
    "resolve",
]
