"""Where the installed gradserve.v1 .proto files are: `python -m gradserve.proto_path` prints
the include directory, so that

    protoc -I "$(python -m gradserve.proto_path)" gradserve/v1/gradserve.proto ...

generates a client in any language from the contract this gradserve was built with.
"""

from __future__ import annotations

from pathlib import Path

PROTO_FILE = "gradserve/v1/gradserve.proto"

_PACKAGE = Path(__file__).resolve().parent
# A wheel carries proto/ as gradserve/proto (pyproject.toml maps the package "gradserve.proto"
# onto it); an editable install or a source checkout has it at the repository's root.
_CANDIDATES = (_PACKAGE / "proto", _PACKAGE.parent.parent / "proto")


def include_directory() -> Path:
    """The folder that holds gradserve/v1/gradserve.proto (protoc's -I)."""
    for candidate in _CANDIDATES:
        if (candidate / PROTO_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{PROTO_FILE} is not installed with gradserve")


def main() -> None:
    """`python -m gradserve.proto_path`: print the include root for protoc."""
    print(include_directory())


if __name__ == "__main__":
    main()
