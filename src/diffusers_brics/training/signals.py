"""Stopping a run on SIGTERM / SIGINT: `stop_signals` turns the first signal into a stop the training loop carries
out at the end of the current step (a checkpoint, then exit), and a second one into KeyboardInterrupt."""

from __future__ import annotations

import signal
from typing import Any

from accelerate.logging import get_logger

logger = get_logger(__name__)


class stop_signals:
    """Within the block, SIGTERM and SIGINT set ``trainer._signal`` (of the `Trainer` running the loop) instead of
    killing the process: the loop then writes a checkpoint at the end of the current step and exits with status
    128 + the signal's number."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.trainer._signal is not None:  # a second signal: leave now
                raise KeyboardInterrupt
            self.trainer._signal = signum
            logger.warning(f"{signal.Signals(signum).name} received: stopping after this step with a checkpoint")

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        return False
