"""Rules: what in a batch of readings and events should open or clear an alert.

Rules take numpy columns and return transitions (fires and clears) with staged per-device
state; they know nothing of MQTT or SQL (stored history comes through a callable).
"""

from vagt.rules._columns import Transitions
from vagt.rules.config import Rule, RuleConfigError, load_rules, parse_duration
from vagt.rules.engine import Evaluation, RuleEngine
from vagt.rules.state import Batch, FleetView, HistorySource

__all__ = ["Batch", "Evaluation", "FleetView", "HistorySource", "Rule", "RuleConfigError",
           "RuleEngine", "Transitions", "load_rules", "parse_duration"]
