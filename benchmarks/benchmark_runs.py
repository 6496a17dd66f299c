"""What the training benchmarks share: a fresh folder for the run, and running a command the way reports show it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def split_argv(default_extra: list[str]) -> tuple[list[str], list[str]]:
    """The command line split at ``--``: the benchmark's own arguments, and those for the training script
    (``default_extra`` when there is no ``--``)."""
    argv = sys.argv[1:]
    if "--" not in argv:
        return argv, default_extra
    return argv[: argv.index("--")], argv[argv.index("--") + 1 :]


def fresh_run_dir(output: Path) -> Path:
    """``OUTPUT/run``, emptied, for the training run (git ignores it); ``OUTPUT`` is created if needed."""
    run_dir = output / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    output.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_shown(command: list[str], env: dict[str, str] | None = None) -> str:
    """Prints ``command`` with paths relative to the repository, runs it (raising on failure, in ``env`` if given),
    returns it as shown."""
    shown = " ".join(os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in command[1:])
    print("$", shown, flush=True)
    subprocess.run(command, check=True, env=env)
    return shown
