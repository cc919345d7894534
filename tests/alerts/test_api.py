"""The operator REST API on a real uvicorn server: authentication, roles, municipality scope,
the alert actions, silences, devices and the OpenAPI document."""

from __future__ import annotations

import base64
import getpass
import io
import logging
import threading
import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from psycopg import sql
from tests.alerts.support import add_device, alert_of, fire, rows
from tests.support import free_port

from vagt.alerts.accounts import add_user, create_token, disable_user, revoke_token
from vagt.alerts.actions import MAX_NOTE
from vagt.alerts.api.app import create_app
from vagt.alerts.outbox import register_targets
from vagt.alerts.policy import DeliveryPolicy, WebhookTarget, load_policy
from vagt.app.db import open_pool
from vagt.app.metrics import EngineMetrics

PASSWORD = "correct horse battery"


class Api:
    def __init__(self, url: str, database_url: str, metrics: EngineMetrics) -> None:
        self.url = url
        self.database_url = database_url
        self.metrics = metrics
        self.tokens: dict[str, str] = {}

    def as_(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(user, PASSWORD), timeout=10)

    def with_token(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10,
                            headers={"Authorization": f"Bearer {token}"})

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with psycopg.connect(database_url) as conn:
        add_user(conn, "anna", role="operator", password=PASSWORD, actor="test")
        add_user(conn, "bo", role="operator", password=PASSWORD, municipality="Aarhus",
                 actor="test")
        add_user(conn, "sofie", role="supervisor", password=PASSWORD, actor="test")
        add_user(conn, "mette", role="supervisor", password=PASSWORD, municipality="Aarhus",
                 actor="test")
        add_user(conn, "crm", role="operator", password=None, queues=["emergency"],
                 actor="test")
        _, token = create_token(conn, "crm", "callcentre-crm", actor="test")
    add_device(database_url, "OXI-0001", "pulse_oximeter", "Aarhus")
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    metrics = EngineMetrics(CollectorRegistry())
    port = free_port()
    with open_pool(database_url, 1, 4) as pool:
        app = create_app(pool, load_policy(None), observer=metrics)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_config=None, lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.02)
        a = Api(f"http://127.0.0.1:{port}", database_url, metrics)
        a.tokens["crm"] = token
        try:
            yield a
        finally:
            server.should_exit = True
            thread.join(10)


def alarm_and_battery(database_url: str) -> tuple[int, int]:
    (alarm, _), = fire(database_url, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    (battery, _), = fire(database_url, ("battery_low", "OXI-0001"))
    return alarm, battery


# --- authentication, roles, scope ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/alerts", "/api/v1/queues", "/api/v1/silences",
                                  "/api/v1/devices", "/api/v1/alerts/1"])
def test_without_credentials_every_endpoint_answers_401_with_a_challenge(api, path):
    r = api.anonymous().get(path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")


def test_a_wrong_password_an_unknown_user_and_a_disabled_account_answer_401(api):
    assert httpx.get(f"{api.url}/api/v1/alerts", auth=("anna", "wrong password!")
                     ).status_code == 401
    assert httpx.get(f"{api.url}/api/v1/alerts", auth=("nobody", PASSWORD)).status_code == 401
    with psycopg.connect(api.database_url) as conn:
        disable_user(conn, "anna", actor="test")
    assert api.as_("anna").get("/api/v1/alerts").status_code == 401


def test_an_operator_with_a_danish_name_and_password_signs_in(api, monkeypatch):
    """Made as ops make accounts, signed in as a browser or curl sends Basic (UTF-8)."""
    from tests.alerts.test_accounts_cli import run

    password = "rødgrød med fløde på æbleskiver"
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert run(api.database_url, "users", "add", "søren", "--role", "operator",
               "--password-stdin") == 0
    me = httpx.get(f"{api.url}/api/v1/me", auth=("søren", password))
    assert (me.status_code, me.json()["username"]) == (200, "søren")
    # "å" as a and a combining ring (as some keyboards send it) is the same password
    assert httpx.get(f"{api.url}/api/v1/me", auth=("søren", unicodedata.normalize(
        "NFD", password))).status_code == 200
    assert httpx.get(f"{api.url}/api/v1/me", auth=("søren", password.replace("ø", "o"))
                     ).status_code == 401


def test_the_challenge_asks_for_utf_8_and_credentials_that_are_not_utf_8_answer_401(api):
    r = api.anonymous().get("/api/v1/me")
    assert r.headers["WWW-Authenticate"] == 'Basic realm="vagt", charset="UTF-8", Bearer'
    latin1 = base64.b64encode(b"anna:" + PASSWORD.encode("latin-1") + b"\xe6").decode()
    r = api.anonymous().get("/api/v1/me", headers={"Authorization": f"Basic {latin1}"})
    assert r.status_code == 401


def test_password_logins_as_many_as_the_pool_has_connections_leave_a_token_its_connection(
        api, monkeypatch):
    """Each password login runs scrypt; four at once (wrong passwords, or a console sending
    Basic with every request) held the API pool's four connections meanwhile, and an
    operator's token request waited for one. The hashing is held here until the token has
    been answered: with a connection held through it, that answer could not come."""
    from vagt.alerts import accounts

    verify, hashing, go = accounts.verify_password, [], threading.Event()

    def held_verify(stored: str, password: str) -> bool:
        hashing.append(password)
        go.wait(30)
        return verify(stored, password)

    monkeypatch.setattr(accounts, "verify_password", held_verify)
    logins = [threading.Thread(target=httpx.get, args=(f"{api.url}/api/v1/me",),
                               kwargs={"auth": ("anna", f"guess {i}"), "timeout": 60})
              for i in range(4)]
    for t in logins:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(hashing) < 4:
            assert time.monotonic() < deadline, "the logins did not reach the password check"
            time.sleep(0.02)
        assert api.with_token(api.tokens["crm"]).get("/api/v1/me").status_code == 200
    finally:
        go.set()
        for t in logins:
            t.join(60)


def test_failed_logins_are_logged_with_the_name_and_client_never_the_secret(api, caplog):
    caplog.set_level(logging.WARNING, logger="vagt.api")
    assert httpx.get(f"{api.url}/api/v1/me", auth=("anna", "wrong password!")
                     ).status_code == 401
    assert httpx.get(f"{api.url}/api/v1/me", auth=("0101701234", "wrong password!")
                     ).status_code == 401
    assert api.with_token("vagt_not-a-real-token").get("/api/v1/me").status_code == 401
    assert api.as_("anna").get("/api/v1/me").status_code == 200
    failed = [r.getMessage() for r in caplog.records if "api_login_failed" in r.getMessage()]
    assert failed == ["event=api_login_failed via=password user='anna' client=127.0.0.1",
                      "event=api_login_failed via=password user=(unknown) client=127.0.0.1",
                      "event=api_login_failed via=token client=127.0.0.1"]
    assert "wrong password" not in caplog.text and "not-a-real-token" not in caplog.text
    assert "1234" not in caplog.text


def test_no_password_token_or_signing_secret_reaches_a_log_an_audit_row_or_an_answer(
        api, caplog, monkeypatch, capsys):
    """Logins (good and failed), a session, a token made and used, a webhook delivered
    with its signing secret and a token in its URL, and one that failed: every log line
    (all loggers, debug up), every audit row and every answer are searched for each."""
    from tests.alerts.test_accounts_cli import run
    from tests.alerts.test_delivery import Receiver

    from vagt.alerts.delivery import DeliveryWorker, WebhookSender

    caplog.set_level(logging.DEBUG)
    signing = b"the-callcentre-signing-secret-32b"
    receiver = Receiver(failures=1, status=500).start()
    policy = DeliveryPolicy(webhooks=(
        WebhookTarget("cc", receiver.url + "?token=hook-query-token", signing),))
    with psycopg.connect(api.database_url) as conn:
        register_targets(conn, policy)
    alarm, _ = alarm_and_battery(api.database_url)
    answers = [api.as_("anna").post("/api/v1/sessions")]
    session = answers[0].json()["token"]
    assert run(api.database_url, "tokens", "create", "--user", "crm", "--name", "kiosk") == 0
    kiosk = capsys.readouterr().out.strip()
    answers += [api.with_token(session).get("/api/v1/me"),
                api.with_token(kiosk).post(f"/api/v1/alerts/{alarm}/claim"),
                api.with_token(session).get(f"/api/v1/alerts/{alarm}"),
                httpx.get(f"{api.url}/api/v1/me", auth=("anna", "wrong " + PASSWORD)),
                httpx.get(f"{api.url}/api/v1/me", auth=("anna " + PASSWORD, "x")),
                api.with_token(session + "x").get("/api/v1/me")]
    monkeypatch.setattr("sys.stdin", io.StringIO("the new password of anna\n"))
    assert run(api.database_url, "users", "password", "anna", "--password-stdin") == 0
    try:
        with open_pool(api.database_url, 1, 2) as pool:
            worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])],
                                    time.time)
            worker.deliver_due()                          # 500: logged, to be tried again
            with pool.connection() as conn:
                conn.execute("UPDATE alert_deliveries SET next_attempt_at = now()")
            worker.deliver_due()
    finally:
        receiver.stop()
    assert len(receiver.accepted()) >= 1 and "alert_delivery_failed" in caplog.text
    assert [r.status_code for r in answers] == [201, 200, 200, 200, 401, 401, 401]
    stored = str(rows(api.database_url, "SELECT * FROM audit_log")
                 + rows(api.database_url, "SELECT * FROM alert_audit")
                 + rows(api.database_url, "SELECT last_error FROM alert_deliveries"))
    said = caplog.text + capsys.readouterr().err + "".join(r.text for r in answers[1:])
    for secret in (PASSWORD, "the new password of anna", session, kiosk,
                   api.tokens["crm"], signing.decode(), "hook-query-token"):
        assert secret not in said and secret not in stored, secret


