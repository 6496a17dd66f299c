"""The code of README.md and docs/: every ```python and ```bash block runs, against tiny models.

A page's blocks run in order in one temporary folder, as a reader would run them, with one Python namespace per page:
the folder holds a tiny pipeline at ``outputs/quickstart/pipeline`` (what `make demo` saves), the same pipeline at
every Hub repository id the pages name (``org/brics-ffhq`` ...: a local folder of that name wins over the Hub), a
tiny text-to-image pipeline at ``outputs/brics-emoji-text``, and a few images. ``brics`` lines run in this process
through ``diffusers_brics.cli.main``. A block that cannot run here follows the line ``<!-- skip-test: REASON -->``;
the flags of every ``brics``, ``python -m diffusers_brics`` and training-script command in any block, skipped or not,
are still parsed by the real argument parsers, and skipped Python blocks still compile.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from builders import ROOT, random_images, tiny_pipeline, tiny_text_pipeline
from PIL import Image

from diffusers_brics import cli
from diffusers_brics.console import canonical_flags

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = "<!-- skip-test"
SKIP = re.compile(r"^<!-- skip-test: (\S.*?) -->$")
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell"}
# what a command line runs -> the `brics` command it amounts to
TRAINING_SCRIPTS = {"examples/train_brics_ae.py": "train-ae", "examples/train_brics_diffusion.py": "train-diffusion"}
MODULES = {
    "diffusers_brics.training.autoencoder": "train-ae",
    "diffusers_brics.training.diffusion": "train-diffusion",
    "diffusers_brics.evaluate": "evaluate",
    "diffusers_brics.summary": "info",
    "diffusers_brics.quickstart": "quickstart",
}
HUB_ID = re.compile(r"""["'= ](org/[\w.-]+)""")
# image files the blocks read, made in the workspace
IMAGES = ("photo.png", "a.png", "b.png", "in.png", "cherry.png")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page; ``skip`` is the reason of its skip-test marker, if any."""

    page: Path
    line: int
    language: str
    code: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, each with the reason of the skip-test marker on the line before it."""
    lines = page.read_text().splitlines()
    blocks, start = [], None
    for index, line in enumerate(lines):
        if start is None:
            match = FENCE.match(line)
            if match:
                start, language = index, match.group(1)
        elif line.strip() == "```":
            marker = SKIP.match(lines[start - 1]) if start > 0 else None
            code = "\n".join(lines[start + 1 : index]) + "\n"
            blocks.append(Block(page, start + 1, language, code, marker.group(1) if marker else None))
            start = None
    assert start is None, f"{page.relative_to(ROOT)}:{start + 1}: a code block that does not end"
    return blocks


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, split at ``&&``, ``;`` and ``|``."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [command for command in commands if command]


def brics_argv(command: list[str]) -> list[str] | None:
    """The ``brics`` arguments a command line amounts to (``brics X``, ``python -m diffusers_brics X``, a training
    script or module, also under ``accelerate launch`` or ``torchrun``), or None for any other program."""
    while command and re.match(r"^[A-Za-z_]\w*=", command[0]):  # VAR=value prefixes
        command = command[1:]
    if not command:
        return None
    program = Path(command[0]).name
    if program == "brics":
        return command[1:]
    if program == "accelerate" and command[1:2] == ["launch"]:
        rest, launcher = command[2:], True
    elif program == "torchrun":
        rest, launcher = command[1:], True
    elif re.fullmatch(r"python(3(\.\d+)?)?", program):
        rest, launcher = command[1:], False
    else:
        return None
    for index, token in enumerate(rest):
        if token == "-m" and index + 1 < len(rest):
            module, tail = rest[index + 1], rest[index + 2 :]
            if module == "diffusers_brics":
                return tail
            return [MODULES[module], *tail] if module in MODULES else None
        if token in TRAINING_SCRIPTS:
            return [TRAINING_SCRIPTS[token], *rest[index + 1 :]]
        if token.endswith(".py") or (not launcher and not token.startswith("-")):
            return None
    return None


