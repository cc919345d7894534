"""The catalogue of approved models: what each model reports, how often it must be heard from,
its battery and its approved firmware. A device can be registered only as an approved model.

The built-in catalogue is `catalogue.toml` beside this module; the service centre points
`devices.catalogue` (VAGT_CATALOGUE) at its own. Errors name the file, the entry and the field.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vagt.ingest.units import METRICS
from vagt.text import unprintable_problem
from vagt.tomlfile import read_toml

BATTERY_KINDS = ("rechargeable", "replaceable", "mains_backup", "none")
DEVICE_TYPES = ("personal_alarm", "medicine_dispenser", "bp_monitor", "pulse_oximeter", "scale",
                "glucose_meter", "gateway")
_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_FIELDS = {"vendor", "model", "type", "heartbeat_s", "battery", "firmware", "metrics", "events"}


class CatalogueError(ValueError):
    """The catalogue cannot be used, or a device names a model that is not approved."""


@dataclass(frozen=True)
class MetricRange:
    """A metric a model reports, in the metric's canonical unit, and its plausible range."""

    metric: str
    unit: str
    low: float
    high: float


@dataclass(frozen=True)
class Model:
    vendor: str
    model: str
    type: str
    heartbeat_s: int                      # silent for longer than this: overdue
    battery: str                          # one of BATTERY_KINDS
    firmware: tuple[str, ...]             # approved versions; () = any
    metrics: Mapping[str, MetricRange] = field(default_factory=lambda: MappingProxyType({}))
    events: tuple[str, ...] = ()          # glob patterns of the event codes it sends

    @property
    def key(self) -> tuple[str, str]:
        return (self.vendor, self.model)

    def firmware_approved(self, version: str) -> bool:
        return not self.firmware or version in self.firmware

    def sends_event(self, code: str) -> bool:
        return any(fnmatch.fnmatchcase(code, p) for p in self.events)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled (for the alarm lane's process) with its metrics as a dict: a read-only
        view of one cannot be pickled."""
        return _unpickled_model, (self.vendor, self.model, self.type, self.heartbeat_s,
                                  self.battery, self.firmware, dict(self.metrics), self.events)


def _unpickled_model(vendor: str, model: str, type_: str, heartbeat_s: int, battery: str,
                     firmware: tuple[str, ...], metrics: dict[str, MetricRange],
                     events: tuple[str, ...]) -> Model:
    return Model(vendor, model, type_, heartbeat_s, battery, firmware,
                 MappingProxyType(metrics), events)


class Catalogue:
    """Approved models by (vendor, model); iteration is in file order."""

    def __init__(self, models: list[Model], source: str = "") -> None:
        self.source = source
        self._models: dict[tuple[str, str], Model] = {}
        self._folded: dict[tuple[str, str], Model] = {}
        for m in models:
            self._models[m.key] = m
            self._folded[_fold(m.key)] = m

    def __iter__(self) -> Iterator[Model]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, vendor: str, model: str) -> Model | None:
        """The approved model; vendor and model compared without regard to case or spacing."""
        return self._models.get((vendor, model)) or self._folded.get(_fold((vendor, model)))

    def require(self, vendor: str, model: str, type_: str | None = None) -> Model:
        """The approved model, or CatalogueError saying why the device cannot be registered."""
        found = self.get(vendor, model)
        if found is None:
            same_vendor = sorted(m.model for m in self if _fold((m.vendor, "")) ==
                                 _fold((vendor, "")))
            hint = (f"approved {vendor} models: {', '.join(same_vendor)}" if same_vendor else
                    f"approved vendors: {', '.join(sorted({m.vendor for m in self}))}")
            raise CatalogueError(f"{vendor} {model} is not an approved model ({hint}); "
                                 "add it to the catalogue first")
        if type_ is not None and type_ != found.type:
            raise CatalogueError(f"{found.vendor} {found.model} is a {found.type}, "
                                 f"not a {type_}")
        return found

    def types(self) -> list[str]:
        return sorted({m.type for m in self})


def default_catalogue_path() -> Path:
    return Path(str(resources.files("vagt.devices") / "catalogue.toml"))


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The catalogue in `path`, or the built-in one."""
    p = Path(path) if path else default_catalogue_path()
    doc = read_toml(p, CatalogueError, "catalogue file")
    extra = set(doc) - {"model"}
    if extra:
        raise CatalogueError(f"{p}: unknown table(s) {', '.join(sorted(extra))}; "
                             "the catalogue holds [[model]] tables")
    entries = doc.get("model", [])
    if not isinstance(entries, list) or not entries:
        raise CatalogueError(f"{p}: no [[model]] tables")
    models: list[Model] = []
    seen: set[tuple[str, str]] = set()
    for n, entry in enumerate(entries, 1):
        m = _model(p, n, entry)
        if _fold(m.key) in seen:
            raise CatalogueError(f"{p}: model #{n} ({m.vendor} {m.model}) is listed twice")
        seen.add(_fold(m.key))
        models.append(m)
    return Catalogue(models, str(p))


def _model(path: Path, n: int, entry: Any) -> Model:
    where = f"{path}: model #{n}"
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where} must be a table")
    name = f"{entry.get('vendor', '?')} {entry.get('model', '?')}"
    where = f"{path}: model #{n} ({name})"
    unknown = set(entry) - _FIELDS
    if unknown:
        raise CatalogueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(sorted(_FIELDS))}")
    for key in ("vendor", "model", "type"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise CatalogueError(f"{where}: field '{key}' must be a non-empty string")
        if problem := unprintable_problem(entry[key], f"field '{key}'"):
            # shown in every table and label of its devices: named, not repeated
            raise CatalogueError(f"{path}: model #{n}: {problem}")
    if not _TYPE.match(entry["type"]):
        raise CatalogueError(f"{where}: field 'type' must be lowercase words joined by _, "
                             f"e.g. {', '.join(DEVICE_TYPES[:3])}")
    hb = entry.get("heartbeat_s")
    if not isinstance(hb, int) or isinstance(hb, bool) or not 10 <= hb <= 7 * 86400:
        raise CatalogueError(f"{where}: field 'heartbeat_s' must be whole seconds from 10 to "
                             f"604800 (a week), got {hb!r}")
    battery = entry.get("battery")
    if battery not in BATTERY_KINDS:
        raise CatalogueError(f"{where}: field 'battery' must be one of "
                             f"{', '.join(BATTERY_KINDS)}, got {battery!r}")
    firmware = entry.get("firmware", [])
    if not isinstance(firmware, list) or not all(isinstance(v, str) and v for v in firmware):
        raise CatalogueError(f"{where}: field 'firmware' must be a list of version strings")
    for version in firmware:
        if problem := unprintable_problem(version, "a version in field 'firmware'"):
            raise CatalogueError(f"{where}: {problem}")
    events = entry.get("events", [])
    if not isinstance(events, list) or not all(isinstance(v, str) and v for v in events):
        raise CatalogueError(f"{where}: field 'events' must be a list of event code patterns")
    return Model(vendor=entry["vendor"].strip(), model=entry["model"].strip(),
                 type=entry["type"], heartbeat_s=hb, battery=battery,
                 firmware=tuple(firmware), metrics=_metrics(where, entry.get("metrics", {})),
                 events=tuple(events))


def _metrics(where: str, raw: Any) -> Mapping[str, MetricRange]:
    if not isinstance(raw, dict):
        raise CatalogueError(f"{where}: field 'metrics' must be a table of metric = "
                             "{{ min = .., max = .. }}")
    out: dict[str, MetricRange] = {}
    for name, spec in raw.items():
        known = METRICS.get(name)
        if known is None:
            raise CatalogueError(f"{where}: metrics.{name}: not a metric vagt knows; known: "
                                 f"{', '.join(sorted(METRICS))}")
        if not isinstance(spec, dict) or set(spec) - {"min", "max", "unit"}:
            raise CatalogueError(f"{where}: metrics.{name} must be {{ min = .., max = .. }}")
        unit = spec.get("unit", known.unit)
        if unit != known.unit:
            raise CatalogueError(f"{where}: metrics.{name}.unit: ranges are given in the "
                                 f"canonical unit {known.unit}, not {unit}")
        low, high = spec.get("min"), spec.get("max")
        for key, v in (("min", low), ("max", high)):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise CatalogueError(f"{where}: metrics.{name}.{key} must be a number")
        assert isinstance(low, (int, float)) and isinstance(high, (int, float))
        if not known.low <= low < high <= known.high:
            raise CatalogueError(f"{where}: metrics.{name}: need {known.low} <= min < max <= "
                                 f"{known.high} {known.unit}, got {low}..{high}")
        out[name] = MetricRange(name, known.unit, float(low), float(high))
    return MappingProxyType(out)


def _fold(key: tuple[str, str]) -> tuple[str, str]:
    return (" ".join(key[0].split()).casefold(), " ".join(key[1].split()).casefold())
