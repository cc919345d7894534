"""What can go wrong with a device request; each message says why and what is allowed."""

from __future__ import annotations


class DeviceError(ValueError):
    """A request about a device was refused; nothing was changed."""


class UnknownDevice(DeviceError):
    """No device has that id."""


class AlreadyRegistered(DeviceError):
    """A device with that id is registered already."""


class InvalidTransition(DeviceError):
    """The device's lifecycle status does not allow the action."""


class InvalidValue(DeviceError):
    """A field of the request (device id, municipality, actor, time) cannot be used."""


class DeviceBusy(DeviceError):
    """The device stayed locked by another transaction for longer than the lock timeout."""
