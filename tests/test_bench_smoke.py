"""bench/run.py runs: the seed workload, quick, one repeat, ends 0 with every path bitwise equal;
the replicas workload (when nginx is installed) with both rows and no errors; bench/cold_step.py
runs and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_seed_quick_runs_and_is_bitwise(tmp_path: Path) -> None:
    out = tmp_path / "seed.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--only",
            "seed",
            "--quick",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bitwise ✓" in result.stdout
    assert "bitwise ✗" not in result.stdout
    assert out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/sbin/nginx").is_file(), reason="needs /usr/sbin/nginx")
def test_bench_replicas_quick_measures_both_sides_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "replicas.json"
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--only", "replicas", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["unit"] for row in rows] == ["calls/s", "ms"]
    assert all(row["ours"] and row["baseline"] for row in rows)
    assert "errors: 0 behind nginx, 0 on one process" in rows[0]["notes"]


@pytest.mark.slow
def test_cold_step_runs_and_prints_every_cell() -> None:
    result = subprocess.run(
        [sys.executable, "bench/cold_step.py", "--repeats", "1", "--steps", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = result.stdout.splitlines()
    assert "2 gRPC calls" in rows[0]
    for name in ("store, request ids", "store, no request ids", "local loop"):
        cells = next(row for row in rows if row.startswith(name))[len(name) :].split()
        assert len(cells) == 3 and all(float(cell) > 0 for cell in cells)


@pytest.mark.slow
def test_bench_sampling_quick_runs_and_is_bitwise(tmp_path: Path) -> None:
    out = tmp_path / "sampling.json"
    command = ["bench/run.py", "--only", "sampling", "--quick", "--repeats", "1"]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Sample tokens/s" in result.stdout and "bitwise ✓" in result.stdout
    assert "Sample time to first token" in result.stdout