def test_an_api_token_works_until_it_is_revoked(api):
    client = api.with_token(api.tokens["crm"])
    me = client.get("/api/v1/me").json()
    assert (me["username"], me["role"], me["via"]) == ("crm", "operator", "token:callcentre-crm")
    with psycopg.connect(api.database_url) as conn:
        token_id = conn.execute("SELECT id FROM api_tokens").fetchone()[0]  # type: ignore[index]
        revoke_token(conn, token_id, actor="test")
    assert client.get("/api/v1/me").status_code == 401
    assert api.with_token("vagt_made-up").get("/api/v1/me").status_code == 401


def test_an_operator_may_not_create_a_silence_403(api):
    r = api.as_("anna").post("/api/v1/silences", json={
        "matchers": ['device_id="OXI-0001"'], "comment": "x",
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert r.status_code == 403
    assert r.json()["detail"] == "this needs the role supervisor or higher; anna is operator"


def test_an_operators_attempt_to_silence_or_end_a_silence_is_audited_with_what_was_asked(api):
    """An attempt to hold alerts back is what the audit of refusals is for, whoever asks."""
    silence = new_silence(api)
    ends_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    crm = api.with_token(api.tokens["crm"])
    made = crm.post("/api/v1/silences", json={
        "matchers": ['rule="personal_alarm"'], "comment": "quiet night",
        "ends_at": ends_at.isoformat()})
    ended = crm.post(f"/api/v1/silences/{silence}/expire")
    assert (made.status_code, ended.status_code) == (403, 403)
    refused = rows(api.database_url, "SELECT actor, subject, details FROM audit_log "
                                     "WHERE action = 'silence.refused' ORDER BY id")
    why = "this needs the role supervisor or higher; crm is operator"
    assert refused == [
        ("crm", "silence (refused)", {
            "matchers": ['rule="personal_alarm"'], "starts_at": refused[0][2]["starts_at"],
            "ends_at": ends_at.isoformat(), "comment": "quiet night", "reason": why,
            "via": "token:callcentre-crm"}),
        ("crm", f"silence {silence}", {"asked": "expire", "silence_id": silence,
                                       "reason": why, "via": "token:callcentre-crm"})]
    assert rows(api.database_url, "SELECT count(*) FROM silences") == [(1,)]


def test_a_municipal_operator_sees_only_their_municipalitys_alerts(api):
    alarm, battery = alarm_and_battery(api.database_url)
    bo = api.as_("bo")
    assert [a["id"] for a in bo.get("/api/v1/alerts").json()] == [battery]
    assert [a["id"] for a in api.as_("anna").get("/api/v1/alerts").json()] == [alarm, battery]
    assert [d["device_id"] for d in bo.get("/api/v1/devices").json()] == ["OXI-0001"]
    assert {q["queue"]: q["open"] for q in bo.get("/api/v1/queues").json()}["emergency"] == 0


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/alerts/{id}"),
    ("POST", "/api/v1/alerts/{id}/claim"),
    ("POST", "/api/v1/alerts/{id}/acknowledge"),
    ("POST", "/api/v1/alerts/{id}/resolve"),
    ("POST", "/api/v1/alerts/{id}/release"),
    ("POST", "/api/v1/alerts/{id}/notes"),
    ("GET", "/api/v1/devices/ALM-0001"),
])
def test_outside_the_callers_municipality_the_answer_is_404(api, method, path):
    alarm, _ = alarm_and_battery(api.database_url)
    r = api.as_("bo").request(method, path.format(id=alarm),
                              json={"note": "x", "code": "false_alarm"})
    assert r.status_code == 404
    assert alert_of(api.database_url, "personal_alarm", "ALM-0001")[1] == "open"


