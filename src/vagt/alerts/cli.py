"""`vagt alerts ...` and `vagt silences ...`: the call-centre queue from the command line.

Every action is audited, as the operator account named by --operator or --author (an
enabled one, of the role the API asks for the same step, within its municipality) and with
the login the command runs under (`cli:USER`, in the audit entry's details). `vagt alerts
route k=v ...` shows where an alert with those labels would go, without a database.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
import psycopg

from vagt.alerts import engine_rules, outbox
from vagt.alerts.accounts import AccountError, Principal, Role, enabled_account, role_refusal
from vagt.alerts.actions import (
    MAX_NOTE,
    AlertError,
    AlertRow,
    AlertStatus,
    acknowledge,
    add_note,
    audit_trail,
    claim,
    get_alert,
    list_alerts,
    next_alert,
    release,
    resolve,
)
from vagt.alerts.matchers import MatcherError, parse_matcher
from vagt.alerts.policy import PolicyError, load_policy, parse_duration
from vagt.alerts.routing import describe, route_alert
from vagt.alerts.silences import (
    REFUSED,
    asked_to_create,
    create_silence,
    expire_silence,
    list_silences,
    refuse_author,
)
from vagt.alerts.silences import warnings as silence_warnings
from vagt.app.cli_support import cli_login, fail, format_table, reports_errors, row_id
from vagt.app.config import Config
from vagt.privacy import HoldsCpr
from vagt.rules import Rule, RuleConfigError, load_rules
from vagt.text import shown


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `alerts list|claim|ack|resolve` to the `vagt` command."""
    alerts = subparsers.add_parser("alerts", help="the alert queue")
    actions = alerts.add_subparsers(metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="alerts, most urgent first")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.add_argument("--status", action="append", choices=[s.value for s in AlertStatus],
                    help="only alerts with this status; repeat for several (default: all)")
    ls.add_argument("--queue", help="only alerts in this queue, e.g. emergency")
    ls.add_argument("--limit", type=int, default=500, help="at most this many (default: 500)")
    ls.set_defaults(handler=handle_list)
    for name, help_text, handler, takes_note in (
            ("claim", "take an open alert: then no one else can", handle_claim, False),
            ("ack", "acknowledge an alert you have claimed", handle_ack, True),
            ("resolve", "resolve an open alert or one you hold, with a code and a note",
             handle_resolve, True),
            ("note", "write a note on an alert (its status stays)", handle_note, True),
            ("release", "give an alert you hold back to its queue", handle_release, True)):
        p = actions.add_parser(name, help=help_text)
        p.add_argument("id", type=row_id, help="the alert's id (see `vagt alerts list`)")
        p.add_argument("--operator", required=True,
                       help="your operator account's name (`vagt users list`)")
        if takes_note:
            p.add_argument("--note", required=name in ("resolve", "note"),
                           help=f"what was done, for the audit trail (at most {MAX_NOTE} "
                                "characters)")
        if name == "release":
            p.add_argument("--supervisor", action="store_true",
                           help="release an alert someone else holds (a supervisor's step: "
                                "the account must be one)")
        if name == "resolve":
            p.add_argument("--code", required=True,
                           help="the resolution code, e.g. visit_arranged or false_alarm "
                                "(the policy's resolution_codes)")
        p.set_defaults(handler=handler)
    show = actions.add_parser("show", help="one alert with its audit trail")
    show.add_argument("id", type=row_id, help="the alert's id (see `vagt alerts list`)")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(handler=handle_show)
    nxt = actions.add_parser("next", help="claim the most urgent open alert of your queues")
    nxt.add_argument("--operator", required=True,
                     help="your operator account's name (`vagt users list`)")
    nxt.add_argument("--queue", action="append",
                     help="a queue to take from; repeat for several (default: the account's "
                          "queues, `vagt users add --queue`; an account of none: every queue)")
    nxt.set_defaults(handler=handle_next)
    route = actions.add_parser("route", help="where an alert with these labels would go")
    route.add_argument("labels", nargs="+", metavar="NAME=VALUE",
                       help="the alert's labels, e.g. rule=battery_low type=pulse_oximeter")
    route.add_argument("--queue", default=None,
                       help="the rule's own queue, used when no route sets one (default: "
                            "that of the rule the `rule` label names)")
    route.add_argument("--priority", type=int, default=None,
                       help="the rule's own priority, used when no route sets one (default: "
                            "that of the rule the `rule` label names, else 3)")
    route.set_defaults(policy_handler=handle_route)
    box = actions.add_parser("outbox", help="events not yet delivered to the call centre")
    box.add_argument("--dead", action="store_true", help="only dead letters (tries used up)")
    box.set_defaults(handler=handle_outbox)
    for name, text, handler in (
            ("redeliver", "try a dead letter again", handle_redeliver),
            ("give-up", "make a waiting delivery a dead letter, so that the target's events "
                        "behind it go (redeliver tries it again)", handle_give_up)):
        one = actions.add_parser(name, help=text)
        one.add_argument("outbox_id", type=row_id,
                         help="the event's outbox id (see `vagt alerts outbox`)")
        one.add_argument("--target", required=True, help="the delivery target's name")
        one.add_argument("--author", required=True,
                         help="your account's name, for the audit trail")
        if name == "give-up":
            one.add_argument("--reason", required=True, help="why, for the audit trail")
        else:
            one.add_argument("--out-of-order", action="store_true",
                             help="send it though the target has delivered a later event of "
                                  "its alert (the receiver hears of the older state last)")
        one.set_defaults(handler=handler)
    move = actions.add_parser(
        "move-deliveries", help="send what waits for a target no longer configured (renamed "
                                "or removed in the policy) to another, or give it up")
    move.add_argument("--from", dest="source", required=True, metavar="TARGET",
                      help="the target no longer configured (`vagt alerts outbox`: stranded)")
    to = move.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", metavar="TARGET", help="a configured target to send them to")
    to.add_argument("--give-up", action="store_true",
                    help="make them dead letters of the old target (nothing takes them now)")
    move.add_argument("--author", required=True,
                      help="your account's name, for the audit trail")
    move.add_argument("--reason", required=True, help="why, for the audit trail")
    move.set_defaults(handler=handle_move_deliveries)
    _add_silences(subparsers)


