"""Every TOML file people write for vagt is refused with the file's name and what is wrong,
whatever is wrong with it: missing, not TOML, not UTF-8, not readable."""

from __future__ import annotations

from pathlib import Path

import pytest

from vagt.alerts.policy import PolicyError, load_policy
from vagt.app.config import ConfigError, load_config
from vagt.devices.catalogue import CatalogueError, load_catalogue
from vagt.rules import RuleConfigError, load_rules

LOADERS = [(load_rules, RuleConfigError, "rule file"),
           (lambda p: load_policy(p, secrets=False), PolicyError, "alert policy file"),
           (load_catalogue, CatalogueError, "catalogue file"),
           (lambda p: load_config(p, env={}), ConfigError, "configuration file")]


@pytest.mark.parametrize(("load", "error", "what"), LOADERS)
def test_a_file_that_cannot_be_used_is_refused_naming_it(tmp_path: Path, load, error, what):
    missing = tmp_path / "missing.toml"
    with pytest.raises(error, match=f"^{missing}: no such {what}$"):
        load(missing)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("# Sønderborg\n".encode("latin-1"))
    with pytest.raises(error, match=f"^{latin1}: not UTF-8 text .*save it as UTF-8"):
        load(latin1)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[x]\n")
    with pytest.raises(error, match=f"^{broken}: not valid TOML"):
        load(broken)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(error, match=f"^{folder}: "):
        load(folder)
