"""`gradserve datasets list|delete RUN ...`: the datasets uploaded to a run (docs/datasets.md)."""

from __future__ import annotations

import argparse
from typing import Any

from ..gradient_client import GradientClient
from .output import Answer, plain


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    datasets = commands.add_parser("datasets", help="list and delete a run's uploaded datasets")
    actions = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="a run's datasets")
    listing.add_argument("run", metavar="RUN", help="the run ('' : the default run)")
    listing.set_defaults(handler=list_datasets)
    delete = actions.add_parser("delete", parents=[common], help="delete one dataset")
    delete.add_argument("run", metavar="RUN")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=delete_dataset)


def list_datasets(client: GradientClient, args: argparse.Namespace) -> Answer:
    datasets, available = client.for_run(args.run).list_datasets()
    return Answer(
        {"run": args.run, "datasets": plain(datasets), "dataset_bytes_available": available},
        ("NAME", "SAMPLES", "BYTES", "DIGEST"),
        [(d.name, d.samples, d.bytes, d.digest[:16]) for d in datasets],
    )


def delete_dataset(client: GradientClient, args: argparse.Namespace) -> Answer:
    released = client.for_run(args.run).delete_dataset(args.name)
    return Answer(
        {"run": args.run, "name": args.name, "released_bytes": released},
        line=f"deleted dataset {args.name} ({released} bytes released)",
    )