def _add_silences(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    silences = subparsers.add_parser("silences", help="silences and maintenance windows")
    actions = silences.add_subparsers(metavar="ACTION", required=True)
    add = actions.add_parser("add", help="silence the alerts matching every matcher")
    add.add_argument("matchers", nargs="+", metavar="MATCHER",
                     help='name=value, name!=value, name=~regex or name!~regex')
    add.add_argument("--author", required=True,
                     help="your account's name (a supervisor's), for the audit trail")
    add.add_argument("--comment", required=True, help="why, e.g. the maintenance ticket")
    add.add_argument("--start", type=_timestamp, default=None,
                     help="ISO 8601 time it starts (default: now), e.g. 2026-12-01T22:00+01:00")
    end = add.add_mutually_exclusive_group(required=True)
    end.add_argument("--end", type=_timestamp, help="ISO 8601 time it ends")
    end.add_argument("--duration", type=_duration, help="how long from the start, e.g. 2h")
    # judged by the configured rules: which of their alerts are critical
    add.set_defaults(handler=handle_silence_add, handler_takes_config=True)
    ls = actions.add_parser("list", help="silences in force or to come")
    ls.add_argument("--all", action="store_true", help="expired ones too")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(handler=handle_silence_list, handler_takes_config=True)
    ex = actions.add_parser("expire", help="end a silence now")
    ex.add_argument("id", type=row_id, help="the silence's id (see `vagt silences list`)")
    ex.add_argument("--author", required=True,
                     help="your account's name (a supervisor's), for the audit trail")
    ex.set_defaults(handler=handle_silence_expire)


def _timestamp(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add Z or +01:00")
    return at


def _duration(text: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_reports_errors = reports_errors(AlertError, HoldsCpr, PolicyError, MatcherError,
                                 RuleConfigError)


@_reports_errors
def handle_list(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_alerts(conn, status=args.status, queue=args.queue, limit=args.limit)
    if args.json:
        print(orjson.dumps([r.to_json() for r in rows], option=orjson.OPT_INDENT_2).decode())
    elif rows:
        print(format_table(["ID", "PRI", "QUEUE", "STATUS", "HOLDER", "OPENED", "REPEATS",
                            "DEVICE", "SUMMARY"], [_cells(r) for r in rows]))
    else:
        print("no alerts match" if args.status or args.queue else "no alerts")
    return 0


def _cells(r: AlertRow) -> list[str]:
    holder = r.claimed_by if r.status in (AlertStatus.CLAIMED, AlertStatus.ACKNOWLEDGED) else ""
    summary = r.summary
    if r.status is AlertStatus.SUPPRESSED and r.suppressed_reason:
        summary += f" [suppressed: {r.suppressed_reason}]"
    return [str(r.id), str(r.priority), r.queue, r.status.value, holder or "",
            _local_time(r.opened_at), str(r.repeat_count), r.device_id or "-", summary]


def _local_time(at: datetime) -> str:
    return f"{at.astimezone():%Y-%m-%d %H:%M:%S %Z}"


def _acting(conn: psycopg.Connection, name: str, role: Role = Role.OPERATOR) -> Principal:
    """The enabled account named by --operator or --author, of at least `role` (what the
    API asks for the same step); the command acts within its municipality, as the API does."""
    return enabled_account(conn, name, via=cli_login(), role=role)


@_reports_errors
def handle_claim(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.operator)
        return _done(claim(conn, args.id, who.username, municipality=who.municipality,
                           via=who.via))


@_reports_errors
def handle_ack(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.operator)
        return _done(acknowledge(conn, args.id, who.username, args.note,
                                 municipality=who.municipality, via=who.via))


@_reports_errors
def handle_resolve(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.operator)
        return _done(resolve(conn, args.id, who.username, args.note, code=args.code,
                             municipality=who.municipality, via=who.via))


@_reports_errors
def handle_release(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.operator, Role.SUPERVISOR if args.supervisor else Role.OPERATOR)
        alert = release(conn, args.id, who.username, args.note, supervisor=args.supervisor,
                        municipality=who.municipality, via=who.via)
    print(f"alert {alert.id} is open again in {alert.queue}: {shown(alert.summary)}")
    return 0


@_reports_errors
def handle_note(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.operator)
        alert = add_note(conn, args.id, who.username, args.note,
                         municipality=who.municipality, via=who.via)
    print(f"alert {alert.id}: note written by {who.username}")
    return 0


@_reports_errors
def handle_next(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.operator)
        # the account's queues by default, as the API's POST /alerts/next takes them
        queues = args.queue or list(who.queues) or None
        alert = next_alert(conn, who.username, queues, municipality=who.municipality,
                           via=who.via)
    if alert is None:
        print("nothing to take: no open alert in " + (", ".join(queues) if queues
                                                      else "any queue"))
        return 0
    return _done(alert)


@_reports_errors
def handle_show(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        alert = get_alert(conn, args.id)
        trail = audit_trail(conn, args.id)
    if args.json:
        print(orjson.dumps({**alert.to_json(), "history": [e.to_json() for e in trail]},
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    for name, value in alert.to_json().items():
        if value not in (None, [], {}):
            print(f"{name + ':':<18} {shown(str(value))}")
    print()
    print(format_table(["AT", "ACTOR", "ACTION", "FROM", "TO", "NOTE"],
                        [[_local_time(e.at), e.actor, e.action, e.from_status or "-",
                          e.to_status, e.note or ""] for e in trail]))
    return 0


def handle_route(args: argparse.Namespace, policy_path: str, rules_path: str = "") -> int:
    """Where an alert with these labels goes, by the configured (or built-in) policy; where
    no route sets the queue or priority, the rule's own (from the configured rules, or the
    engine's own alerts'). Label values are taken as given (an alert may carry any, as a
    silence's matchers may name any), but the `rule` label names whose queue and priority
    to start from: unless --queue and --priority say them, a rule that does not exist is
    refused, since what would be printed is not where any alert goes."""
    try:
        policy = load_policy(policy_path or None, secrets=False)
        labels: dict[str, object] = {}
        for text in args.labels:
            name, sep, value = text.partition("=")
            if not sep or not name:
                raise MatcherError(f"{text!r} is not a label; write name=value")
            labels[name] = value
        rule = str(labels.get("rule", ""))
        rules = load_rules(rules_path or None) if rule else []
    except (PolicyError, MatcherError, RuleConfigError) as e:
        return fail(str(e))
    own = _destination(rule, rules)
    if rule and own is None and (args.queue is None or args.priority is None):
        names = sorted({r.name for r in rules} | set(engine_rules.NAMES))
        return fail(f"there is no rule {rule!r} in {rules_path or 'the built-in rules'} nor "
                    f"among the engine's own alerts, so its queue and priority are unknown: "
                    f"name one of {', '.join(names)}, or give --queue and --priority")
    priority = args.priority if args.priority is not None else (own[0] if own else 3)
    queue = args.queue or (own[1] if own else "(the rule's queue)")
    dest = route_alert(policy.root, labels, default_queue=queue,
                       default_priority=priority, time_to_claim=policy.time_to_claim_s)
    print("\n".join(describe(dest)))
    return 0


def _destination(name: str, rules: Sequence[Rule]) -> tuple[int, str] | None:
    """Priority and queue of the rule named `name`, of the rule files or one the engine
    raises itself (None: no such rule)."""
    rule = next((r for r in rules if r.name == name), None)
    if rule is not None:
        return rule.priority, rule.queue
    return engine_rules.destination(name, rules)


@_reports_errors
def handle_outbox(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = outbox.undelivered(conn, dead_only=args.dead)
    if not rows:
        print("nothing waiting: every event is delivered" if not args.dead else "no dead letters")
        return 0
    print(format_table(["OUTBOX", "TARGET", "ALERT", "EVENT", "TRIES", "STATE", "LAST ERROR"],
                        [[str(o), t, str(a), e, str(n), state, err or ""]
                         for o, t, a, e, n, err, state in rows]))
    if any(row[6] == "stranded" for row in rows):
        print("stranded: the target is no longer configured and nothing sends them; "
              "`vagt alerts move-deliveries` sends them to another or gives them up",
              file=sys.stderr)
    return 0


@_reports_errors
def handle_redeliver(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.author)
        try:
            outbox.redeliver(conn, args.outbox_id, args.target, actor=who.username, via=who.via,
                             municipality=who.municipality, out_of_order=args.out_of_order)
        except (LookupError, outbox.OutOfOrder) as e:
            return fail(str(e))
    print(f"outbox entry {args.outbox_id} will be delivered to {args.target} again")
    return 0


@_reports_errors
def handle_give_up(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.author)
        try:
            outbox.give_up(conn, args.outbox_id, args.target, actor=who.username,
                           reason=args.reason, via=who.via, municipality=who.municipality)
        except LookupError as e:
            return fail(str(e))
    print(f"outbox entry {args.outbox_id} is a dead letter for {args.target}; the events "
          "behind it go")
    return 0


@_reports_errors
def handle_move_deliveries(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        who = _acting(conn, args.author)
        try:
            fates = outbox.move_deliveries(conn, args.source, args.to, actor=who.username,
                                           reason=args.reason, via=who.via,
                                           municipality=who.municipality)
        except LookupError as e:
            return fail(str(e))
    if not fates:
        print(f"nothing waits for {args.source}")
        return 0
    said = {"moved": f"moved to {args.to}", "given_up": "given up",
            "superseded": f"given up: {args.to} has a later event of their alert",
            "not_taken": f"given up: {args.to} does not take their events"}
    for fate, n in sorted(fates.items()):
        print(f"{n} event{'' if n == 1 else 's'} waiting for {args.source}: {said[fate]}")
    return 0


@_reports_errors
def handle_silence_add(args: argparse.Namespace, conninfo: str,
                       config: Config | None = None) -> int:
    matchers = [parse_matcher(m) for m in args.matchers]
    rules = _rule_book(config)
    now = datetime.now(UTC)
    start = args.start or now
    end = args.end or start + args.duration
    # autocommit: a refusal is audited in a transaction of its own (`create_silence`)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        who = _supervisor(conn, args.author, asked_to_create(args.matchers, start, end,
                                                             args.comment))
        s = create_silence(conn, matchers, starts_at=start, ends_at=end, author=who.username,
                           comment=args.comment, municipality=who.municipality, now=now,
                           rules=rules, via=who.via)
    print(f"silence {s.id} ({s.state(now)}): {', '.join(map(str, s.matchers))} "
          f"until {_local_time(s.ends_at)}")
    return 0


@_reports_errors
def handle_silence_list(args: argparse.Namespace, conninfo: str,
                        config: Config | None = None) -> int:
    rules = _rule_book(config)
    now = datetime.now(UTC)
    with psycopg.connect(conninfo) as conn:
        rows = list_silences(conn, include_expired=args.all, now=now)
    found = {s.id: silence_warnings(s, rules=rules) for s in rows}
    if args.json:
        print(orjson.dumps([{**s.to_json(now), "warnings": found[s.id]} for s in rows],
                           option=orjson.OPT_INDENT_2).decode())
    elif rows:
        print(format_table(["ID", "STATE", "STARTS", "ENDS", "AUTHOR", "MATCHERS", "COMMENT"],
                            [[str(s.id), s.state(now) + ("!" if found[s.id] else ""),
                              _local_time(s.starts_at), _local_time(s.ends_at), s.author,
                              " ".join(map(str, s.matchers)), s.comment] for s in rows]))
        for silence_id, said in found.items():   # made before today's limits
            for warning in said:
                print(f"! silence {silence_id}: {warning}")
    else:
        print("no silences")
    return 0


def _rule_book(config: Config | None) -> list[Rule]:
    """The configured rules (the built-in ones when none are): which alerts are critical."""
    return load_rules(config.rules if config is not None and config.rules else None)


@_reports_errors
def handle_silence_expire(args: argparse.Namespace, conninfo: str) -> int:
    # autocommit: a refusal is audited in a transaction of its own (`expire_silence`)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        who = _supervisor(conn, args.author, {"asked": "expire", "silence_id": args.id},
                          f"silence {args.id}")
        s = expire_silence(conn, args.id, by=who.username, municipality=who.municipality,
                           via=who.via)
    print(f"silence {s.id} expired by {s.expired_by}")
    return 0


def _supervisor(conn: psycopg.Connection, name: str, asked: dict[str, object],
                subject: str = REFUSED) -> Principal:
    """The account of a silence's author, a supervisor; an operator's attempt is refused
    and audited (`refuse_author`), as the API's is."""
    who = _acting(conn, name)
    if refusal := role_refusal(who, Role.SUPERVISOR):
        refuse_author(conn, who.username, refusal, asked=asked, subject=subject, via=who.via)
        raise AccountError(refusal)
    return who


def _done(alert: AlertRow) -> int:
    who = {AlertStatus.CLAIMED: alert.claimed_by, AlertStatus.ACKNOWLEDGED: alert.acknowledged_by,
           AlertStatus.RESOLVED: alert.resolved_by}.get(alert.status)
    code = f" ({alert.resolution_code})" if alert.status is AlertStatus.RESOLVED else ""
    print(f"alert {alert.id} is now {alert.status.value}{code} by {who}: "
          f"{shown(alert.summary)}")
    return 0
