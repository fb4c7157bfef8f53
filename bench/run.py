"""`python bench/run.py`: run gradserve's benchmark suite, print the table, write the JSON.

Every server under test runs as its own process on loopback; every baseline is measured in the
same run. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `gradserve` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import torch

from bench.concurrency import clients
from bench.cross_run_batches import batching
from bench.durability import durability
from bench.lora_server import lora
from bench.processes import TORCH_THREADS
from bench.replicas import replicas
from bench.rows import Row, stats
from bench.sampling import sampling
from bench.tinker_round import tinker_round
from bench.transfers import params
from bench.workloads import Settings, mlp, rss, seed

WORKLOADS: dict[str, Callable[[Settings], list[Row]]] = {
    "seed": seed,
    "mlp": mlp,
    "params": params,
    "clients": clients,
    "rss": rss,
    "durability": durability,
    "lora": lora,
    "replicas": replicas,
    "sampling": sampling,
    "tinker": tinker_round,
    "batching": batching,
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (~90 s)")
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS), help="repeatable")
    parser.add_argument("--repeats", type=int, help="default 5, 2 with --quick")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return parser.parse_args(argv)


def machine() -> dict[str, object]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "grpcio": grpc.__version__,
        "kernel": platform.release(),
    }


def figure(values: list[float]) -> str:
    summary = stats(values)
    if summary is None:
        return "-"
    return f"{_num(summary['median'])} [{_num(summary['min'])}-{_num(summary['max'])}]"


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    header = ("workload", "unit", "ours: median [min-max]", "baseline", "ratio", "target", "met")
    lines = [header]
    for row in rows:
        ratios = row.ratios()
        bit = "" if not row.bitwise else (" bitwise ✓" if all(row.bitwise) else " bitwise ✗")
        met = {None: "", True: "yes", False: "NO"}[row.met()]
        ratio = (
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
            if ratios
            else "-"
        )
        lines.append(
            (
                row.name + bit,
                row.unit,
                figure(row.ours),
                f"{row.baseline_name}: {figure(row.baseline)}",
                ratio,
                row.target,
                met,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    ]
    out.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(TORCH_THREADS)
    repeats = args.repeats or (2 if args.quick else 5)
    settings = Settings(quick=args.quick, repeats=max(1, repeats))
    names = args.only or list(WORKLOADS)
    rows: list[Row] = []
    failures: dict[str, str] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for name in names:
        print(f"running {name} ...", flush=True)
        workload_started = time.perf_counter()
        try:
            rows.extend(WORKLOADS[name](settings))
        except Exception:
            failures[name] = traceback.format_exc()
            print(f"{name} failed:\n{failures[name]}", file=sys.stderr, flush=True)
        seconds[name] = time.perf_counter() - workload_started
    info = machine()
    print()
    print(
        f"{info['date']}  nproc {info['nproc']}  {info['cpu']}  torch {info['torch']}  "
        f"grpcio {info['grpcio']}  repeats {settings.repeats}{'  quick' if settings.quick else ''}"
    )
    print(table(rows))
    for row in rows:
        if row.notes:
            print(f"  {row.name}: {row.notes}")
    total = time.perf_counter() - started
    print(f"total {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": info,
        "settings": {"quick": settings.quick, "repeats": settings.repeats, "only": names},
        "seconds": seconds,
        "rows": [row.to_json() for row in rows],
        "failures": failures,
    }
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
