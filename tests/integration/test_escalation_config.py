"""The node's escalate setting from TOML, the environment and --escalate; its start checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import RuntimeConfig, load_node_config
from mesh.core.policy.escalation import EscalationRule
from mesh.errors import ConfigError
from mesh.node.node import Node
from tests.helpers import MODELS_DIR
from tests.helpers.nodes import node_config

SMALL = EscalationRule("digits-small", "digits-large", 0.8)


def test_a_toml_table_per_model(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(
        '[escalate.digits-small]\nto = "digits-large"\nthreshold = 0.8\n'
        '[escalate.cnn-heavy]\nto = "cnn-big"\nthreshold = 0.5\noutput = "scores"\n'
    )
    config = load_node_config({}, {}, toml)
    assert config.escalation == (SMALL, EscalationRule("cnn-heavy", "cnn-big", 0.5, "scores"))


def test_environment_and_flags_take_the_text_form() -> None:
    env = {"EDGEMESH_ESCALATE": "digits-small=digits-large@0.8, a=b@1:p"}
    assert load_node_config({}, env).escalation == (SMALL, EscalationRule("a", "b", 1.0, "p"))
    # What argparse's append action gives for --escalate given twice.
    flags = {"escalate": ["digits-small=digits-large@0.9", "x=y@0.1"]}
    rules = load_node_config(flags, env).escalation
    assert [r.threshold for r in rules] == [0.9, 0.1]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("digits-small=digits-large", "MODEL=TARGET@THRESHOLD"),
        ("a=b@1,a=c@1", "more than one rule for model"),
        ("a=a@1", "cannot escalate to itself"),
    ],
)
def test_bad_rules_name_the_setting(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_node_config({}, {"EDGEMESH_ESCALATE": value})
    assert "EDGEMESH_ESCALATE" in caught.value.message


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (EscalationRule("digits-small", "digits-large", 0.8, "scores"), "has no output 'scores'"),
        (EscalationRule("digits-small", "digits-large", 0.8, "label"), "float matrix"),
    ],
)
async def test_a_rule_that_cannot_work_stops_the_node_at_start(
    rule: EscalationRule, message: str
) -> None:
    config = node_config(
        escalation=(rule,),
        runtime=RuntimeConfig(model_dirs=(MODELS_DIR,), model_names=("digits-small",)),
    )
    with pytest.raises(ConfigError, match=message):
        await Node(config).run()
