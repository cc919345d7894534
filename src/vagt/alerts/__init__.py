"""Alerts: the call-centre queue. The engine writes it (`store`), operators act on it (`actions`)."""

from vagt.alerts.actions import (
    AlertBusy,
    AlertError,
    AlertNotFound,
    AlertRow,
    AlertStatus,
    InvalidOperator,
    InvalidTransition,
    acknowledge,
    claim,
    list_alerts,
    resolve,
)

__all__ = [
    "AlertBusy",
    "AlertError",
    "AlertNotFound",
    "AlertRow",
    "AlertStatus",
    "InvalidOperator",
    "InvalidTransition",
    "acknowledge",
    "claim",
    "list_alerts",
    "resolve",
]
