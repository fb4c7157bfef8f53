"""The soak (bench/soak.py) for a few seconds: every kind of call done, no errors, the server
stopping cleanly, and RSS growth bounded. A short run is warm-up dominated, so the bound is
generous; the 10-minute figures are a manual run (`python bench/soak.py --seconds 600`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_has_no_errors_and_bounded_rss(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--seconds",
            "8",
            "--sample-every",
            "2",
            "--json",
            str(report_path),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(report_path.read_text())
    assert report["errors"] == 0, report["first_errors"]
    assert report["server_exit_code"] == 0
    calls = report["calls"]
    for kind in ("ComputeGradients", "ApplyUpdate", "Train"):
        assert calls.get(kind, 0) > 0, calls
    assert len(report["samples"]) >= 4
    assert report["rss_growth_mib"] < 50, report["samples"]
    assert report["rss_end_mib"] <= report["rss_max_mib"]
    assert "RSS (MiB)" in completed.stdout
