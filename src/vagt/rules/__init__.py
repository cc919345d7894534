"""Rules: what in a batch of readings and events should open or clear an alert.

Rules take numpy columns and return firings and clears; they know nothing of MQTT or SQL.
"""

from vagt.rules.config import Rule, RuleConfigError, load_rules
from vagt.rules.evaluate import Clears, Firings, evaluate

__all__ = ["Clears", "Firings", "Rule", "RuleConfigError", "evaluate", "load_rules"]
