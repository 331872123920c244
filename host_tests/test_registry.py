"""The lazy command table (firmware/registry.py) names exactly the commands each group module
defines, so a command is never unreachable or answered by the wrong group."""

import ast
from pathlib import Path

import pytest

from firmware import registry

ROOT = Path(__file__).resolve().parent.parent


def commands_of(group: str) -> set[str]:
    tree = ast.parse((ROOT / "firmware" / "commands" / f"{group}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMMANDS":
            return {k.value for k in node.value.keys}
    raise AssertionError(f"no COMMANDS in {group}")


@pytest.mark.parametrize(("group", "names"), registry.GROUPS, ids=[g for g, _ in registry.GROUPS])
def test_group_lists_match_the_modules(group, names):
    assert set(names) == commands_of(group)
    assert len(set(names)) == len(names)


def test_no_command_in_two_groups():
    seen = [n for _, names in registry.GROUPS for n in names]
    assert len(seen) == len(set(seen))
