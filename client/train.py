"""`python client/train.py` (or `gradserve-train`): train a model on a gradserve server and
export the loss. The command line only: nothing imports this module.

With no --server it starts an embedded server on a free loopback port, so the first run needs
nothing else. Exit codes: 0 done; 1 training failed (diverged, rejected by the server);
2 bad usage or data; 3 server unreachable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# gRPC core reads GRPC_VERBOSITY once, when grpc is imported; unset, this grpc writes its INFO
# lines (a GOAWAY as a server stops, ...) to stderr, into our own output. ERROR, as gRPC
# documents its default, unless the user chose a level.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from gradserve.client.arguments import parse_args
from gradserve.client.data import DataError
from gradserve.client.exit_codes import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from gradserve.client.runner import run
from gradserve.client.transport import ResumeError, TrainingDiverged
from gradserve.errors import GradserveError, UnavailableError


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        return run(config, sys.stdout, sys.stderr)
    except DataError as error:
        print(f"gradserve-train: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UnavailableError as error:
        print(f"gradserve-train: cannot reach the server: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (TrainingDiverged, ResumeError) as error:
        print(f"gradserve-train: {error}", file=sys.stderr)
        return EXIT_FAILED
    except GradserveError as error:
        where = f" ({error.field})" if error.field else ""
        print(
            f"gradserve-train: the server refused: {error.code.name}{where}: {error}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as error:
        print(f"gradserve-train: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
