"""`vagt report vendors` against the real database: a small fleet whose figures are worked out
by hand below, the plain tables' incremental refresh, and the TimescaleDB aggregates' SELECTs.

The period is 2026-03-01 and 2026-03-02 (UTC). By hand:

- ev-1, Evondos E300 (heartbeat 900 s: hourly slots), with a citizen in Aarhus all period: a
  doses_remaining reading every hour but 10:00 and 11:00 on the 1st (46 of 48 hours), two of
  them implausible; battery 80 at 20:00 and 12 at 23:30 on the 2nd; a jam and a dose taken;
  its counter has lost 5 messages. A reading before the period counts for nothing.
- ev-2, Evondos E300, in Odense from the 2nd: readings 00:00-11:00 on the 2nd (12 of 24
  hours), silent since; two faults; 3 messages lost; no battery level.
- ad-1, A&D UA-651BLE (heartbeat a day: daily slots), in Aarhus until 12:00 on the 2nd: a
  blood pressure (two readings, one implausible) and battery 50 at 08:00 on the 1st; a fault.
  Back at the centre, it was tested at 18:00 on the 2nd: that counts for no one.
- ev-3, Evondos E300, in stock all along, sends: it is in no figure.

Evondos: 2 devices, 3 device-days = 0.1 device-months; 58 measurements, 2 bad (34.48 per
1,000); 4 events, 3 faults (30 per device-month); heard 58 of 72 hourly slots (0.8056); ev-2
silent at the end (1 of 2); last battery 12 (median 12, 1 of 1 below 15); 8 messages lost.
A&D: 1 device, 1.5 device-days = 0.05 device-months; 2 measurements, 1 bad (500 per 1,000);
1 event, 1 fault (20 per device-month); heard 1 of 1 daily slot (the 1st; the 2nd is not whole);
not with a citizen at the end (no silence figure); battery 50, none low; none lost.
"""

from __future__ import annotations

import json
import re
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from vagt.app import device_hours
from vagt.app.cli import main
from vagt.devices import report as report_module
from vagt.devices.catalogue import load_catalogue

MIGRATIONS = Path(__file__).resolve().parents[2] / "src/vagt/app/migrations"
DAY1 = datetime(2026, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)

EXPECTED = [
    {"vendor": "A&D", "devices": 1, "device_months": 0.05, "measurements": 2,
     "bad_per_1000": 500.0, "events": 1, "faults": 1, "faults_per_device_month": 20.0,
     "heard_share": 1.0, "silent_at_end": 0, "silent_at_end_share": None,
     "battery_median": 50.0, "low_battery_share": 0.0, "msgs_lost_lifetime": 0,
     "msgs_lost_lifetime_per_device": 0.0},
    {"vendor": "Evondos", "devices": 2, "device_months": 0.1, "measurements": 58,
     "bad_per_1000": 34.48, "events": 4, "faults": 3, "faults_per_device_month": 30.0,
     "heard_share": 0.8056, "silent_at_end": 1, "silent_at_end_share": 0.5,
     "battery_median": 12.0, "low_battery_share": 1.0, "msgs_lost_lifetime": 8,
     "msgs_lost_lifetime_per_device": 4.0},
]


def _device(conn: psycopg.Connection, device_id: str, vendor: str, model: str, type_: str,
            gaps: int, status: str = "deployed") -> None:
    conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, status, "
                 "seq_gaps) VALUES (%s, %s, %s, %s, '', %s, %s)",
                 (device_id, vendor, model, type_, status, gaps))


def _assign(conn: psycopg.Connection, device_id: str, municipality: str, since: datetime,
            until: datetime | None = None) -> None:
    conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, since, "
                 "until) VALUES (%s, %s, %s, %s, %s)",
                 (device_id, f"ref-{device_id}", municipality, since, until))


def _reading(conn: psycopg.Connection, device_id: str, metric: str, t: datetime, value: float,
             bad: bool = False) -> None:
    conn.execute("INSERT INTO readings (time, device_id, metric, value, unit, received_at) "
                 "VALUES (%s, %s, %s, %s, '1', %s)", (t, device_id, metric, value, t))
    if bad:
        conn.execute("INSERT INTO bad_readings (time, device_id, metric, value, vendor, model) "
                     "SELECT %s, device_id, %s, %s, vendor, model FROM devices "
                     "WHERE device_id = %s", (t, metric, value, device_id))


