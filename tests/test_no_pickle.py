"""Nothing in the project unpickles: no pickle-family imports, no torch.load without
weights_only=True, no numpy allow_pickle. Comments and strings are ignored (tokenized)."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("server", "client", "src", "tests", "bench", "scripts", "examples")
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def code_tokens(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    kinds = (tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE)
    return [
        token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type not in kinds
        and not token.string.isspace()
        and token.type not in (tokenize.INDENT, tokenize.DEDENT)
    ]


def python_files() -> list[Path]:
    files = []
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            # Generated protobuf code is checked by scripts/gen_proto.sh, not written by hand.
            if "gradserve/v1" not in path.as_posix() and path.is_file():
                files.append(path)
    return sorted(set(files))


def problems_in(path: Path) -> list[str]:
    tokens = code_tokens(path)
    found = []
    for i, token in enumerate(tokens):
        if token in PICKLERS:
            found.append(f"{path.relative_to(ROOT)}: uses {token}")
        is_torch_load = (
            token == "torch"
            and tokens[i + 1 : i + 4] == [".", "load", "("]
            and (i == 0 or tokens[i - 1] != ".")  # not safetensors.torch.load(bytes)
        )
        if is_torch_load:
            depth, j = 0, i + 3
            call = []
            while j < len(tokens):
                depth += tokens[j] == "("
                depth -= tokens[j] == ")"
                call.append(tokens[j])
                if depth == 0:
                    break
                j += 1
            if "weights_only=True" not in "".join(call):
                found.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
        if token == "allow_pickle" and tokens[i + 1 : i + 3] == ["=", "True"]:
            found.append(f"{path.relative_to(ROOT)}: allow_pickle=True")
    return found


def test_no_code_unpickles() -> None:
    files = python_files()
    assert len(files) > 20, "the scan found too few files to mean anything"
    problems = [problem for path in files for problem in problems_in(path)]
    assert not problems, problems


def test_the_scan_catches_what_it_looks_for(tmp_path) -> None:
    bad = ROOT / "tests" / "_pickle_probe_for_test.py"
    bad.write_text(
        "import pickle\nimport torch\nx = torch.load('f')\ny = torch.load('f', weights_only=True)\n"
        "import numpy\nz = numpy.load('f', allow_pickle=True)\n# pickle in a comment is fine\n"
    )
    try:
        problems = problems_in(bad)
    finally:
        bad.unlink()
    assert len(problems) == 3, problems