def without_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and its subcommands' parsers made to refuse abbreviated flags, so that a flag renamed to a longer
    name fails to parse instead of reading as an abbreviation."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                without_abbreviations(subparser)
    return parser


def parse(argv: list[str], where: str) -> None:
    """Parse ``brics ARGV`` with the command's real parser (nothing runs), abbreviations refused; a usage error fails
    the test."""
    if argv and argv[0] in cli.DELEGATED:
        parser, args = cli.delegated_parser(argv[0]), argv[1:]
        args = canonical_flags(parser, args)
    else:
        parser, args = cli.build_parser(), argv
    without_abbreviations(parser)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `brics {shlex.join(argv)}` does not parse: {stderr.getvalue().strip()}")


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]
RUNNABLE_PAGES = sorted(
    {block.page for block in ALL_BLOCKS if block.skip is None and block.language in PYTHON | SHELL},
    key=lambda page: page.relative_to(ROOT).as_posix(),
)


def test_every_skip_marker_gives_a_reason_and_stands_right_before_a_block():
    assert ALL_BLOCKS and RUNNABLE_PAGES
    for page in PAGES:
        lines = page.read_text().splitlines()
        for index, line in enumerate(lines):
            if line.startswith(MARKER):
                where = f"{page.relative_to(ROOT)}:{index + 1}"
                assert SKIP.match(line), f"{where}: a skip-test marker without a reason: {line}"
                following = lines[index + 1] if index + 1 < len(lines) else ""
                assert FENCE.match(following), f"{where}: a skip-test marker not right before a code block"


def test_every_command_in_the_docs_parses_and_every_python_block_compiles():
    """Skipped blocks included: a renamed or removed flag fails here."""
    parsed = 0
    for block in ALL_BLOCKS:
        if block.language in PYTHON:
            compile(block.code, block.where, "exec")
        elif block.language in SHELL:
            for command in shell_commands(block.code):
                argv = brics_argv(command)
                if argv is not None:
                    parse(argv, block.where)
                    parsed += 1
                else:
                    assert block.skip is not None, (
                        f"{block.where}: `{shlex.join(command)}` is not a brics command, so the test cannot run it: "
                        "mark the block with <!-- skip-test: REASON --> on the line before it"
                    )
    assert parsed >= 20, f"only {parsed} commands found in the docs"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder holding the models and images the pages' blocks name (see the module's docstring)."""
    root = tmp_path_factory.mktemp("docs_workspace")
    pipeline = tiny_pipeline()
    pipeline.save_pretrained(root / "outputs" / "quickstart" / "pipeline")
    for repo_id in sorted({match for block in ALL_BLOCKS for match in HUB_ID.findall(block.code)}):
        shutil.copytree(root / "outputs" / "quickstart" / "pipeline", root / repo_id)
    torch.manual_seed(0)
    text_pipeline = tiny_text_pipeline(pipeline.vae)
    text_pipeline.save_pretrained(root / "outputs" / "brics-emoji-text")
    folder = random_images(root / "random", len(IMAGES))
    for index, name in enumerate(IMAGES):
        shutil.copy(folder / f"{index}.png", root / name)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(root / "mask.png")
    return root


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_the_code_of_a_page_runs(page, workspace, tmp_path, monkeypatch, hf_cache, modules_cache):
    folder = tmp_path / "workspace"
    shutil.copytree(workspace, folder)
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "__docs__"}
    for block in code_blocks(page):
        if block.skip is not None:
            continue
        if block.language in PYTHON:
            exec(compile(block.code, block.where, "exec"), namespace)
        elif block.language in SHELL:
            for command in shell_commands(block.code):
                argv = brics_argv(command)
                assert argv is not None, f"{block.where}: `{shlex.join(command)}` cannot run here: mark the block"
                assert cli.main(argv) == 0, f"{block.where}: `{shlex.join(command)}` failed"