@pytest.mark.parametrize("action", ["claim", "acknowledge", "resolve", "release", "notes"])
def test_another_municipalitys_alert_that_is_busy_answers_404_as_one_that_does_not_exist(
        api, action):
    """Were it locked first and its municipality checked after, a municipal caller would
    be told 503 (busy: so it exists) where an unknown id answers 404."""
    alarm, _ = alarm_and_battery(api.database_url)
    with psycopg.connect(api.database_url) as engine:
        engine.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (alarm,))
        r = api.as_("bo").post(f"/api/v1/alerts/{alarm}/{action}",
                               json={"note": "x", "code": "false_alarm"}, timeout=30)
    unknown = api.as_("bo").post(f"/api/v1/alerts/{alarm + 1000}/{action}",
                                 json={"note": "x", "code": "false_alarm"})
    assert (r.status_code, r.json()["detail"].replace(str(alarm), "ID")) == (
        404, unknown.json()["detail"].replace(str(alarm + 1000), "ID"))


def test_another_municipalitys_silence_that_is_busy_answers_404_at_once(api):
    """Not after waiting for whoever holds it: a wait tells that it exists."""
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": ['device_id="ALM-0001"'], "comment": "away for a week",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    silence = r.json()["id"]
    with psycopg.connect(api.database_url) as engine:
        engine.execute("SELECT 1 FROM silences WHERE id = %s FOR UPDATE", (silence,))
        r = api.as_("mette").post(f"/api/v1/silences/{silence}/expire", timeout=3)
    assert (r.status_code, r.json()["detail"]) == (404, f"there is no silence {silence}")


