"""Helpers of the alert tests: devices in the registry and firings as the pipeline makes them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
import psycopg

from vagt.alerts.accounts import add_user
from vagt.alerts.policy import AlertPolicy, load_policy
from vagt.alerts.store import AlertFiring, clear_alerts, record_firings

T0 = time.time() - 3600
POLICY = load_policy(None)   # the built-in policy: what a new installation routes by

# rule -> (the rule's own queue, priority, severity), as in the built-in rules
RULES = {
    "personal_alarm": ("emergency", 1, "critical"),
    "dispenser_jam": ("technical", 2, "major"),
    "battery_low": ("technical", 4, "warning"),
    "device_silent": ("technical", 3, "major"),
    "missed_dose": ("technical", 3, "major"),
    "spo2_low": ("clinical", 2, "major"),
    "spo2_critical": ("clinical", 1, "critical"),
    "spo2_low_sustained": ("clinical", 2, "major"),
}


def add_device(database_url: str, device_id: str, type_: str = "pulse_oximeter",
               municipality: str = "Aarhus", *, status: str = "deployed",
               gateway: str | None = None) -> None:
    attributes = {"gateway_id": gateway} if gateway else {}
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, status, "
                     "attributes) VALUES (%s, 'Acme', 'X1', %s, %s, %s, %s::jsonb)",
                     (device_id, type_, municipality, status,
                      orjson.dumps(attributes).decode()))


def add_operator(database_url: str, name: str, role: str = "operator",
                 municipality: str | None = None) -> None:
    """An account the command line may act as (`--operator`, `--author`), without a password."""
    with psycopg.connect(database_url) as conn:
        add_user(conn, name, role=role, password=None, municipality=municipality,
                 actor="test")


def firing(conn: psycopg.Connection, rule: str, device_id: str, t: float = T0, *,
           code: str | None = None, count: int = 1) -> AlertFiring:
    """A firing with the labels the pipeline gives it (from the registry)."""
    row = conn.execute("SELECT municipality, type, vendor, model FROM devices "
                       "WHERE device_id = %s", (device_id,)).fetchone()
    assert row is not None, f"register {device_id} first"
    queue, priority, severity = RULES[rule]
    labels = {"rule": rule, "device_id": device_id, "municipality": row[0], "type": row[1],
              "vendor": row[2], "model": row[3],
              **({"code": code} if code else {"metric": "battery"})}
    return AlertFiring(rule, device_id, f"{rule} on {device_id}", severity, priority, queue,
                       t, t, count, labels)


def fire(database_url: str, *specs: tuple[str, str] | tuple[str, str, float],
         policy: AlertPolicy = POLICY, code: str | None = None) -> list[tuple[int, str]]:
    """Record firings of (rule, device[, time]) in one committed transaction, as a batch does."""
    with psycopg.connect(database_url) as conn:
        firings = [firing(conn, s[0], s[1], s[2] if len(s) > 2 else T0,  # type: ignore[misc]
                          code=code) for s in specs]
        opened = record_firings(conn, firings, policy)
    return opened


def clear(database_url: str, rule: str, device_id: str, t: float,
          policy: AlertPolicy = POLICY) -> list[int]:
    with psycopg.connect(database_url) as conn:
        return clear_alerts(conn, [f"{rule}|{device_id}"], [t], policy=policy)


def rows(database_url: str, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def alert_of(database_url: str, rule: str, device_id: str) -> tuple[object, ...]:
    """(id, status, queue, priority, suppressed_reason) of the fingerprint's latest alert."""
    found = rows(database_url, "SELECT id, status, queue, priority, suppressed_reason FROM alerts "
                               "WHERE fingerprint = %s ORDER BY id DESC LIMIT 1",
                 (f"{rule}|{device_id}",))
    assert found, f"no alert for {rule}|{device_id}"
    return found[0]
