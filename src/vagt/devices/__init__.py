"""Devices: the registry (CSV import, listing) and the fleet index the rules engine reads."""

from vagt.devices.fleet import Fleet
from vagt.devices.registry import (
           DeviceImportError,
           DeviceRow,
           ImportResult,
           import_csv,
           list_devices,
)

__all__ = ["DeviceImportError", "DeviceRow", "Fleet", "ImportResult", "import_csv",
           "list_devices"]
