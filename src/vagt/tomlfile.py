"""The TOML files people write for vagt (rules, alert policy, catalogue, configuration),
read with an error that names the file and says what to do, whatever is wrong with it."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_toml(path: Path, error: Callable[[str], Exception], what: str) -> dict[str, Any]:
    """The document in `path`; `error(message)` raised when it is missing (`what` names
    it: "rule file"), not TOML, not UTF-8 (a file saved on a Windows desk in CP1252) or
    cannot be read (permissions, a folder)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise error(f"{path}: cannot be read: {e.strerror or e}") from None
