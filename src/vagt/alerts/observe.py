"""What the alert queue reports to metrics, without knowing Prometheus: the application
passes an observer (vagt.app.metrics.EngineMetrics is one)."""

from __future__ import annotations

from typing import Protocol


class AlertObserver(Protocol):
    def claimed(self, queue: str, seconds: float) -> None:
        """An alert was claimed `seconds` after it became claimable."""

    def resolved(self, queue: str, seconds: float) -> None:
        """An alert was resolved `seconds` after it was created."""

    def breached(self, queue: str) -> None:
        """An alert in `queue` was not claimed in time."""

    def unacknowledged(self, queue: str) -> None:
        """A claimed alert in `queue` was not acknowledged in time."""

    def delivery(self, target: str, outcome: str) -> None:
        """A delivery attempt: outcome is delivered, failed (will retry) or dead."""


class NullObserver:
    def claimed(self, queue: str, seconds: float) -> None:
        pass

    def resolved(self, queue: str, seconds: float) -> None:
        pass

    def breached(self, queue: str) -> None:
        pass

    def unacknowledged(self, queue: str) -> None:
        pass

    def delivery(self, target: str, outcome: str) -> None:
        pass
