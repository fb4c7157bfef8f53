"""The fenced code blocks of README.md, README.pypi.md and docs/*.md, with the marker that
says what the doc harness (tests/test_docs.py) does with each.

A marker is an HTML comment on the line right above the opening fence (GitHub and package
indexes do not show it):

    <!-- test -->                 run it: a python block in this process, a bash/sh block with
                                  bash -euo pipefail; a json block is a --model-file the
                                  server builds
    <!-- test: continues -->      run it after the test block above it on the page, in its
                                  namespace (python) and against the same server
    <!-- test: server model=mlp:2-8-3 -->  its server built with these flat settings
    <!-- test: serves -->         a shell block whose first command starts a server in the
                                  foreground: the harness starts it in the background (with
                                  `--port 50051` made `--port 0`), waits for its "listening on"
                                  line, runs the rest of the block (and the blocks that continue
                                  it) against it, then stops it with SIGTERM; exit 0 expected
    <!-- test: needs=openssl -->  skipped, saying so, where that program is not installed
    <!-- illustrative: why -->    shown, never run (output, a sketch, needs docker, a server
                                  in the foreground, ...)

A block with no marker fails the harness: every block is either run or said not to be.
Every test block gets a real server on a free loopback port; `127.0.0.1:50051` in the block
is replaced by its address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_ADDRESS = "127.0.0.1:50051"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*(test|illustrative)\b:?\s*(.*?)\s*-->$")


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "README.pypi.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    body: str
    marker: str | None  # "test", "illustrative" or None
    note: str = ""  # the marker's text after its kind
    settings: dict[str, str] = field(default_factory=dict)  # `server k=v ...` of a test marker

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def continues(self) -> bool:
        return self.marker == "test" and "continues" in self.note.split()

    @property
    def serves(self) -> bool:
        return self.marker == "test" and "serves" in self.note.split()

    @property
    def needs(self) -> list[str]:
        """Programs the block runs that a machine may lack (`needs=openssl`)."""
        return [
            word.removeprefix("needs=") for word in self.note.split() if word.startswith("needs=")
        ]

    def split_server(self) -> tuple[str, str]:
        """A `serves` block: its first command (with its continuation lines), and the rest."""
        lines = self.body.splitlines(keepends=True)
        end = 0
        while lines[end].rstrip().endswith("\\"):
            end += 1
        command = "".join(lines[: end + 1]).replace("--port 50051", "--port 0")
        return command, "".join(lines[end + 1 :])


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence = opening.group(2)
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        above = lines[index - 1].strip() if index else ""
        marked = MARKER.match(above)
        indent = len(opening.group(1))
        body = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        block = Block(page, index + 1, opening.group(3).lower(), body, None)
        if marked:
            block.marker, block.note = marked.group(1), marked.group(2)
            words = block.note.split()
            if block.marker == "test" and words[:1] == ["server"]:
                pairs = (w.split("=", 1) for w in words[1:] if not w.startswith("needs="))
                block.settings = dict(pairs)
        found.append(block)
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]


def chains() -> list[list[Block]]:
    """The test blocks, each with the `continues` blocks after it on its page."""
    runs: list[list[Block]] = []
    for block in all_blocks():
        if block.marker != "test":
            continue
        if block.continues:
            assert runs and runs[-1][0].page == block.page, f"{block.where}: continues nothing"
            runs[-1].append(block)
        else:
            runs.append([block])
    return runs
