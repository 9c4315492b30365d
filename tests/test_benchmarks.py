"""The benchmark harness, smoke-tested: every scenario runs for about a
second against the real pcclog process and the `websockets` peer, and the
rows it reports are complete and consistent. (The numbers themselves are
measured by `make bench`, not here.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_scenario_runs_quick() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--targets",
            "pcclog,websockets",
            "--no-readme",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"raw rows: (\S+\.json)", result.stdout)
    assert match, result.stdout[-2000:]
    report = json.loads((REPO / match[1]).read_text())
    rows = report["rows"]
    by = {(r.get("target"), r.get("scenario")) for r in rows}
    scenarios = {r["scenario"] for r in rows if r.get("target") == "pcclog"}
    # --quick shrinks S1's viewer counts; both S1 sizes and S2-S4 must run.
    assert len([s for s in scenarios if s.startswith("S1-")]) == 2, sorted(by)
    assert {"S2", "S3", "S4", "S6"} <= scenarios, sorted(by)
    assert ("websockets", "S2") in by, sorted(by)
    for row in rows:
        if row.get("target") != "pcclog":
            continue
        assert not row.get("error"), row
        assert row.get("seq_errors", 0) == 0, row
        if row["scenario"].startswith("S1"):
            assert row["deliveries_per_s"] > 0 and row["incomplete_viewers"] == 0, row
        if row["scenario"] == "S3":
            assert row["still_open"] == row["conns"], row
        if row["scenario"] == "S6":
            # The legitimate viewer got every line while the attackers ran.
            assert row["legit_in_order"] and row["legit_received"] == row["legit_sent"], row
            assert row["queued_peak_mb"] > 0, row
    core = [r for r in rows if r.get("target") == "pcclog_core"]
    assert core and all(r["frames_per_s"] > 0 for r in core), core
