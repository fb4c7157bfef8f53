"""`gradserve`'s parser and dispatch: a command per thing on the server, the connection flags
and --json on each, the trainer's exit codes, every error one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gradserve.errors import GradserveError, UnavailableError

from ..connection_flags import (
    ENV_SERVER,
    HelpWithDefaults,
    add_connection_flags,
    connection_from_args,
    open_client,
)
from ..data import DataError
from ..exit_codes import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from . import checkpoints, datasets, export, runs, sample
from .output import write_answer

PROGRAM = "gradserve"


def _serve(argv: Sequence[str]) -> int:
    from ...server.serve import main as serve_main  # noqa: PLC0415 (only for this command)

    return serve_main(argv)


def _train(argv: Sequence[str]) -> int:
    from ..train import main as train_main  # noqa: PLC0415 (only for this command)

    return train_main(argv)


# Commands that are whole programs of their own: everything after the name is theirs.
PROGRAMS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "serve": (_serve, "run a server (gradserve-server; `gradserve serve --help`)"),
    "train": (_train, "train a model (gradserve-train; `gradserve train --help`)"),
}


class _Parser(argparse.ArgumentParser):
    """A parser whose help shows every default; its sub-parsers are of its class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    add_connection_flags(common.add_argument_group("connection"), environ, server_help="required")
    common.add_argument("--json", action="store_true", help="answer with one JSON document")
    parser = _Parser(
        prog=PROGRAM,
        description="Manage a gradserve server's runs, checkpoints and datasets, read digests, "
        "export parameters, sample from a run; `gradserve serve` and `gradserve train` run the server and the "
        "trainer. Exit codes: 0 done, 1 refused by the server, 2 bad usage, 3 unreachable.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, text) in PROGRAMS.items():
        commands.add_parser(name, help=text, add_help=False)
    for module in (runs, checkpoints, datasets, export, sample):
        module.register(commands, common)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in PROGRAMS:
        return PROGRAMS[arguments[0]][0](arguments[1:])
    parser = build_parser(os.environ)
    args = parser.parse_args(arguments)
    connection = connection_from_args(vars(args))
    if connection.server is None:
        parser.error(f"no server: --server HOST:PORT or {ENV_SERVER}")
    try:
        with open_client(connection, connection.server) as client:
            client.wait_until_ready(connection.connect_timeout_seconds)
            answer = args.handler(client, args)
    except UnavailableError as error:
        return _fail(f"cannot reach the server: {error}", EXIT_UNREACHABLE)
    except GradserveError as error:
        where = f" ({error.field})" if error.field else ""
        return _fail(f"the server refused: {error.code.name}{where}: {error}", EXIT_FAILED)
    except (DataError, OSError, ValueError) as error:
        return _fail(str(error), EXIT_USAGE)
    write_answer(answer, args.json, sys.stdout)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
