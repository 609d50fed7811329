"""The node's ``escalate`` setting: joint-inference rules by model, checked.

One setting in every form the loader reads: a TOML table of tables
(``[escalate.digits-small]`` with ``to``, ``threshold`` and optional
``output``), or, from ``--escalate`` (repeatable) and ``EDGEMESH_ESCALATE``
(comma-separated), ``MODEL=TARGET@THRESHOLD[:OUTPUT]``. A rule given here
replaces the one the model's manifest declares. The rule itself is
:class:`mesh.core.policy.escalation.EscalationRule`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

from mesh.core.policy.escalation import EscalationRule, parse_rule, parse_rule_text
from mesh.errors import ConfigError

__all__ = ["escalation_rules"]


def escalation_rules(key: str, value: object) -> tuple[EscalationRule, ...]:
    """The rules of the ``escalate`` setting; ConfigError names ``key`` and what is wrong."""
    rules: list[EscalationRule]
    if isinstance(value, Mapping):
        rules = [parse_rule(str(model), table, f"{key}.{model}") for model, table in value.items()]
    elif isinstance(value, str):
        rules = [parse_rule_text(part, key) for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        rules = [
            parse_rule_text(part, key) if isinstance(part, str) else _not_a_rule(key, part)
            for part in value
        ]
    else:
        _not_a_rule(key, value)
    models = [rule.model for rule in rules]
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise ConfigError(f"{key}: more than one rule for model(s) {twice}; give one each")
    return tuple(rules)


def _not_a_rule(key: str, value: object) -> NoReturn:
    raise ConfigError(
        f"{key} must be a table of rules ([escalate.MODEL] to = ..., threshold = ...) or"
        f" MODEL=TARGET@THRESHOLD[:OUTPUT] text, got {value!r}"
    )
