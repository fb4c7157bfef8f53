"""The trainer's and graph command's exit codes (documented in client/train.py)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
