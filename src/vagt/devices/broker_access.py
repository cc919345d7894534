"""Broker access from the registry: a Mosquitto password file and ACL file that let each
deployed device publish under its own topic only, a gateway under the topics of the
deployed devices it sends for too (their `gateway_id` attribute names it), and the engine
read every device topic.

A device's password is derived, not stored: base64url(HMAC-SHA256(secret, device_id)),
unpadded. Whoever provisions a device computes it from the same secret; vagt keeps neither
the secret nor any password, only the PBKDF2 hashes Mosquitto checks against.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from vagt.devices.errors import DeviceError
from vagt.devices.lifecycle import Status

# Mosquitto's own `mosquitto_passwd` uses 101 iterations and a 12-byte salt for $7$
# (PBKDF2-SHA512). The derived passwords carry 256 bits of entropy, so more iterations would
# only slow the broker when a whole fleet reconnects after an outage.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
MIN_SECRET_BYTES = 16


# A device logs in with its id as its user name. Mosquitto reads a password file line as
# "user:hash", so ':' would end the name early; the id is also a level of the device's topic
# in the ACL, where '+' and '#' would be wildcards. Only these are safe in both.
BROKER_USER_CHARS = "A-Z a-z 0-9 . _ -"
_BROKER_USER = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


class BrokerAccessError(DeviceError):
    """The files cannot be written as asked; nothing was written."""


@dataclass(frozen=True)
class BrokerAccess:
    """The two files' contents, who is in them, the deployed devices left out of them
    (device id: why), which cannot log in, and the deployed devices whose `gateway_id`
    names no device in the files (device id: that gateway id), for which no gateway may
    publish."""

    passwords: str
    acl: str
    devices: list[str]
    engine_user: str
    left_out: dict[str, str]
    unrelayed: dict[str, str] = field(default_factory=dict)


def device_user_problem(device_id: str) -> str | None:
    """Why a device id cannot be the device's Mosquitto user name, or None when it can."""
    if _BROKER_USER.match(device_id):
        return None
    if ":" in device_id:
        return "':' separates the user name from the password in Mosquitto's password file"
    return f"a device's user name is 1 to 64 of {BROKER_USER_CHARS}"


def device_id_refusal(device_id: str) -> str | None:
    """Why a new device cannot have this id, or None: a device logs in to the broker with
    its id as user name, so a registered id that cannot be one could never log in."""
    problem = device_user_problem(device_id)
    if problem is None:
        return None
    shown = device_id[:70]
    suggestion = re.sub(r"[^A-Za-z0-9._-]", "-", shown)[:64]
    return (f"device id '{shown}' cannot be used: a device logs in to the broker with its id "
            f"as user name, and {problem}; use 1 to 64 of {BROKER_USER_CHARS} (e.g. "
            f"'{suggestion}')")


