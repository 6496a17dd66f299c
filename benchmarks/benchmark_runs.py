"""What the training benchmarks share: a fresh folder for the run, and running a command the way reports show it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh_run_dir(output: Path) -> Path:
    """``OUTPUT/run``, emptied, for the training run (git ignores it); ``OUTPUT`` is created if needed."""
    run_dir = output / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    output.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_shown(command: list[str]) -> str:
    """Prints ``command`` with paths relative to the repository, runs it (raising on failure), returns it as shown."""
    shown = " ".join(os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in command[1:])
    print("$", shown, flush=True)
    subprocess.run(command, check=True)
    return shown
