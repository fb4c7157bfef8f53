"""The Tinker API as a listener: `python server/serve.py --tinker-port`, TLS, the futures' order,
and bodies bounded after decompression."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zstandard
from helpers import TIMEOUT
from llm_bases import tiny_llama
from test_startup_errors import self_signed
from tinker_helpers import post, start

from gradserve.server.tinker_api.futures import Answer, FutureQueue

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str, context: ssl.SSLContext | None = None) -> object:
    with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as response:
        return json.loads(response.read())


def test_serve_py_prints_the_tinker_url_and_serves_it(tmp_path: Path) -> None:
    """As a script (server/ on sys.path), the wing must not shadow the SDK it reads."""
    base = tiny_llama(tmp_path / "base")
    command = [
        sys.executable, str(ROOT / "server" / "serve.py"), "--port=0", "--metrics-port=0",
        "--tinker-port=0", f"--base-model=tiny={base}", "--torch-threads=1",
    ]  # fmt: skip
    with (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
    try:
        assert process.stdout is not None
        url = ""
        for line in process.stdout:
            if line.startswith("tinker API listening on http://127.0.0.1:"):
                url = line.rsplit(" ", 1)[1].strip()
            if line.startswith("listening on "):
                break
        assert url, (tmp_path / "stderr").read_text()[-2000:]
        assert _get(url + "/api/v1/healthz") == {"status": "ok"}
        models = _get(url + "/api/v1/get_server_capabilities")
        assert [m["model_name"] for m in models["supported_models"]] == ["tiny"]  # type: ignore[index]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_the_tinker_api_serves_over_the_grpc_ports_tls(make_server, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    _, url = start(make_server, tmp_path, tls_cert=str(cert), tls_key=str(key))
    assert url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the test certificate has a CN and no subjectAltName
    assert _get(url + "/api/v1/healthz", context) == {"status": "ok"}
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        _get(url.replace("https://", "http://") + "/api/v1/healthz")


def test_futures_run_in_seq_id_order_per_model() -> None:
    """A later seq_id that arrives first waits for the earlier ones; retries share a future."""
    loop = asyncio.new_event_loop()
    ran: list[str] = []

    def work(name: str):  # type: ignore[no-untyped-def]
        def run() -> Answer:
            ran.append(name)
            return Answer(name.encode())

        return run

    queue = FutureQueue(
        loop, max_futures=8, max_bytes=1 << 20, ttl_seconds=60,
        on_error=lambda error: Answer(b"failed"),
    )  # fmt: skip
    try:
        third = queue.submit("me", work("3"), size=1, model="m", seq_id=3, payload=b"3")
        second = queue.submit("me", work("2"), size=1, model="m", seq_id=2, payload=b"2")
        assert (
            queue.submit("me", work("2 again"), size=1, model="m", seq_id=2, payload=b"2") == second
        )
        other = queue.submit("me", work("other model"), size=1, model="n", seq_id=1, payload=b"o")
        assert loop.run_until_complete(queue.result(other, "me", 30)) == Answer(b"other model")
        assert ran == ["other model"]  # model m waits for its seq_id 1
        first = queue.submit("me", work("1"), size=1, model="m", seq_id=1, payload=b"1")
        answers = [
            loop.run_until_complete(queue.result(r, "me", 30)) for r in (first, second, third)
        ]
        assert [a.body for a in answers if a is not None] == [b"1", b"2", b"3"]
        assert ran == ["other model", "1", "2", "3"]
    finally:
        queue.close()
        loop.close()


def test_a_compressed_body_is_bounded_after_decompression(make_server, tmp_path: Path) -> None:
    _, url = start(make_server, tmp_path, tinker_max_body_bytes=4096)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (1 << 20))  # 1 MiB of zeros, a few bytes
    assert len(bomb) < 4096
    request = urllib.request.Request(
        url + "/api/v1/forward_backward", data=bomb, method="POST",
        headers={"X-API-Key": "tml-test", "Content-Type": "application/x-protobuf",
                 "Content-Encoding": "zstd"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert refused.value.code == 413
    refused.value.close()
    # Another encoding is refused by name, not read.
    status, refusal = post(url, "/api/v1/create_session", {}, raw=b"{}", encoding="gzip")
    assert status == 415 and "gzip" in refusal["detail"]
