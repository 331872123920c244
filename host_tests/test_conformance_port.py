"""The conformance suite's port mode, proven on a real serial path: the virtual module's pty.

A virtual module is started here; a second pytest run (as `make conformance PORT=<pty>` does)
drives it through EMW_PORT as it would an ESP32 or a genuine EMW module on a USB adapter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from host_tests.module import REPO, Module

# Tests that run on any target, and one that needs the control interface (power cut): skipped.
SELECTION = [
    "host_tests/test_engine.py::test_fwver_all_forms",
    "host_tests/test_engine.py::test_pipelined_commands_are_all_answered_in_order",
    "host_tests/test_engine.py::test_uartfomat",
    "host_tests/test_tcpip.py::test_binary_both_ways_and_data_with_the_command",
    "host_tests/test_engine.py::test_power_cut_keeps_settings",
    "host_tests/test_launcher.py",  # not a wire test: deselected
]


def test_conformance_tests_run_through_a_serial_port(tmp_path: Path) -> None:
    report = tmp_path / "conformance.xml"
    with Module(tmp_path / "state") as m:
        env = dict(os.environ, EMW_PORT=m.uart, EMW_BAUD="115200")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *SELECTION,
                "-m",
                "conformance",
                "-v",
                "-rs",
                "-p",
                "no:cacheprovider",
                "--timeout=300",
                f"--junitxml={report}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        boots = m.status()["boots"]
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert f"target: {m.uart} at 115200 baud" in out
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    skipped = {name for name, c in cases.items() if c.find("skipped") is not None}
    assert skipped == {"test_power_cut_keeps_settings"}, out
    assert "the world's control interface" in out
    assert len(cases) - len(skipped) == 4
    assert not any(
        c.find("failure") is not None or c.find("error") is not None for c in cases.values()
    )
    assert not any("test_launcher" in (c.get("classname") or "") for c in cases.values())
    assert boots > len(cases)  # each test began with AT+FACTORY, which restarts the module
