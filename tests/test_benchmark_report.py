"""scripts/benchmark.py's record: a merged run keeps, per section, the command that measured it."""
from __future__ import annotations

import pytest
from conftest import script_module


@pytest.fixture(scope="module")
def bench():
    with script_module("benchmark") as mod:  # it imports scripts/timing.py
        yield mod


def test_a_merged_run_records_each_sections_own_command(bench):
    sections = ("reid", "consistency", "swap", "speed")
    first = {"command": "A", "commands": {"reid": "A", "consistency": "A", "speed": "A"},
             "reid": 1, "consistency": 2, "speed": 3, "machine": "m"}
    second = bench.merged(first, {"command": "B", "commands": {"consistency": "B", "swap": "B"},
                                  "consistency": 20, "swap": 4, "machine": "n"}, sections)
    assert second["commands"] == {"reid": "A", "speed": "A", "consistency": "B", "swap": "B"}
    assert (second["reid"], second["consistency"], second["swap"], second["speed"], second["machine"]) == (1, 20, 4, 3, "n")
    third = bench.merged(second, {"command": "C", "commands": {"reid": "C"}, "reid": 10}, sections)
    assert third["commands"] == {"speed": "A", "consistency": "B", "swap": "B", "reid": "C"}   # no nesting
    assert bench._by_command(third["commands"]) == {"A": ["speed"], "B": ["consistency", "swap"], "C": ["reid"]}
    # a record from before per-section commands: its one command stands for each of its sections
    old = bench.merged({"command": "old", "reid": 1, "speed": 3}, {"command": "D", "commands": {"swap": "D"}, "swap": 4},
                       sections)
    assert old["commands"] == {"reid": "old", "speed": "old", "swap": "D"}