def _event(conn: psycopg.Connection, device_id: str, code: str, t: datetime) -> None:
    conn.execute("INSERT INTO events (time, device_id, code, severity, received_at) "
                 "VALUES (%s, %s, %s, 'major', %s)", (t, device_id, code, t))


@pytest.fixture
def fleet(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        _device(conn, "ev-1", "Evondos", "E300", "medicine_dispenser", 5)
        _device(conn, "ev-2", "Evondos", "E300", "medicine_dispenser", 3)
        _device(conn, "ad-1", "A&D", "UA-651BLE", "bp_monitor", 0, status="in_stock")
        _device(conn, "ev-3", "Evondos", "E300", "medicine_dispenser", 9, status="in_stock")
        _assign(conn, "ev-1", "Aarhus", datetime(2026, 2, 1, tzinfo=UTC))
        _assign(conn, "ev-2", "Odense", DAY2)
        _assign(conn, "ad-1", "Aarhus", datetime(2026, 2, 15, tzinfo=UTC),
                DAY2 + timedelta(hours=12))
        _reading(conn, "ev-1", "doses_remaining", DAY1 - timedelta(minutes=30), 40)
        for h in range(48):
            if h not in (10, 11):
                _reading(conn, "ev-1", "doses_remaining",
                         DAY1 + timedelta(hours=h, minutes=5), 300 if h in (3, 30) else 40,
                         bad=h in (3, 30))
        _reading(conn, "ev-1", "battery", DAY2 + timedelta(hours=20), 80)
        _reading(conn, "ev-1", "battery", DAY2 + timedelta(hours=23, minutes=30), 12)
        _event(conn, "ev-1", "fault.dispenser_jam", DAY1 + timedelta(hours=7))
        _event(conn, "ev-1", "dose.taken", DAY1 + timedelta(hours=8))
        for h in range(12):
            _reading(conn, "ev-2", "doses_remaining", DAY2 + timedelta(hours=h, minutes=1), 30)
        _event(conn, "ev-2", "fault.dispenser_jam", DAY2 + timedelta(hours=2))
        _event(conn, "ev-2", "fault.power_board", DAY2 + timedelta(hours=3))
        at = DAY1 + timedelta(hours=8)
        _reading(conn, "ad-1", "bp_systolic", at, 400, bad=True)
        _reading(conn, "ad-1", "bp_diastolic", at, 80)
        _reading(conn, "ad-1", "battery", at, 50)
        _event(conn, "ad-1", "fault.cuff_leak", DAY1 + timedelta(hours=9))
        _reading(conn, "ad-1", "bp_systolic", DAY2 + timedelta(hours=18), 120)
        _event(conn, "ad-1", "fault.cuff_leak", DAY2 + timedelta(hours=18))
        _reading(conn, "ev-3", "doses_remaining", DAY1 + timedelta(hours=1), 50)
        _event(conn, "ev-3", "fault.dispenser_jam", DAY1 + timedelta(hours=1))
    return database_url


def report(capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, object]]:
    assert main(["report", "vendors", "--from", "2026-03-01", "--to", "2026-03-03", "--json",
                 *extra]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["from"].startswith("2026-03-01T00:00:00")
    groups: list[dict[str, object]] = out["groups"]
    return groups


def test_vendor_figures_are_the_hand_counted_ones(fleet, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # nothing on stderr but the figures' trouble
        groups = report(capsys, "--from", "2026-03-01T00:00:00.0000005Z")
    assert groups == EXPECTED
    assert all(type(g["msgs_lost_lifetime"]) is int for g in groups)   # a count


def test_by_model_names_vendor_and_model(fleet, capsys):
    rows = report(capsys, "--by", "model")
    assert [(r["vendor"], r["model"], r["devices"]) for r in rows] == [
        ("A&D", "UA-651BLE", 1), ("Evondos", "E300", 2)]


def test_municipality_counts_only_the_time_devices_spent_there(fleet, capsys):
    rows = report(capsys, "--municipality", "Aarhus")
    evondos = next(r for r in rows if r["vendor"] == "Evondos")
    # ev-1 alone: 46 measurements, 2 bad, 1 fault in 2 days, 46 of 48 hours
    assert (evondos["devices"], evondos["measurements"], evondos["bad_per_1000"],
            evondos["faults_per_device_month"], evondos["heard_share"],
            evondos["silent_at_end"]) == (1, 46, 43.48, 15.0, 0.9583, 0)


def test_table_output_has_a_row_per_vendor(fleet, capsys):
    assert main(["report", "vendors", "--from", "2026-03-01", "--to", "2026-03-03"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["vendor", "devices", "device_months"]
    assert [line.split()[0] for line in lines[1:]] == ["A&D", "Evondos"]


def test_rows_stored_after_a_report_are_added_once(fleet, capsys):
    report(capsys)
    with psycopg.connect(fleet, autocommit=True) as conn:
        # a late flush from ev-2 for the silent hours, and a fault for ad-1
        for h in (12, 13):
            _reading(conn, "ev-2", "doses_remaining", DAY2 + timedelta(hours=h, minutes=1), 30)
        _event(conn, "ad-1", "fault.cuff_leak", DAY1 + timedelta(hours=10))
    rows = {r["vendor"]: r for r in report(capsys)}
    assert (rows["Evondos"]["measurements"], rows["Evondos"]["heard_share"]) == (60, 0.8333)
    assert rows["A&D"]["faults"] == 2
    assert report(capsys) == [rows["A&D"], rows["Evondos"]]   # a third refresh adds nothing


def test_a_transaction_open_during_a_refresh_is_counted_by_the_next(fleet, capsys,
                                                                    monkeypatch):
    # the first refresh waits that long to index the table behind the open transaction
    monkeypatch.setattr(device_hours, "INDEX_WAIT", "1s")
    with psycopg.connect(fleet) as writer:   # not autocommit: its rows wait for the commit
        _reading(writer, "ev-2", "doses_remaining", DAY2 + timedelta(hours=14), 30)
        with psycopg.connect(fleet, autocommit=True) as conn:
            device_hours.refresh(conn, DAY1.timestamp(), DAY2.timestamp() + 86400)
        writer.commit()
    evondos = next(r for r in report(capsys) if r["vendor"] == "Evondos")
    assert evondos["measurements"] == 59


def _aggregate_selects() -> dict[str, str]:
    """The SELECT of each continuous aggregate in the TimescaleDB migrations, by view name,
    the hourly ones (0019) before the daily ones made from them (0022)."""
    found: dict[str, str] = {}
    for name in ("0019_device_hours.timescale.sql", "0022_device_days.timescale.sql"):
        text = (MIGRATIONS / name).read_text()
        found.update(re.findall(r"CREATE MATERIALIZED VIEW (\w+)\s+WITH \([^)]*\) AS\s+"
                                r"(SELECT.*?)\s+WITH NO DATA;", text, flags=re.S))
    return found


def test_the_aggregates_selects_give_the_report_the_same_figures(fleet):
    """The continuous aggregates' own SELECTs, run as views over the base tables and the
    daily ones over the hourly ones (time_bucket as TimescaleDB defines it for an hour and
    a day), and 0023's view of the days over them, in place of the plain tables, give the
    report the hand-counted figures."""
    selects = _aggregate_selects()
    assert set(selects) == {"readings_hourly", "events_hourly", "readings_daily",
                            "events_daily"}
    text = (MIGRATIONS / "0023_device_days_and_weeks.timescale.sql").read_text()
    device_daily = re.search(r"^CREATE VIEW device_daily AS\s.*?;$", text, flags=re.S | re.M)
    assert device_daily is not None
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION time_bucket(width interval, ts timestamptz) "
                     "RETURNS timestamptz LANGUAGE sql IMMUTABLE AS "
                     "$$ SELECT date_bin(width, ts, TIMESTAMPTZ '2000-01-03 00:00+00') $$")
        conn.execute("DROP TABLE readings_hourly, events_hourly, device_daily, device_weekly")
        for view, select in selects.items():
            conn.execute(f"CREATE VIEW {view} AS {select}")
        conn.execute(device_daily.group(0))
        period = report_module.Period(DAY1.timestamp(), DAY2.timestamp() + 86400)
        # as `vagt report vendors` reads TimescaleDB: days, no weekly counts
        devices = report_module.per_device(conn, load_catalogue(), period, weeks=False)
    assert report_module.records(report_module.summary(devices, "vendor")) == EXPECTED


@pytest.mark.parametrize("zone", ["UTC", "Europe/Copenhagen"])
@pytest.mark.parametrize("start", [
    datetime(2026, 10, 12, tzinfo=UTC),     # three weeks, over the change
    datetime(2026, 10, 26, tzinfo=UTC),     # the day after the week of the change: its
])                                          # first whole week was taken an hour late, and lost
def test_the_report_counts_whole_days_whatever_the_sessions_time_zone(database_url, zone,
                                                                      start):
    """A Danish server's sessions run on Danish time, whose days are 23 or 25 hours long
    when the clocks change (the night to 2026-10-25: the day before the period is 25 hours
    long there): a day is 24 hours in UTC, and a week 7 of them from Monday 00:00 UTC."""
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, status) "
                  "VALUES ('DSP-1', 'Evondos', 'E300', 'medicine_dispenser', 'Aarhus', "
                  "'deployed')")
        c.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, "
                  "since) VALUES ('DSP-1', 'cit-1', 'Aarhus', '2026-09-01Z')")
        c.cursor().executemany(
            "INSERT INTO readings (time, device_id, metric, value, unit, received_at) "
            "VALUES (%s, 'DSP-1', 'doses_remaining', 1, '{doses}', now())",
            [(start + timedelta(hours=h, minutes=5),) for h in range(21 * 24)])
    with psycopg.connect(database_url, autocommit=True, options=f"-c timezone={zone}") as c:
        period = report_module.Period(start.timestamp(), start.timestamp() + 21 * 86400)
        device_hours.refresh(c, period.start, period.end)
        row = report_module.per_device(c, load_catalogue(), period).iloc[0]
    assert (row.measurements, row.slots, row.slots_heard) == (504, 504, 504)


