"""`gradserve checkpoints list|save|load|delete RUN ...` (docs/runs.md, docs/checkpoints.md)."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from ..gradient_client import GradientClient
from .output import Answer, plain


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    checkpoints = commands.add_parser(
        "checkpoints", help="list, save, load and delete a run's checkpoints"
    )
    actions = checkpoints.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="a run's checkpoints, oldest first")
    listing.add_argument("run", metavar="RUN", help="the run ('' : the default run)")
    listing.set_defaults(handler=list_checkpoints)
    save = actions.add_parser("save", parents=[common], help="checkpoint a run now, durably")
    save.add_argument("run", metavar="RUN")
    save.add_argument("name", metavar="NAME", nargs="?", default="", help="none: the server's")
    save.set_defaults(handler=save_checkpoint)
    load = actions.add_parser("load", parents=[common], help="load a checkpoint into its run")
    load.add_argument("run", metavar="RUN")
    load.add_argument("name", metavar="NAME")
    load.add_argument(
        "--with-optimizer-state", action="store_true", help="restore the optimizer's state too"
    )
    load.set_defaults(handler=load_checkpoint)
    delete = actions.add_parser("delete", parents=[common], help="delete one checkpoint")
    delete.add_argument("run", metavar="RUN")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=delete_checkpoint)


def list_checkpoints(client: GradientClient, args: argparse.Namespace) -> Answer:
    checkpoints = client.for_run(args.run).list_checkpoints()
    return Answer(
        checkpoints,
        ("NAME", "VERSION", "SAVED", "DIGEST"),
        [
            (
                c.name,
                c.model_version,
                datetime.datetime.fromtimestamp(c.saved_at, datetime.timezone.utc).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                c.digest[:16],
            )
            for c in checkpoints
        ],
    )


def save_checkpoint(client: GradientClient, args: argparse.Namespace) -> Answer:
    saved = client.for_run(args.run).save_checkpoint(args.name)
    return Answer(
        {"run": args.run, **plain(saved)},
        line=f"saved {saved.name} at version {saved.model_version} (digest {saved.digest[:16]})",
    )


def load_checkpoint(client: GradientClient, args: argparse.Namespace) -> Answer:
    loaded = client.for_run(args.run).load_checkpoint(
        args.name, with_optimizer_state=args.with_optimizer_state
    )
    return Answer(
        {"run": args.run, "name": args.name, **plain(loaded)},
        line=f"loaded {args.name} (version {loaded.checkpoint_version}): the run is at version "
        f"{loaded.model_version} (digest {loaded.digest[:16]})",
    )


def delete_checkpoint(client: GradientClient, args: argparse.Namespace) -> Answer:
    client.for_run(args.run).delete_checkpoint(args.name)
    return Answer({"run": args.run, "name": args.name}, line=f"deleted checkpoint {args.name}")
