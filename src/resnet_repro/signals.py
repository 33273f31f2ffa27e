"""What SIGINT, SIGTERM and the schedulers' SIGUSR1/SIGUSR2 do at each moment of a command.

Before a run's first step (composing, reading data, building, compiling) and between runs, a signal
ends the command at once: nothing has been trained since the last checkpoint, so nothing is lost
(`Signalled`, one line). While a run trains (`StopFlag.armed`), a signal only sets the flag: the loop
saves a checkpoint at the next step and stops, and the same command resumes. A handler that was there
before ours (submitit's requeue on preemption or time limit) is handed the signal afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from .errors import Interrupted

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))
REQUEUE = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))


class Signalled(BaseException):
    """A signal before training started or between runs. A BaseException, like KeyboardInterrupt, so no
    `except Exception` on the way up can take it for another error. `after_run`: it came once the last
    step was taken, so that run is finished and there is nothing to requeue it for."""

    def __init__(self, signum: int, after_run: bool = False):
        self.signum, self.after_run = signum, after_run
        super().__init__(f"interrupted ({signal.Signals(signum).name}) before training started or between runs: "
                         f"nothing to resume, nothing lost; run the same command again")


def exit_at_once(signum: int, _frame=None) -> None:
    """Before the runner takes over (the command still importing torch, composing): one line and out. Not an
    exception: raised in the middle of an import, one can leave a half-initialised extension behind that
    hangs the interpreter's exit, and nothing here needs cleaning up."""
    sys.stderr.write(f"{Signalled(signum)}\n")
    sys.stderr.flush()
    os._exit(130)


def install_setup_handlers() -> None:
    """From the start of a command until the runner installs its `StopFlag`: a signal ends it at once."""
    for s in SIGNALS:
        signal.signal(s, exit_at_once)


class StopFlag:
    """Set by a signal while `armed` (a run is training: the loop checkpoints at the next step and stops);
    a signal while not armed raises `Signalled` at once."""

    def __init__(self):
        self.requested = False
        self.armed = False
        self.signals: list[int] = []  # every signal received, in order

    def set(self, signum: int | None = None, _frame=None):
        self.requested = True
        if signum is not None:
            self.signals.append(signum)
        if not self.armed and signum is not None:
            raise Signalled(signum)

    @property
    def signum(self) -> int | None:
        """The signal to hand on: a scheduler's requeue signal if one came (submitit sends SIGTERM, then
        SIGUSR2, on preemption), else the first."""
        requeue = [s for s in self.signals if s in REQUEUE]
        return requeue[-1] if requeue else (self.signals[0] if self.signals else None)

    @contextlib.contextmanager
    def installed(self):
        """Our handler for the command; afterwards the previous handlers back, and the signal handed on to
        a handler installed before ours, only if the command stopped for it (not if the runs finished)."""
        previous = {s: signal.signal(s, self.set) for s in SIGNALS}
        stopped = False
        try:
            yield self
        except (Interrupted, Signalled) as e:  # stopped with a checkpoint, or before any step: requeue it
            stopped = self.requested and not getattr(e, "after_run", False)
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            handler = previous.get(self.signum)
            if stopped and callable(handler) and handler not in (signal.default_int_handler, exit_at_once):
                handler(self.signum, None)  # e.g. submitit requeues the job and exits

    @contextlib.contextmanager
    def training(self):
        """Armed while a run trains; a signal that came meanwhile but found no step to stop at (after the
        last one) ends the command when training is over."""
        self.armed = True
        try:
            yield
        finally:
            self.armed = False
        if self.requested:
            raise Signalled(self.signum, after_run=True)