def test_a_device_heard_late_in_the_last_whole_week_is_not_silent_at_the_end(
        database_url, monkeypatch, capsys):
    """A report to Monday 00:30: a daily device's last slot takes in Sunday's evening, an
    hourly one's Sunday's last hour, though Sunday ends a whole week (read from the weekly
    counts on plain PostgreSQL, which have no hours)."""
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    monday = datetime(2026, 3, 9, tzinfo=UTC)
    assert monday.weekday() == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        for device, vendor, model in [("BP-1", "A&D", "UA-651BLE"), ("BP-2", "A&D", "UA-651BLE"),
                                      ("DSP-1", "Evondos", "E300")]:
            _device(conn, device, vendor, model, "bp_monitor", 0)
            _assign(conn, device, "Aarhus", datetime(2026, 1, 1, tzinfo=UTC))
        for day in range(35):                       # 2 February to Sunday 8 March
            at = monday - timedelta(days=35 - day)
            _reading(conn, "BP-1", "bp_systolic", at + timedelta(hours=10 if day < 34 else 20),
                     120)
            if day < 33:                            # nothing after Friday 6 March
                _reading(conn, "BP-2", "bp_systolic", at + timedelta(hours=10), 120)
            for h in range(24):
                _reading(conn, "DSP-1", "doses_remaining", at + timedelta(hours=h, minutes=10),
                         40)
    assert main(["report", "vendors", "--from", "2026-02-02", "--to", "2026-03-09T00:30:00Z",
                 "--json"]) == 0
    groups = {g["vendor"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert (groups["A&D"]["silent_at_end"], groups["Evondos"]["silent_at_end"]) == (1, 0)


def test_on_timescaledb_a_report_of_past_years_refreshes_nothing_retention_has_dropped():
    """TimescaleDB deletes a continuous aggregate's rows over a range whose raw rows are
    dropped, if a refresh covers it: the counts that outlive the raw rows would be lost."""
    day = 86400
    oldest_kept = 1_700_000_000.0 + 0.5 * day
    windows = device_hours.aggregate_windows(oldest_kept - 400 * day, oldest_kept + 10 * day,
                                             oldest_kept)
    assert {view for view, _, _ in windows} == {"readings_hourly", "events_hourly",
                                                "readings_daily", "events_daily"}
    assert min(a for _, a, _ in windows) >= oldest_kept
    assert device_hours.aggregate_windows(oldest_kept - 400 * day, oldest_kept - 30 * day,
                                          oldest_kept) == []


def test_the_first_refresh_indexes_the_stored_transactions_without_holding_the_lanes(
        database_url):
    """Migration 0019 adds the column; its index, a scan of every reading, is built by the
    first refresh, CONCURRENTLY: in the migration it held the tables' lock that long."""
    def valid_indexes(c: psycopg.Connection) -> list[tuple[str, bool]]:
        return c.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c "
                         "ON c.oid = i.indexrelid WHERE c.relname LIKE '%%stored_xid%%' "
                         "ORDER BY 1").fetchall()

    with psycopg.connect(database_url, autocommit=True) as c:
        assert valid_indexes(c) == []
        device_hours.refresh(c, DAY1.timestamp(), DAY2.timestamp())
        assert valid_indexes(c) == [("events_stored_xid_brin", True),
                                    ("readings_stored_xid_brin", True)]
        device_hours.refresh(c, DAY1.timestamp(), DAY2.timestamp())   # once is enough
        assert len(valid_indexes(c)) == 2


def test_a_database_not_yet_migrated_for_the_report_says_so_in_one_line(
        database_url, monkeypatch, capsys):
    """The CLI of the new release against a database its engines have not migrated yet."""
    with psycopg.connect(database_url) as c:
        c.execute("DELETE FROM schema_migrations WHERE version >= 19")
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    assert main(["report", "vendors", "--from", "2026-03-01", "--to", "2026-03-02"]) == 2
    err = capsys.readouterr().err
    assert "run `vagt db migrate`" in err and "Traceback" not in err and err.count("\n") == 1


def test_a_database_migrated_before_its_days_and_weeks_says_which_migration_in_one_line(
        database_url, monkeypatch, capsys):
    """The CLI of this release against a database its engines took to 0022 only."""
    with psycopg.connect(database_url) as c:
        c.execute("DELETE FROM schema_migrations WHERE version >= 23")
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    assert main(["report", "vendors", "--from", "2026-03-01", "--to", "2026-03-02"]) == 2
    err = capsys.readouterr().err
    assert "(migration 0023)" in err and "run `vagt db migrate`" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_an_hour_a_device_spent_with_two_citizens_counts_its_rows_once(
        database_url, monkeypatch, capsys):
    """A dispenser returned at 10:20 and given to the next citizen at 10:40 (a quick swap
    at the door): hour 10:00 is in both stays, and whole in each, but its rows were sent
    once. Over the day: 24 doses_remaining readings (one implausible, at 10:45) and one
    jam (10:55), as the raw rows have them; the hour counted for both stays made it 25
    measurements, 2 faults and 2 bad."""
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        _device(conn, "ev-9", "Evondos", "E300", "medicine_dispenser", 0)
        _assign(conn, "ev-9", "Aarhus", DAY1 - timedelta(days=3),
                DAY1 + timedelta(hours=10, minutes=20))
        conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, "
                     "since) VALUES ('ev-9', 'ref-next', 'Aarhus', %s)",
                     (DAY1 + timedelta(hours=10, minutes=40),))
        for h in range(24):
            _reading(conn, "ev-9", "doses_remaining",
                     DAY1 + timedelta(hours=h, minutes=45), 300 if h == 10 else 40,
                     bad=h == 10)
        _event(conn, "ev-9", "fault.dispenser_jam", DAY1 + timedelta(hours=10, minutes=55))
    assert main(["report", "vendors", "--from", "2026-03-01", "--to", "2026-03-02",
                 "--json"]) == 0
    [evondos] = json.loads(capsys.readouterr().out)["groups"]
    assert (evondos["measurements"], evondos["faults"], evondos["bad_per_1000"],
            evondos["heard_share"]) == (24, 1, 41.67, 1.0)


