"""`gradserve runs list|show|create|delete` and `gradserve digest RUN` (docs/runs.md)."""

from __future__ import annotations

import argparse
from typing import Any

from ..gradient_client import GradientClient
from .output import Answer, plain, run_label


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    runs = commands.add_parser("runs", help="list, show, create and delete runs")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="the runs you may see").set_defaults(
        handler=list_runs
    )
    show = actions.add_parser(
        "show", parents=[common], help="a run: owner, model, version, checkpoints, datasets"
    )
    show.add_argument("run", metavar="RUN", help="the run ('' : the default run)")
    show.set_defaults(handler=show_run)
    create = actions.add_parser("create", parents=[common], help="create a run")
    create.add_argument("run", metavar="RUN", help="its name ('' : the server chooses one)")
    create.add_argument("--model", default="", help="model spec (none for a fork)")
    create.add_argument("--loss", default=None, help="loss (none: the model's)")
    create.add_argument("--optimizer", default=None, help="optimizer (none: sgd)")
    create.add_argument("--seed", type=int, default=None, help="seed of the initial parameters")
    create.add_argument(
        "--from-checkpoint", default=None, metavar="RUN/NAME", help="fork this checkpoint"
    )
    create.add_argument(
        "--with-optimizer-state",
        action="store_true",
        help="the fork takes the checkpoint's optimizer state too",
    )
    create.set_defaults(handler=create_run)
    delete = actions.add_parser("delete", parents=[common], help="delete a run")
    delete.add_argument("run", metavar="RUN")
    delete.add_argument(
        "--delete-checkpoints", action="store_true", help="its checkpoints too (else kept)"
    )
    delete.set_defaults(handler=delete_run)
    digest = commands.add_parser(
        "digest", parents=[common], help="a run's state digest (SHA-256) and version"
    )
    digest.add_argument("run", metavar="RUN", help="the run ('' : the default run)")
    digest.set_defaults(handler=state_digest)


def list_runs(client: GradientClient, args: argparse.Namespace) -> Answer:
    runs = client.list_runs()
    return Answer(
        runs,
        ("RUN", "OWNER", "MODEL", "OPTIMIZER", "VERSION", "LOADED", "BYTES"),
        [
            (
                run_label(r.run),
                r.owner or "-",
                r.model_spec,
                r.optimizer,
                r.model_version,
                "yes" if r.loaded else "no",
                r.parameter_bytes,
            )
            for r in runs
        ],
    )


def show_run(client: GradientClient, args: argparse.Namespace) -> Answer:
    # GetRun: an idle, unloaded run is shown without being loaded back.
    details = client.get_run(args.run)
    summary = details.summary
    shown = {
        **plain(summary),
        **{key: value for key, value in plain(details).items() if key != "summary"},
    }
    rows = [
        ("run", run_label(summary.run)),
        ("owner", details.owner or "-"),
        ("model", summary.model_spec),
        ("loss", details.loss or "(the model's)"),
        ("optimizer", summary.optimizer),
        ("version", summary.model_version),
        ("loaded", "yes" if summary.loaded else "no"),
        ("parameter bytes", summary.parameter_bytes),
        ("checkpoints", details.checkpoints),
        ("datasets", f"{details.datasets} ({details.dataset_bytes} bytes)"),
    ]
    if details.base_model:
        rows.insert(3, ("base model", details.base_model))
    return Answer(shown, ("FIELD", "VALUE"), [(key, str(value)) for key, value in rows])


def create_run(client: GradientClient, args: argparse.Namespace) -> Answer:
    name, info = client.create_run(
        args.run,
        model=args.model,
        loss=args.loss,
        optimizer=args.optimizer,
        seed=args.seed,
        from_checkpoint=args.from_checkpoint,
        with_optimizer_state=args.with_optimizer_state,
    )
    return Answer(
        {
            "run": name,
            "model": info.model_spec,
            "loss": info.loss,
            "optimizer": info.optimizer,
            "model_version": info.model_version,
        },
        line=f"created run {name}: {info.model_spec}, {info.loss}, {info.optimizer}, "
        f"version {info.model_version}",
    )


def delete_run(client: GradientClient, args: argparse.Namespace) -> Answer:
    deleted = client.delete_run(args.run, delete_checkpoints=args.delete_checkpoints)
    return Answer(
        {"run": args.run, "deleted_checkpoints": deleted},
        line=f"deleted run {args.run} ({deleted} checkpoints deleted with it)",
    )


def state_digest(client: GradientClient, args: argparse.Namespace) -> Answer:
    digest = client.for_run(args.run).state_digest()
    return Answer(
        {"run": args.run, **plain(digest)},
        line=f"{digest.digest}  version {digest.model_version}",
    )
