"""vagt: the alarm and device-telemetry engine of a joint public telehealth service centre."""

__version__ = "0.1.0"
