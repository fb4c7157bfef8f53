"""`gradserve export RUN --out DIR`: a run's parameters as DIR/model.safetensors, the file name
the Hugging Face libraries load, readable by any safetensors reader (and by --init-from); an
adapter run's adapter in PEFT's layout instead (adapter_export.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..gradient_client import GradientClient
from ..parameter_files import EXPORT_FILE_NAME, write_parameters
from .adapter_export import adapter_settings, write_adapter
from .output import Answer


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export", parents=[common], help="write a run's parameters as safetensors"
    )
    export.add_argument("run", metavar="RUN", help="the run ('' : the default run)")
    export.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help=f"folder for {EXPORT_FILE_NAME}"
    )
    export.add_argument(
        "--include-buffers",
        action="store_true",
        help="the model's buffers too (batch-norm statistics): the whole state_dict",
    )
    export.set_defaults(handler=export_run)


def export_run(client: GradientClient, args: argparse.Namespace) -> Answer:
    run = client.for_run(args.run)
    # Streamed in chunks: no message limit applies to the model's size.
    version, tensors = run.stream_parameters(include_buffers=args.include_buffers)
    info = run.model_info()
    settings = adapter_settings(info.model_spec)
    if settings and info.base_model:
        # An adapter run: the folder peft loads over the same base.
        path = write_adapter(args.out, tensors, settings, info.base_model)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / EXPORT_FILE_NAME
        metadata = {"model": info.model_spec, "model_version": str(version)}
        write_parameters(path, tensors, metadata)
    size = sum(value.numel() * value.element_size() for value in tensors.values())
    return Answer(
        {
            "run": args.run,
            "file": str(path),
            "model_version": version,
            "tensors": len(tensors),
            "bytes": size,
        },
        line=f"wrote {path}: {len(tensors)} tensors, {size} bytes, version {version}",
    )
