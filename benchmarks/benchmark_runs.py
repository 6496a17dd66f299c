"""What the training benchmarks share: a fresh folder for the run, and running a command the way reports show it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"  # each benchmark's default output folder lies in it


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


def shown_path(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it: as reports show it."""
    return os.path.relpath(path, ROOT) if path.resolve().is_relative_to(ROOT) else str(path)


def shown_command(command: list[str]) -> str:
    """``command`` without its interpreter, with paths relative to the repository: as reports show it."""
    return " ".join(os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in command[1:])


def run_shown(command: list[str], env: dict[str, str] | None = None) -> str:
    """Prints ``command`` with paths relative to the repository, runs it (raising on failure, in ``env`` if given),
    returns it as shown.

    SIGTERM, SIGINT and SIGHUP to the benchmark are passed on to the command, which runs in its own session so that
    a terminal's Ctrl-C reaches it only this way, once: a training run then writes its checkpoint and exits, and the
    benchmark exits after it with status 128 + the signal (a benchmark that caches its runs resumes from that
    checkpoint when run again). A second signal is passed on too, and the training script then leaves at once."""
    print("$", shown_command(command), flush=True)
    received: list[int] = []
    with subprocess.Popen(command, env=env, start_new_session=True) as child:

        def forward(signum, frame):
            received.append(signum)
            child.send_signal(signum)

        previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            returncode = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if received:
        print(
            f"{signal.Signals(received[0]).name} passed on: the run stopped with status {returncode}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + received[0])
    if returncode:
        raise subprocess.CalledProcessError(returncode, command)
    return shown_command(command)
