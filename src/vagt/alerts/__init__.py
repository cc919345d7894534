"""Alerts: the call-centre queue. The engine writes it (`store`), operators act on it (`actions`)."""

from vagt.alerts.actions import (
    AlertError,
    AlertNotFound,
    AlertRow,
    InvalidTransition,
    acknowledge,
    claim,
    list_alerts,
    resolve,
)

__all__ = ["AlertError", "AlertNotFound", "AlertRow", "InvalidTransition", "acknowledge",
           "claim", "list_alerts", "resolve"]