def test_a_municipal_caller_lists_only_their_municipalitys_silences(api):
    theirs = api.as_("mette").post("/api/v1/silences", json={
        "matchers": ['device_id="OXI-0001"'], "comment": "sent for repair",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()}).json()["id"]
    api.as_("sofie").post("/api/v1/silences", json={
        "matchers": ['device_id="ALM-0001"'], "comment": "away for a week",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    assert [s["id"] for s in api.as_("bo").get("/api/v1/silences").json()] == [theirs]
    assert len(api.as_("anna").get("/api/v1/silences").json()) == 2


# --- alert actions ---------------------------------------------------------------------------


def test_claim_acknowledge_resolve_through_the_api_is_audited_with_the_callers_name(api):
    alarm, _ = alarm_and_battery(api.database_url)
    anna = api.as_("anna")
    assert anna.post(f"/api/v1/alerts/{alarm}/claim").json()["claimed_by"] == "anna"
    assert anna.post(f"/api/v1/alerts/{alarm}/acknowledge",
                     json={"note": "called the citizen"}).json()["status"] == "acknowledged"
    done = anna.post(f"/api/v1/alerts/{alarm}/resolve",
                     json={"code": "visit_arranged", "note": "home carer on site"}).json()
    assert (done["status"], done["resolution_code"]) == ("resolved", "visit_arranged")
    history = anna.get(f"/api/v1/alerts/{alarm}").json()["history"]
    assert [(h["actor"], h["action"], h["from_status"], h["to_status"]) for h in history] == [
        ("rule:personal_alarm", "open", None, "open"), ("anna", "claim", "open", "claimed"),
        ("anna", "ack", "claimed", "acknowledged"), ("anna", "resolve", "acknowledged",
                                                     "resolved")]
    sample = api.metrics.registry.get_sample_value
    assert sample("vagt_alert_time_to_claim_seconds_count", {"queue": "emergency"}) == 1.0
    assert sample("vagt_alert_time_to_resolve_seconds_count", {"queue": "emergency"}) == 1.0


def test_each_step_through_the_api_is_audited_with_how_the_caller_signed_in(api):
    """As the command line records `cli:USER`: the API's password, or the token's name."""
    alarm, _ = alarm_and_battery(api.database_url)
    crm, anna = api.with_token(api.tokens["crm"]), api.as_("anna")
    assert crm.post("/api/v1/alerts/next").json()["id"] == alarm
    assert crm.post(f"/api/v1/alerts/{alarm}/notes", json={"note": "rang"}).status_code == 200
    assert crm.post(f"/api/v1/alerts/{alarm}/release").status_code == 200
    assert anna.post(f"/api/v1/alerts/{alarm}/claim").status_code == 200
    assert anna.post(f"/api/v1/alerts/{alarm}/acknowledge").status_code == 200
    assert anna.post(f"/api/v1/alerts/{alarm}/resolve",
                     json={"code": "visit_arranged", "note": "carer on site"}).status_code == 200
    history = anna.get(f"/api/v1/alerts/{alarm}").json()["history"]
    assert [(h["actor"], h["action"], h["details"].get("via")) for h in history][1:] == [
        ("crm", "claim", "token:callcentre-crm"), ("crm", "note", "token:callcentre-crm"),
        ("crm", "release", "token:callcentre-crm"), ("anna", "claim", "password"),
        ("anna", "ack", "password"), ("anna", "resolve", "password")]


def test_a_claim_of_a_held_alert_answers_409_naming_the_holder(api):
    alarm, _ = alarm_and_battery(api.database_url)
    api.as_("anna").post(f"/api/v1/alerts/{alarm}/claim")
    r = api.as_("sofie").post(f"/api/v1/alerts/{alarm}/claim")
    assert r.status_code == 409
    assert r.json()["detail"].startswith(f"alert {alarm} is already claimed by anna since")


def test_a_resolution_without_a_known_code_answers_422(api):
    alarm, _ = alarm_and_battery(api.database_url)
    r = api.as_("anna").post(f"/api/v1/alerts/{alarm}/resolve",
                             json={"code": "fixed", "note": "done"})
    assert r.status_code == 422
    assert "got 'fixed'" in r.json()["detail"]


def test_next_takes_from_the_accounts_queues_and_answers_204_when_empty(api):
    alarm, _ = alarm_and_battery(api.database_url)
    crm = api.with_token(api.tokens["crm"])       # its account's queues: emergency
    taken = crm.post("/api/v1/alerts/next")
    assert (taken.status_code, taken.json()["id"], taken.json()["claimed_by"]) == (200, alarm,
                                                                                   "crm")
    assert crm.post("/api/v1/alerts/next").status_code == 204


def test_queues_count_alerts_by_status_and_open_ones_by_priority(api):
    alarm_and_battery(api.database_url)
    queues = {q["queue"]: q for q in api.as_("anna").get("/api/v1/queues").json()}
    assert (queues["emergency"]["open"], queues["emergency"]["open_by_priority"]) == (1, {"1": 1})
    assert (queues["technical"]["open"], queues["technical"]["open_by_priority"]) == (1, {"4": 1})
    assert queues["home_care"]["open"] == 0


# --- silences --------------------------------------------------------------------------------


def test_a_supervisor_silences_an_alert_and_expires_the_silence(api):
    _, battery = alarm_and_battery(api.database_url)
    sofie = api.as_("sofie")
    created = sofie.post("/api/v1/silences", json={
        "matchers": ['device_id="OXI-0001"'], "comment": "sent for repair",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    assert created.status_code == 201, created.text
    silence = created.json()
    assert (silence["author"], silence["state"]) == ("sofie", "active")
    assert api.as_("anna").get(f"/api/v1/alerts/{battery}").json()["status"] == "suppressed"
    assert [s["id"] for s in api.as_("anna").get("/api/v1/silences").json()] == [silence["id"]]
    expired = sofie.post(f"/api/v1/silences/{silence['id']}/expire").json()
    assert (expired["state"], expired["expired_by"]) == ("expired", "sofie")
    assert api.as_("anna").get(f"/api/v1/alerts/{battery}").json()["status"] == "open"


def test_a_municipal_supervisors_silence_is_limited_to_their_municipality(api):
    alarm, battery = alarm_and_battery(api.database_url)
    r = api.as_("mette").post("/api/v1/silences", json={
        "matchers": ['severity=~"warning|info"'], "comment": "planned network work",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    assert r.json()["matchers"] == ['severity=~"warning|info"', 'municipality="Aarhus"']
    anna = api.as_("anna")
    assert anna.get(f"/api/v1/alerts/{battery}").json()["status"] == "suppressed"
    assert anna.get(f"/api/v1/alerts/{alarm}").json()["status"] == "open"
    assert api.as_("sofie").post(f"/api/v1/silences/{r.json()['id']}/expire").status_code == 200


@pytest.mark.parametrize("matchers", [
    ['severity="critical"'], ['rule="personal_alarm"'], ['type="personal_alarm"'],
    ['device_id=~"(?!vagt-probe-).+"'], ['severity!="info"', 'rule=~".+"']])
def test_a_silence_that_could_hide_personal_alarms_answers_422_and_the_alarm_gets_through(
        api, matchers):
    """The silences a security review made on main: each held back every personal alarm,
    and the call centre never heard of them."""
    with psycopg.connect(api.database_url) as conn:
        register_targets(conn, DeliveryPolicy(webhooks=(WebhookTarget(
            "callcentre", "http://127.0.0.1:9/unused", b"s" * 32),)))
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": matchers, "comment": "quiet night", "ends_at": "2099-01-01T00:00:00Z"})
    assert r.status_code == 422
    assert ("could hold back" in r.json()["detail"]
            or "lookahead" in r.json()["detail"]), r.text
    assert api.as_("sofie").get("/api/v1/silences").json() == []
    alarm, _ = alarm_and_battery(api.database_url)
    assert api.as_("anna").get(f"/api/v1/alerts/{alarm}").json()["status"] == "open"
    assert rows(api.database_url, "SELECT event FROM alert_outbox WHERE alert_id = %s",
                (alarm,)) == [("opened",)]


def test_a_municipal_supervisors_silence_of_personal_alarms_answers_422(api):
    r = api.as_("mette").post("/api/v1/silences", json={
        "matchers": ['rule="personal_alarm"'], "comment": "quiet night",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    assert r.status_code == 422
    assert "critical alerts of the municipality Aarhus (of personal_alarm)" in \
        r.json()["detail"]


def test_a_silence_of_a_personal_alarms_own_device_is_allowed_for_up_to_max_silence(api):
    sofie = api.as_("sofie")
    body = {"matchers": ['device_id="ALM-0001"'], "comment": "technician testing it"}
    r = sofie.post("/api/v1/silences", json={**body, "ends_at": "2099-01-01T00:00:00Z"})
    assert r.status_code == 422
    assert "a silence may last at most 3d (the alert policy's max_silence)" in \
        r.json()["detail"]
    r = sofie.post("/api/v1/silences", json={
        **body, "ends_at": (datetime.now(UTC) + timedelta(days=2)).isoformat()})
    assert r.status_code == 201, r.text
    alarm, _ = alarm_and_battery(api.database_url)
    alert = api.as_("anna").get(f"/api/v1/alerts/{alarm}").json()
    assert (alert["status"], alert["suppressed_reason"]) == (
        "suppressed", f"silence {r.json()['id']} by sofie: technician testing it")


def test_a_silence_made_before_the_limits_is_listed_with_warnings(api):
    with psycopg.connect(api.database_url) as conn:
        conn.execute("INSERT INTO silences (matchers, starts_at, ends_at, author, comment) "
                     "VALUES ('[{\"name\": \"severity\", \"op\": \"=\", "
                     "\"value\": \"critical\"}]', now(), '2099-01-01', 'sofie', 'x')")
    [listed] = api.as_("anna").get("/api/v1/silences").json()
    assert listed["warnings"][0] == (
        "it names no device, and could match critical alerts (of personal_alarm, "
        "spo2_critical, alarm_processing_failed, unreadable_alarm, unregistered_alarm, "
        "alarm_before_deployment): it holds back none of them")
    assert listed["warnings"][1].endswith(": it holds back no critical alert")
    alarm, _ = alarm_and_battery(api.database_url)
    assert api.as_("anna").get(f"/api/v1/alerts/{alarm}").json()["status"] == "open"


@pytest.mark.parametrize(("matchers", "hours", "why"), [
    (['rule="personal_alarm"'], 2, "could hold back critical alerts (of personal_alarm)"),
    (['device_id="ALM-0001"'], 24 * 30, "a silence may last at most 3d"),
    (['device_id=~"(a+)+"'], 2, "(a+)+"),
], ids=["too broad", "too long", "runaway pattern"])
def test_a_refused_silence_answers_422_and_is_in_the_audit_log_with_who_what_and_why(
        api, matchers, hours, why):
    """Every operator action is audited, a refused one too: the request's transaction is
    rolled back on the refusal, the audit entry is not."""
    ends_at = (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": matchers, "comment": "quiet night", "ends_at": ends_at.isoformat()})
    assert r.status_code == 422
    assert why in r.json()["detail"]
    [(actor, subject, details)] = rows(
        api.database_url, "SELECT actor, subject, details FROM audit_log "
                          "WHERE action = 'silence.refused'")
    assert (actor, subject) == ("sofie", "silence (refused)")
    assert details["matchers"] == matchers
    assert (details["comment"], details["reason"]) == ("quiet night", r.json()["detail"])
    assert datetime.fromisoformat(details["ends_at"]) == ends_at
    assert rows(api.database_url, "SELECT count(*) FROM silences") == [(0,)]


def test_a_municipal_supervisors_refused_silence_is_audited_as_it_was_asked_for(api):
    r = api.as_("mette").post("/api/v1/silences", json={
        "matchers": ['rule="personal_alarm"'], "comment": "quiet night",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    assert r.status_code == 422
    [(actor, matchers)] = rows(api.database_url, "SELECT actor, details->'matchers' "
                                                 "FROM audit_log WHERE action = 'silence.refused'")
    assert (actor, matchers) == ("mette", ['rule="personal_alarm"', 'municipality="Aarhus"'])


def new_silence(api: Api, user: str = "sofie") -> int:
    r = api.as_(user).post("/api/v1/silences", json={
        "matchers": ['device_id="OXI-0001"'], "comment": "sent for repair",
        "ends_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_a_silence_made_and_ended_through_the_api_is_audited_with_how_its_author_came(api):
    """As the command line records `cli:USER`: the API's password or token, as /me says."""
    with psycopg.connect(api.database_url) as conn:
        _, token = create_token(conn, "sofie", "night-console", actor="test")
    silence = new_silence(api)
    assert api.with_token(token).post(f"/api/v1/silences/{silence}/expire").status_code == 200
    assert rows(api.database_url, "SELECT action, actor, details->>'via' FROM audit_log "
                                  "WHERE action IN ('silence.create', 'silence.expire') "
                                  "ORDER BY id") == [
        ("silence.create", "sofie", "password"),
        ("silence.expire", "sofie", "token:night-console")]


@pytest.mark.parametrize(("which", "user", "code", "why"), [
    ("unknown", "sofie", 404, "there is no silence"),
    ("ended", "sofie", 422, "has already ended"),
    ("another municipality's", "mette", 404, "there is no silence"),
], ids=["unknown", "already ended", "outside the municipality"])
def test_a_refused_expiry_answers_saying_why_and_is_in_the_audit_log_with_who_and_why(
        api, which, user, code, why):
    """As a refused silence is: the request's transaction is rolled back, the audit entry
    (committed on its own) is not."""
    silence = 999_999 if which == "unknown" else new_silence(api)
    if which == "ended":
        assert api.as_("sofie").post(f"/api/v1/silences/{silence}/expire").status_code == 200
    r = api.as_(user).post(f"/api/v1/silences/{silence}/expire")
    assert r.status_code == code
    assert why in r.json()["detail"]
    [(actor, subject, details)] = rows(
        api.database_url, "SELECT actor, subject, details FROM audit_log "
                          "WHERE action = 'silence.refused'")
    assert (actor, subject) == (user, f"silence {silence}")
    assert details == {"asked": "expire", "silence_id": silence,
                       "reason": r.json()["detail"], "via": "password"}
    assert rows(api.database_url, "SELECT count(*) FROM audit_log WHERE action = "
                                  "'silence.expire'") == [(1 if which == "ended" else 0,)]


def test_a_bad_matcher_in_a_silence_answers_422_saying_why(api):
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": ["device_id"], "comment": "x",
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert r.status_code == 422
    assert "is not a matcher" in r.json()["detail"]


# --- how long a note may be -----------------------------------------------------------------


def with_callcentre(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        register_targets(conn, DeliveryPolicy(webhooks=(WebhookTarget(
            "callcentre", "http://127.0.0.1:9/unused", b"s" * 32),)))


def outbox_events(database_url: str) -> list[tuple[object, ...]]:
    """(event, the alert's note in its payload, the payload's size) of each, in order."""
    return rows(database_url, "SELECT event, payload #>> '{alert,note}', "
                              "octet_length(payload::text) FROM alert_outbox ORDER BY id")


@pytest.mark.parametrize(("action", "body"), [
    ("notes", {"note": "{}"}), ("acknowledge", {"note": "{}"}),
    ("resolve", {"code": "visit_arranged", "note": "{}"}), ("release", {"note": "{}"})])
def test_a_note_longer_than_max_note_answers_422_and_nothing_is_kept(api, action, body):
    """A 2,000,000-character note went into the outbox twice (4 MB), and into every later
    event of the alert: a receiver answering 413 makes dead letters of them, escalations
    too."""
    with_callcentre(api.database_url)
    alarm, _ = alarm_and_battery(api.database_url)
    anna = api.as_("anna")
    assert anna.post(f"/api/v1/alerts/{alarm}/claim").status_code == 200
    r = anna.post(f"/api/v1/alerts/{alarm}/{action}",
                  json={k: v.format("x" * (MAX_NOTE + 1)) for k, v in body.items()})
    assert r.status_code == 422
    assert f"at most {MAX_NOTE} characters" in r.text
    alert = anna.get(f"/api/v1/alerts/{alarm}").json()
    assert (alert["status"], alert["note"]) == ("claimed", None)
    assert [e[0] for e in outbox_events(api.database_url) if e[0] != "opened"] == ["claimed"]
    r = anna.post(f"/api/v1/alerts/{alarm}/{action}",
                  json={k: v.format("x" * MAX_NOTE) for k, v in body.items()})
    assert r.status_code == 200 and len(r.json()["note"]) == MAX_NOTE


def test_a_long_note_stored_before_notes_were_bounded_rides_bounded_in_later_events(api):
    with_callcentre(api.database_url)
    alarm, _ = alarm_and_battery(api.database_url)
    with psycopg.connect(api.database_url) as conn:
        conn.execute("UPDATE alerts SET note = repeat('x', 2000000) WHERE id = %s", (alarm,))
    assert api.as_("anna").post(f"/api/v1/alerts/{alarm}/claim").status_code == 200
    [(event, note, size)] = [e for e in outbox_events(api.database_url) if e[0] == "claimed"]
    assert note == "x" * MAX_NOTE and size < 3 * MAX_NOTE


# --- CPR numbers in what operators write ------------------------------------------------------


def cpr_stored(database_url: str, *forms: str) -> list[tuple[object, ...]]:
    """The rows, of every table an operator's text reaches, that hold one of `forms`."""
    found = []
    for table in ("alerts", "alert_audit", "alert_outbox", "audit_log", "silences"):
        found += rows(database_url, sql.SQL("SELECT {}, t::text FROM {} t WHERE {}").format(
            sql.Literal(table), sql.Identifier(table),
            sql.SQL(" OR ").join([sql.SQL("strpos(t::text, %s) > 0")] * len(forms))), forms)
    return found


@pytest.mark.parametrize(("action", "body", "cpr"), [
    ("acknowledge", {"note": "called the citizen, cpr {}"}, "010170-1234"),
    ("notes", {"note": "CPR {} confirmed"}, "0101701234"),
    ("resolve", {"code": "visit_arranged", "note": "home carer sent to {}"}, "010170 1234"),
    ("release", {"note": "the daughter ({}) will call back"}, "0101701234"),
])
def test_a_note_holding_a_cpr_number_answers_422_without_it_and_nothing_is_kept(
        api, action, body, cpr):
    with psycopg.connect(api.database_url) as conn:   # an outbox to the call centre as well
        register_targets(conn, DeliveryPolicy(webhooks=(WebhookTarget(
            "callcentre", "http://127.0.0.1:9/unused", b"s" * 32),)))
    alarm, _ = alarm_and_battery(api.database_url)
    anna = api.as_("anna")
    assert anna.post(f"/api/v1/alerts/{alarm}/claim").status_code == 200
    r = anna.post(f"/api/v1/alerts/{alarm}/{action}",
                  json={k: v.format(cpr) for k, v in body.items()})
    assert r.status_code == 422
    assert "civil registration (CPR) number" in r.json()["detail"]
    assert cpr not in r.text and cpr.replace("-", "").replace(" ", "") not in r.text
    alert = anna.get(f"/api/v1/alerts/{alarm}").json()
    assert (alert["status"], alert["note"]) == ("claimed", None)
    assert [h["action"] for h in alert["history"]] == ["open", "claim"]
    assert cpr_stored(api.database_url, cpr) == []


@pytest.mark.parametrize("note", ["cpr 010190\n1234", "cpr 010190  1234", "010190\t1234"])
def test_a_cpr_number_split_by_a_line_break_a_tab_or_two_spaces_is_refused_too(api, note):
    alarm, _ = alarm_and_battery(api.database_url)
    r = api.as_("anna").post(f"/api/v1/alerts/{alarm}/notes", json={"note": note})
    assert r.status_code == 422 and "010190" not in r.text
    assert cpr_stored(api.database_url, "010190") == []


@pytest.mark.parametrize("matcher", ["citizen 010170-1234", 'device_id=~"(010170-1234"'])
def test_a_matcher_that_does_not_parse_is_refused_without_repeating_a_cpr_number(api,
                                                                                 matcher):
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": [matcher], "comment": "x",
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert r.status_code == 422 and "010170" not in r.text


def test_an_unknown_device_asked_for_by_a_cpr_number_answers_404_without_repeating_it(api):
    r = api.as_("anna").get("/api/v1/devices/cpr 010170-1234")
    assert r.status_code == 404
    assert r.json()["detail"] == "there is no device cpr [cpr removed]"


def test_a_request_that_does_not_fit_says_where_without_repeating_what_was_sent(api):
    """A resolve without its code: refused by the API's own checks, before vagt's. The
    answer says which field and why, and not the note, which may hold a CPR number."""
    alarm, _ = alarm_and_battery(api.database_url)
    anna = api.as_("anna")
    assert anna.post(f"/api/v1/alerts/{alarm}/claim").status_code == 200
    r = anna.post(f"/api/v1/alerts/{alarm}/resolve", json={"note": "cpr 010170-1234"})
    assert r.status_code == 422
    assert [(p["loc"], p["msg"]) for p in r.json()["detail"]] == [
        (["body", "code"], "Field required")]
    assert "010170" not in r.text


@pytest.mark.parametrize(("matcher", "comment"), [
    ('device_id="OXI-0001"', "citizen 010170-1234 is in hospital"),
    ('citizen_ref="0101701234"', "in hospital"),
])
def test_a_silence_holding_a_cpr_number_answers_422_and_silences_nothing(api, matcher,
                                                                         comment):
    _, battery = alarm_and_battery(api.database_url)
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": [matcher], "comment": comment,
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert r.status_code == 422
    assert "civil registration (CPR) number" in r.json()["detail"]
    assert "1234" not in r.text
    assert api.as_("anna").get(f"/api/v1/alerts/{battery}").json()["status"] == "open"
    assert api.as_("anna").get("/api/v1/silences").json() == []
    assert cpr_stored(api.database_url, "010170-1234", "0101701234") == []


# --- documentation ---------------------------------------------------------------------------


def test_the_openapi_document_is_served_and_describes_the_endpoints_and_security(api):
    doc = api.anonymous().get("/openapi.json").json()
    assert doc["info"]["title"] == "vagt operator API"
    for path in ("/api/v1/queues", "/api/v1/alerts", "/api/v1/alerts/{alert_id}",
                 "/api/v1/alerts/{alert_id}/claim", "/api/v1/alerts/{alert_id}/acknowledge",
                 "/api/v1/alerts/{alert_id}/resolve", "/api/v1/alerts/{alert_id}/notes",
                 "/api/v1/alerts/next", "/api/v1/silences", "/api/v1/silences/{silence_id}/expire",
                 "/api/v1/devices", "/api/v1/devices/{device_id}"):
        assert path in doc["paths"], path
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBasic", "HTTPBearer"}
    assert api.anonymous().get("/docs").status_code == 200


def test_vagt_api_serves_the_api_and_its_metrics_alone(database_url, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "vagt.app.cli", "api", "--port", str(port)],
                            env={**os.environ, "VAGT_DATABASE_URL": database_url},
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, (
                    (tmp_path / "api.log").read_text())
                time.sleep(0.1)
        assert r.status_code == 401
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 200
        check = subprocess.run(["promtool", "check", "metrics"], input=metrics.content,
                               capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        # its own: the engine's rule timer, not run here, must not look stopped on this target
        families = {line.split()[2] for line in metrics.text.splitlines()
                    if line.startswith("# TYPE ")}
        assert families == {"vagt_alert_time_to_claim_seconds",
                            "vagt_alert_time_to_resolve_seconds"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_a_session_trades_the_password_for_a_bearer_token_once(api):
    r = api.as_("anna").post("/api/v1/sessions")
    assert r.status_code == 201
    token = r.json()["token"]
    assert api.with_token(token).get("/api/v1/me").json()["via"] == "token:session"
    again = api.with_token(token).post("/api/v1/sessions")
    assert again.status_code == 403


def test_a_session_is_audited_with_its_account_and_how_it_signed_in(api):
    assert api.as_("anna").post("/api/v1/sessions").status_code == 201
    [(session,)] = rows(api.database_url, "SELECT id FROM api_tokens WHERE name = 'session'")
    assert rows(api.database_url, "SELECT actor, subject, details->>'user', details->>'via' "
                                  "FROM audit_log WHERE action = 'token.create' "
                                  "AND details->>'name' = 'session'") == [
        ("anna", f"token {session}", "anna", "password")]


def test_a_new_password_ends_the_accounts_sessions_and_says_which_api_tokens_still_work(
        api, monkeypatch, capsys):
    """A session stolen with the password must not outlive the reset (12 hours otherwise);
    an API token the password could not make stays, and ops are told it does."""
    from tests.alerts.test_accounts_cli import run

    session = api.as_("anna").post("/api/v1/sessions").json()["token"]
    other = api.as_("bo").post("/api/v1/sessions").json()["token"]
    with psycopg.connect(api.database_url) as conn:
        kiosk_id, kiosk = create_token(conn, "anna", "ward-kiosk", actor="test")
    monkeypatch.setattr("sys.stdin", io.StringIO("a new password for anna\n"))
    assert run(api.database_url, "users", "password", "anna", "--password-stdin") == 0
    assert capsys.readouterr().out.splitlines() == [
        "password of anna changed; 1 session ended",
        f"1 API token of anna still work ({kiosk_id}): `vagt tokens revoke ID` ends one"]
    assert api.with_token(session).get("/api/v1/me").status_code == 401
    assert api.with_token(other).get("/api/v1/me").status_code == 200       # bo's: not hers
    assert api.with_token(kiosk).get("/api/v1/me").status_code == 200
    assert api.as_("anna").get("/api/v1/me").status_code == 401             # the old password
    [(details,)] = rows(api.database_url, "SELECT details FROM audit_log "
                                          "WHERE action = 'user.password'")
    session_id = rows(api.database_url, "SELECT id FROM api_tokens WHERE username = 'anna' "
                                        "AND name = 'session'")[0][0]
    assert details == {"sessions_revoked": [session_id], "via": f"cli:{getpass.getuser()}"}


def test_a_supervisor_releases_an_operators_alert_an_operator_may_not(api):
    alarm, _ = alarm_and_battery(api.database_url)
    api.as_("anna").post(f"/api/v1/alerts/{alarm}/claim")
    assert api.with_token(api.tokens["crm"]).post(
        f"/api/v1/alerts/{alarm}/release").status_code == 409
    r = api.as_("sofie").post(f"/api/v1/alerts/{alarm}/release", json={"note": "anna left"})
    assert (r.status_code, r.json()["status"]) == (200, "open")


# --- input the database cannot take, and rows held by another session ------------------------


def test_a_silence_with_a_time_without_a_time_zone_answers_422_not_500(api):
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": ['device_id="OXI-0001"'], "comment": "visit",
        "ends_at": "2030-01-01T00:00:00"})
    assert r.status_code == 422
    assert "timezone" in str(r.json()["detail"])


def test_a_nul_character_answers_422_or_401_not_500(api):
    alarm, _ = alarm_and_battery(api.database_url)
    anna = api.as_("anna")
    assert anna.get("/api/v1/alerts", params={"queue": "\x00"}).status_code == 422
    r = anna.post(f"/api/v1/alerts/{alarm}/notes", json={"note": "called\x00"})
    assert r.status_code == 422 and "the note holds U+0000 NULL" in r.json()["detail"]
    assert httpx.get(f"{api.url}/api/v1/alerts", auth=("an\x00na", PASSWORD)).status_code == 401
    assert rows(api.database_url, "SELECT action FROM alert_audit WHERE alert_id = %s",
                (alarm,)) == [("open",)]


def test_a_resolve_waiting_on_rows_another_session_holds_answers_503_and_changes_nothing(api):
    # An operator resolves a gateway's silence alert (an inhibition source: resolving it
    # looks at the alerts it held back) while the engine holds one of those in a batch.
    add_device(api.database_url, "GW-0001", "gateway", "Aarhus")
    (gateway, _), = fire(api.database_url, ("device_silent", "GW-0001"))
    add_device(api.database_url, "OXI-0009", "pulse_oximeter", "Aarhus", gateway="GW-0001")
    (held, _), = fire(api.database_url, ("battery_low", "OXI-0009"))
    anna = api.as_("anna")
    assert anna.post(f"/api/v1/alerts/{gateway}/claim").status_code == 200
    with psycopg.connect(api.database_url) as engine:
        engine.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (held,))
        r = anna.post(f"/api/v1/alerts/{gateway}/resolve",
                      json={"code": "resolved", "note": "gateway back"}, timeout=30)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert anna.get(f"/api/v1/alerts/{gateway}").json()["status"] == "claimed"
    r = anna.post(f"/api/v1/alerts/{gateway}/resolve",
                  json={"code": "resolved", "note": "gateway back"})
    assert r.status_code == 200


def test_a_claim_of_an_alert_another_session_holds_answers_503_as_other_busy_rows_do(api):
    alarm, _ = alarm_and_battery(api.database_url)
    with psycopg.connect(api.database_url) as engine:
        engine.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (alarm,))
        r = api.as_("anna").post(f"/api/v1/alerts/{alarm}/claim", timeout=30)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert api.as_("anna").post(f"/api/v1/alerts/{alarm}/claim").status_code == 200


def test_an_alarm_of_a_device_deployed_to_its_next_citizen_is_a_new_alert_in_their_municipality(
        api: Api) -> None:
    """Resolved, returned, deployed to a citizen in Aarhus, and pressed within the reopen
    window: a new alert, not the last citizen's reopened with its note and history (which an
    Aarhus operator would then read)."""
    from tests.alerts.support import T0

    from vagt.devices.actions import deploy, return_device

    (old, _), = fire(api.database_url, ("personal_alarm", "ALM-0001", T0), code="alarm.fall")
    anna = api.as_("anna")
    assert anna.post(f"/api/v1/alerts/{old}/claim").status_code == 200
    assert anna.post(f"/api/v1/alerts/{old}/resolve", json={
        "code": "visit_arranged", "note": "fell in the bathroom; the daughter has the key"}
    ).status_code == 200
    with psycopg.connect(api.database_url) as conn:
        return_device(conn, "ALM-0001", actor="test")
        deploy(conn, "ALM-0001", citizen_ref="cit-b2", municipality="Aarhus", actor="test")
    (new, _), = fire(api.database_url, ("personal_alarm", "ALM-0001", T0 + 600),
                     code="alarm.fall")
    assert new != old
    seen = api.as_("bo").get(f"/api/v1/alerts/{new}").json()    # an Aarhus operator
    assert (seen["note"], [e["actor"] for e in seen["history"]]) == (None, ["rule:personal_alarm"])
    assert rows(api.database_url, "SELECT id, status, reopen_count FROM alerts ORDER BY id") \
        == [(old, "resolved", 0), (new, "open", 0)]
    # a device not deployed since: its alarm within the window reopens the alert, as before
    add_device(api.database_url, "ALM-0002", "personal_alarm", "Randers")
    (again, _), = fire(api.database_url, ("personal_alarm", "ALM-0002", T0), code="alarm.fall")
    assert anna.post(f"/api/v1/alerts/{again}/claim").status_code == 200
    assert anna.post(f"/api/v1/alerts/{again}/resolve", json={
        "code": "visit_arranged", "note": "a neighbour went over"}).status_code == 200
    assert fire(api.database_url, ("personal_alarm", "ALM-0002", T0 + 60),
                code="alarm.fall") == [(again, "emergency")]


def test_a_status_filter_holding_a_cpr_number_is_refused_without_repeating_it(api: Api) -> None:
    r = api.as_("anna").get("/api/v1/alerts", params={"status": "010170-1234"})
    assert r.status_code == 422
    assert "unknown alert status" in r.text and "1234" not in r.text


def test_a_silence_matcher_holding_a_cpr_number_split_by_an_escaped_line_break_is_refused(
        api: Api) -> None:
    """The quoted value is JSON: its `\\n` is a line break, which the stored matcher holds."""
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": ['device_id="010170\\n1234"'], "comment": "in hospital",
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert r.status_code == 422
    assert "civil registration (CPR) number" in r.text and "1234" not in r.text
    assert rows(api.database_url, "SELECT count(*) FROM silences") == [(0,)]


def test_a_refused_silence_of_an_account_named_before_names_were_checked_logs_no_cpr_number(
        api: Api, caplog) -> None:
    from vagt.alerts.accounts import hash_password

    name = "cpr 0101701234"
    with psycopg.connect(api.database_url) as conn:
        conn.execute("INSERT INTO operators (username, password_hash, role) "
                     "VALUES (%s, %s, 'operator')", (name, hash_password(PASSWORD)))
    caplog.set_level(logging.INFO)
    r = api.as_(name).post("/api/v1/silences", json={
        "matchers": ['device_id="OXI-0001"'], "comment": "in hospital",
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert r.status_code == 403
    refused = [rec.getMessage() for rec in caplog.records
               if "event=silence_refused" in rec.getMessage()]
    assert len(refused) == 1 and "0101701234" not in refused[0]


def test_a_session_opened_while_the_password_changes_does_not_outlive_the_change(
        api: Api, monkeypatch) -> None:
    """The password is checked (scrypt, a tenth of a second, no connection held), then the
    session written. A password changed in between ended the sessions there were; one
    written after, from the old password, worked for 12 hours."""
    from tests.alerts.test_accounts_cli import run

    from vagt.alerts import accounts

    verify, checking, go = accounts.verify_password, threading.Event(), threading.Event()

    def held(stored: str, password: str) -> bool:
        checking.set()
        go.wait(30)
        return verify(stored, password)

    monkeypatch.setattr(accounts, "verify_password", held)
    answers: list[httpx.Response] = []
    login = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{api.url}/api/v1/sessions", auth=("anna", PASSWORD), timeout=60)))
    login.start()
    assert checking.wait(30)
    monkeypatch.setattr("sys.stdin", io.StringIO("a new password for anna\n"))
    assert run(api.database_url, "users", "password", "anna", "--password-stdin") == 0
    go.set()
    login.join(60)
    assert (answers[0].status_code, "the password changed" in answers[0].text) == (401, True)
    assert rows(api.database_url, "SELECT count(*) FROM api_tokens "
                                  "WHERE username = 'anna' AND revoked_at IS NULL") == [(0,)]


def test_a_resolution_code_holding_a_cpr_number_is_refused_without_repeating_it(
        api: Api) -> None:
    alarm, _ = alarm_and_battery(api.database_url)
    r = api.as_("anna").post(f"/api/v1/alerts/{alarm}/resolve",
                             json={"code": "010170-1234", "note": "done"})
    assert r.status_code == 422
    assert "a resolution code is required" in r.text and "1234" not in r.text


@pytest.mark.parametrize(("user", "path", "body"), [
    ("anna", "/api/v1/alerts/{a}/resolve", '{"code": "\\ud800", "note": "done"}'),
    ("anna", "/api/v1/alerts/next", '{"queues": ["\\ud800"]}'),
    ("sofie", "/api/v1/silences", '{"matchers": ["device_id=\\ud800"], "comment": "c", '
                                  '"ends_at": "2099-01-01T00:00:00Z"}'),
], ids=["resolve", "next", "silence"])
def test_half_a_surrogate_pair_in_a_request_is_refused_as_not_text(api: Api, user, path,
                                                                    body) -> None:
    """JSON's `\\ud800` alone is no character: it failed where it was written or answered."""
    alarm, _ = alarm_and_battery(api.database_url)
    r = httpx.post(api.url + path.format(a=alarm), auth=(user, PASSWORD), content=body,
                   headers={"Content-Type": "application/json"}, timeout=10)
    assert (r.status_code, "not valid text" in r.text) == (422, True), r.text


@pytest.mark.parametrize("pattern", ["x{99999999999}", "(" * 2000 + ")" * 2000],
                         ids=["too-large", "too-deep"])
def test_a_silence_whose_regex_cannot_be_compiled_is_refused(api: Api, pattern) -> None:
    r = api.as_("sofie").post("/api/v1/silences", json={
        "matchers": [f'device_id=~"{pattern}"'], "comment": "c",
        "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert r.status_code == 422 and "too large or too deeply nested" in r.text


@pytest.mark.parametrize("user", ["sofie", "anna"])
def test_an_id_beyond_a_bigint_is_refused_as_no_id(api: Api, user) -> None:
    """It stopped an expiry's refusal from being audited (HTTP 500)."""
    for path in (f"/api/v1/silences/{10**20}/expire", f"/api/v1/alerts/{10**20}/claim"):
        assert api.as_(user).post(path).status_code == 422, path


def test_a_silence_starting_more_than_a_year_ahead_is_refused(api: Api) -> None:
    """The end of the year 9999 is in the year 10000 on Danish time: no list could show it,
    and no expiry find it."""
    r = api.as_("mette").post("/api/v1/silences", json={
        "matchers": ['device_id="OXI-0001"'], "comment": "c",
        "starts_at": "9999-12-31T22:00:00Z", "ends_at": "9999-12-31T23:30:00Z"})
    assert r.status_code == 422 and "starts within 366 days of now" in r.text
    assert rows(api.database_url, "SELECT count(*) FROM silences") == [(0,)]