def test_bad_readings_of_a_period_past_the_retention_are_no_figure_not_zero(
        database_url, monkeypatch, capsys):
    """The report's counts outlive the raw rows; the bad-reading marks go with them. A day
    of 2022 that had 6 bad readings in 24 read 250.0 per 1,000, and after the prune 0.0:
    the vendor looked flawless where nothing is known. Now no figure ('-', null), before
    and after the prune alike; the other figures stand."""
    from vagt.app import retention

    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    day = datetime(2022, 3, 1, tzinfo=UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        _device(conn, "ev-1", "Evondos", "E300", "medicine_dispenser", 0)
        _assign(conn, "ev-1", "Aarhus", day - timedelta(days=1))
        for h in range(24):
            _reading(conn, "ev-1", "doses_remaining", day + timedelta(hours=h, minutes=5), 40,
                     bad=h < 6)

    def figures() -> tuple[object, object]:
        assert main(["report", "vendors", "--from", "2022-03-01", "--to", "2022-03-02",
                     "--json"]) == 0
        [group] = json.loads(capsys.readouterr().out)["groups"]
        return group["measurements"], group["bad_per_1000"]

    assert figures() == (24, None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        retention.prune(conn, datetime(2026, 3, 1, tzinfo=UTC))
    assert figures() == (24, None)
