"""What a person watching the terminal sees: a line per step with its time, a bar per long stage, and, in a
quiet run, nothing else: libraries' bars, warnings and logs (ours included) go to a log file.

Quiet works on the file descriptors, not just sys.stdout/sys.stderr: tqdm bars, C++ libraries and child
processes (the quantize workers, which inherit fds 1 and 2) all write there. The terminal is a duplicate of
the original stderr taken before the switch, and only `say`, the bars and the final table write to it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_terminal: IO[str] | None = None  # set while quiet: the real stderr
_live: Any = None  # the rich Progress drawing a bar now, if any: lines go above it


def terminal() -> IO[str]:
    return _terminal or sys.stderr


def say(message: str) -> None:
    line = f"[quantserve] {message}"
    if _live is not None:
        _live.console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        print(line, file=terminal(), flush=True)


@contextmanager
def step(what: str) -> Iterator[None]:
    say(f"{what} ...")
    start = time.perf_counter()
    yield
    say(f"{what}: done in {time.perf_counter() - start:.1f}s")


@contextmanager
def quiet_to(log_path: Path | None) -> Iterator[None]:
    """Everything but `say`, bars and tables goes to log_path until the block ends; None: no change."""
    global _terminal
    if log_path is None or _terminal is not None:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    term = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        _terminal = term
        tqdm_before = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"  # tqdm's bars, here and in children, would only fill the log
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")  # each shown once, in the log (sys.stderr is the log now)
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            _terminal = None
            if tqdm_before is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = tqdm_before
            term.close()


class Bar:
    """A bar over `total` steps on the terminal. Where the terminal is not a TTY (CI, a pipe) it draws nothing:
    the stage's own `say` lines already mark each step there."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Bar:
        global _live
        if terminal().isatty() and _live is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[now]}"),
                                      console=Console(file=terminal()), redirect_stdout=False,
                                      redirect_stderr=False)
            self._task = self._progress.add_task(self.label, total=self.total, now="")
            self._progress.start()
            _live = self._progress
        return self

    def at(self, done: int, what: str = "") -> None:
        """`done` steps finished, working on `what` now."""
        self.done = done
        if self._progress is not None:
            self._progress.update(self._task, completed=done, now=what)

    def __exit__(self, *exc: object) -> None:
        global _live
        if self._progress is not None:
            with contextlib.suppress(Exception):
                self._progress.stop()
            if _live is self._progress:
                _live = None
