"""A receiver's URL as logs and error messages may show it: never its secrets."""

from __future__ import annotations

import urllib.parse


def without_secrets(url: str) -> str:
    """Scheme, host, port and path of a URL: never its user, password, query or fragment
    (tokens live there). Of a text that is not scheme://host... (a mistyped URL), what
    follows its last '@' (`user:token@host/hook` reads as a scheme and a path)."""
    try:
        p = urllib.parse.urlsplit(url)
    except ValueError:   # an unbalanced [ of an IPv6 address: nothing can be told apart
        return "(not a URL: a [ or ] of its host is unbalanced)"
    if not p.netloc:
        path = p.path.rpartition("@")[2]
        return f"{p.scheme}:{path}" if p.scheme else path
    return f"{p.scheme}://{p.netloc.rpartition('@')[2]}{p.path}"


def mqtt_url_problem(url: str) -> str | None:
    """What stops an MQTT target's url from naming the broker vagt would connect to, told
    without the url's user or password; None when nothing does. A password holding an
    unencoded '/', '?' or '#' ends the host part early: read as it was, its start became a
    port, and the error at the engine's start quoted it."""
    scheme, slashes, rest = url.partition("://")
    if not slashes or scheme.lower() not in ("mqtt", "mqtts"):
        return "'url' must start with mqtt:// or mqtts://"
    userinfo = rest.rpartition("@")[0]
    if any(ch in userinfo for ch in "/?#"):
        return ("'url': the user or password holds a '/', '?' or '#', which break the url; "
                "percent-encode them (Python: urllib.parse.quote(password, safe='')), or "
                "give the password with 'password_env' or 'password_file'")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError:   # a port that is not a number, or an unbalanced [ of an IPv6 host
        return f"'url' has no valid host and port: {without_secrets(url)!r}"
    if not parts.hostname:
        return f"'url' names no host: {without_secrets(url)!r}"
    return None
