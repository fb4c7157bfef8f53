"""examples/lora_finetune: a short run of the script as a user runs it; the loss falls and peft's
reload of the exported adapter gives the server's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lora_finetune"


def test_the_example_fine_tunes_exports_and_reloads_with_peft(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "adapter"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    short = ["--steps", "6", "--window", "32", "--batch", "4", "--out", str(out), "--json"]
    finished = subprocess.run(
        [sys.executable, "finetune.py", *short],
        cwd=EXAMPLE,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    summary = json.loads(lines[-1])
    losses = summary["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0]
    # Each step's loss is printed as it comes.
    assert sum(line.startswith("step ") for line in lines) == 6
    assert summary["max_logit_difference"] == 0.0
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
