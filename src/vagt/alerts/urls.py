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
