"""A new rule cannot skip the checks every rule gets: the registry (``rules.RULES``) is walked by
the sharding test (tests/rules/test_sharding.py), the memory test (test_memory.py), the fuzzer
(tests/test_fuzz.py), the command line (tests/test_cli.py) and the atlas (tests/test_catalog.py);
here, each rule has the test module that mirrors its own module and that module calls it."""

import re
from pathlib import Path

import pytest

from graphattn import rules

HERE = Path(__file__).parent


@pytest.mark.parametrize("name", rules.RULES)
def test_rule_is_tested_in_its_mirror_module(name):
    module = getattr(rules, name).__module__.rsplit(".", 1)[1]
    path = HERE / f"test_{module}.py"
    assert path.exists(), f"{name} lives in graphattn.rules.{module}: expected tests/rules/{path.name}"
    text = path.read_text()
    assert re.search(rf"\b{name}\(", text), f"tests/rules/{path.name} never calls {name}(...)"


def test_every_public_name_is_a_rule_or_a_helper():
    assert set(rules.__all__) == set(rules.RULES) | set(rules.HELPERS) | {"RULES", "HELPERS"}
