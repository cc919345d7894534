"""Devices: the catalogue of approved models, the registry and each device's lifecycle,
broker access from the registry, and the fleet index the rules engine reads."""

from vagt.devices.actions import (
    deploy,
    register,
    repaired,
    report_lost,
    retire,
    return_device,
    send_to_repair,
)
from vagt.devices.csvfile import REQUIRED_COLUMNS, DeviceImportError
from vagt.devices.errors import (
    AlreadyRegistered,
    DeviceBusy,
    DeviceError,
    InvalidTransition,
    InvalidValue,
    UnknownDevice,
)
from vagt.devices.fleet import Fleet
from vagt.devices.history import DeviceHistory, device_history
from vagt.devices.lifecycle import Status
from vagt.devices.privacy import PrivacyError
from vagt.devices.registry import ImportResult, export_csv, import_csv, list_devices
from vagt.devices.rows import DeviceRow

__all__ = [
    "REQUIRED_COLUMNS",
    "AlreadyRegistered",
    "DeviceBusy",
    "DeviceError",
    "DeviceHistory",
    "DeviceImportError",
    "DeviceRow",
    "Fleet",
    "ImportResult",
    "InvalidTransition",
    "InvalidValue",
    "PrivacyError",
    "Status",
    "UnknownDevice",
    "deploy",
    "device_history",
    "export_csv",
    "import_csv",
    "list_devices",
    "register",
    "repaired",
    "report_lost",
    "retire",
    "return_device",
    "send_to_repair",
]
