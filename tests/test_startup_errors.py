"""Operator mistakes at start end in one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120.0  # importing torch on a cold, busy 2-core machine


def clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("GRADSERVE_")}


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
        env=clean_environment(),
        check=False,
    )


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1",
         "-subj", "/CN=127.0.0.1"],
        cwd=folder, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return folder / f"{name}.pem", folder / f"{name}.key"


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_a_tls_key_that_does_not_match_the_certificate(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "server")
    _, other_key = self_signed(tmp_path, "other")
    result = run(
        "server/serve.py", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(other_key)
    )
    assert_one_line_exit_2(result, "--tls-key", "does not match")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_a_bad_metrics_tls_certificate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # /metrics starts first, so its TLS files are the first to be read: an operator's mistake
    # there is the same one line and exit 2 as on the gRPC port, not an OSError's exit 1.
    cert, _ = self_signed(tmp_path, "server")
    _, other_key = self_signed(tmp_path, "other")
    with socket.socket() as probe:  # a free port for /metrics (0 would mean "no endpoint")
        probe.bind(("127.0.0.1", 0))
        metrics_port = str(probe.getsockname()[1])
    for tls_cert, expected in (
        (cert, ("--tls-key", "does not match")),
        (tmp_path / "absent.pem", ("tls_cert", "absent.pem")),
    ):
        result = run(
            "server/serve.py",
            "--port",
            "0",
            "--metrics-port",
            metrics_port,
            "--metrics-tls",
            "true",
            "--tls-cert",
            str(tls_cert),
            "--tls-key",
            str(other_key),
        )
        assert_one_line_exit_2(result, *expected)
