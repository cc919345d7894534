"""Devices: the registry (CSV import, listing) and the fleet index the rules engine reads."""

from vagt.devices.fleet import Fleet
from vagt.devices.registry import (
    REQUIRED_COLUMNS,
    DeviceImportError,
    DeviceRow,
    ImportResult,
    import_csv,
    list_devices,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "DeviceImportError",
    "DeviceRow",
    "Fleet",
    "ImportResult",
    "import_csv",
    "list_devices",
]