def device_password(secret: bytes, device_id: str) -> str:
    """The password a device logs in with: base64url(HMAC-SHA256(secret, device_id))."""
    digest = hmac.new(secret, device_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mosquitto_hash(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The password as Mosquitto 2 stores it: $7$iterations$salt$hash (PBKDF2-SHA512)."""
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(key).decode()}")


def _salt(secret: bytes, user: str) -> bytes:
    # Derived, not random: the same registry gives the same files, so a configuration
    # manager sees a change only when access really changed. Unique per user and secret.
    return hmac.new(secret, b"mosquitto-salt\0" + user.encode(), hashlib.sha256).digest()[
        :SALT_BYTES]


def deployed_devices(conn: psycopg.Connection) -> list[str]:
    """The devices that may talk to the broker: the deployed ones, by id."""
    return [r[0] for r in conn.execute(
        "SELECT device_id FROM devices WHERE status = %s ORDER BY device_id",
        (Status.DEPLOYED.value,))]


def relayed_devices(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Per gateway, the deployed devices whose `gateway_id` attribute names it: the
    Bluetooth meters of a household, whose messages the gateway publishes on their topics."""
    behind: dict[str, list[str]] = {}
    for device_id, gateway in conn.execute(
            "SELECT device_id, attributes->>'gateway_id' FROM devices "
            "WHERE status = %s AND attributes->>'gateway_id' <> '' ORDER BY device_id",
            (Status.DEPLOYED.value,)):
        behind.setdefault(gateway, []).append(device_id)
    return behind


def broker_access(device_ids: list[str], *, secret: bytes, topic_root: str,
                  engine_user: str, engine_password: str,
                  behind: Mapping[str, Sequence[str]] | None = None) -> BrokerAccess:
    """The password and ACL files for these devices and the engine's user. `behind`: per
    gateway, the devices it sends for (`relayed_devices`); it may publish under their
    topics as under its own, as long as both are in the files.

    A device whose id cannot be a Mosquitto user name is left out (and named in `left_out`)
    rather than refusing the files: one such id must not keep the old files in force for
    the whole fleet, with the access of every device lost or retired since."""
    if len(secret) < MIN_SECRET_BYTES:
        raise BrokerAccessError(f"the device secret is too short: at least "
                                f"{MIN_SECRET_BYTES} bytes (e.g. `openssl rand -base64 32`)")
    if not topic_root or any(c in topic_root for c in "+#") or topic_root.endswith("/"):
        raise BrokerAccessError(f"topic root '{topic_root}' cannot be used in an ACL: no "
                                "wildcards, no trailing /")
    _check_user("the engine user", engine_user)
    if not engine_password:
        raise BrokerAccessError("the engine user needs a password")
    left_out = {d: problem for d in device_ids
                if (problem := _device_left_out(d, engine_user)) is not None}
    device_ids = [d for d in device_ids if d not in left_out]
    password_lines = [f"{engine_user}:"
                      f"{mosquitto_hash(engine_password, _salt(secret, engine_user))}"]
    password_lines += [f"{d}:{mosquitto_hash(device_password(secret, d), _salt(secret, d))}"
                       for d in device_ids]
    acl_lines = ["# Written by `vagt devices broker-acl`: regenerate it, do not edit it.",
                 "# The engine reads every device topic: a message on a channel it does not",
                 "# read is kept as a dead letter, and the service centre hears of it.",
                 f"user {engine_user}", f"topic read {topic_root}/dev/#", "",
                 "# Each deployed device may publish under its own topic, and read nothing."]
    # Under its own topic's every level, not its three channels only: refused, a message on
    # another (a personal alarm set to 'alarms') is heard of only by an MQTT 5 device (its
    # PUBACK), and an MQTT 3.1.1 device's is dropped unseen; delivered, the engine keeps it
    # as a dead letter and raises an alert (an alarm-looking one in the call centre's
    # queue). `{d}/#` covers the topic `{d}` too. Another device's topics stay refused.
    # A gateway publishes for the Bluetooth meters behind it on their topics (they have no
    # connection of their own): refused, their readings were dropped at the broker, unseen
    # by an MQTT 3.1.1 gateway. It may write what the registry says it sends for, no more.
    listed = set(device_ids)
    for d in device_ids:
        acl_lines += [f"user {d}", f"topic write {topic_root}/dev/{d}/#"]
        acl_lines += [f"topic write {topic_root}/dev/{m}/#"
                      for m in sorted((behind or {}).get(d, ())) if m in listed and m != d]
    # a gateway_id with a typo, or a gateway not deployed: its meters' readings would be
    # refused at the broker unseen, so the files' writer is told (`unrelayed`)
    unrelayed = {m: g for g, meters in (behind or {}).items() if g not in listed
                 for m in meters if m in listed and m != g}
    return BrokerAccess("\n".join(password_lines) + "\n", "\n".join(acl_lines) + "\n",
                        device_ids, engine_user, left_out, dict(sorted(unrelayed.items())))


def _device_left_out(device_id: str, engine_user: str) -> str | None:
    if device_id == engine_user:
        # Its derived password would be a second line for the engine's user, with the
        # engine's access: the device is left out, not the engine.
        return "it is also the engine's user name: give the engine a name no device has"
    return device_user_problem(device_id)


def _check_user(what: str, user: str) -> None:
    if not user or ":" in user or any(c.isspace() for c in user) or not user.isprintable():
        raise BrokerAccessError(f"{what} '{user}' cannot be a Mosquitto user: no ':', no "
                                "spaces")


def write_private(path: Path, content: str) -> None:
    """Write `content` to `path` atomically (a reader sees the old file or the new, never
    half of one), readable and writable by the owner only (0600)."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
