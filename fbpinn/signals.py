"""Stop signals: SIGTERM and SIGUSR1 ask a run to stop after a step, with a checkpoint.

This module imports nothing slow, so that ``fbpinn train`` installs its handlers before
torch and the rest of fbpinn are imported: a stop signal that arrives while the run starts
up is kept, and the run stops after its first step (docs/cli.md).

Under MPI every rank learns of a stop in the next step's reduction, so a rank whose peer
is dead or frozen would wait in that collective forever.  :func:`watch` starts a watchdog
thread for this: once a stop was requested, a rank that waits in one collective operation
(marked by :func:`collective`) for longer than :func:`stop_timeout` seconds ends the whole
job with ``MPI_Abort``.  Python runs signal handlers in the main thread only between
bytecodes, never while that thread is blocked inside an MPI call, so the watchdog learns of
the signal from the byte the interpreter's C-level handler writes to the file descriptor
set with :func:`signal.set_wakeup_fd`, not from the Python handler.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))
STOP_TIMEOUT_VARIABLE = "FBPINN_STOP_TIMEOUT"
DEFAULT_STOP_TIMEOUT = 60.0  # seconds a rank may wait in one collective after a stop request
EXIT_STOP_TIMEOUT = 124  # the job was aborted because the peers did not answer after a stop request

# The stop signal received (0: none), when it came (time.monotonic()), how deeply
# stop_signals() is entered, and whether leaving it ignores the signals (see exiting()).
_STOP = {"signal": 0, "at": None, "depth": 0, "exiting": False}
# When this rank entered the collective operation it is waiting in (None: in none).
_WAIT = {"since": None, "depth": 0}
_WATCHDOG: dict = {}  # the running watchdog: thread, its pipes, the saved wakeup fd


def received() -> int:
    """The stop signal received while :func:`stop_signals` is active (0: none)."""
    return _STOP["signal"]


def _note(signum: int) -> None:
    """Record a stop request (the first one's time is kept)."""
    _STOP["signal"] = signum
    if _STOP["at"] is None:
        _STOP["at"] = time.monotonic()


def _on_stop_signal(signum, frame) -> None:
    _note(signum)


@contextlib.contextmanager
def stop_signals():
    """Within the block, SIGTERM and SIGUSR1 do not end the process but ask training to stop:
    all ranks agree at the next step, write a checkpoint and raise
    :class:`fbpinn.trainer.Stopped`.  The CLI enters it before importing anything slow, so
    that a signal during start-up is kept too.  Nested uses share the outer one; outside the
    main thread it does nothing.  Leaving the outermost block stops the watchdog of
    :func:`watch`."""
    saved = {}
    if _STOP["depth"] == 0:
        _STOP["signal"], _STOP["at"], _STOP["exiting"] = 0, None, False
        for sig in STOP_SIGNALS:
            try:
                saved[sig] = signal.signal(sig, _on_stop_signal)
            except ValueError:  # not the main thread
                pass
    _STOP["depth"] += 1
    try:
        yield
    finally:
        _STOP["depth"] -= 1
        if _STOP["depth"] == 0:
            _unwatch()
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_IGN if _STOP["exiting"] else handler)


def exiting() -> None:
    """This process is about to exit with the status all ranks agreed on: leaving the
    outermost :func:`stop_signals` ignores SIGTERM and SIGUSR1 instead of restoring their
    handlers.  ``srun --kill-on-bad-exit`` sends SIGTERM to the other tasks as soon as the
    first one exits with a non-zero status (75 after a stop); a rank still on its way out
    must keep its own status instead of ending with 143."""
    _STOP["exiting"] = True


@contextlib.contextmanager
def collective():
    """Mark a blocking MPI operation: the watchdog of :func:`watch` times the wait in it."""
    if _WAIT["depth"] == 0:
        _WAIT["since"] = time.monotonic()
    _WAIT["depth"] += 1
    try:
        yield
    finally:
        _WAIT["depth"] -= 1
        if _WAIT["depth"] == 0:
            _WAIT["since"] = None


def stop_timeout(environ=None) -> float:
    """Seconds a rank may wait in one collective after a stop request, from
    ``FBPINN_STOP_TIMEOUT`` (default 60).  Raises ValueError naming a malformed value."""
    text = (os.environ if environ is None else environ).get(STOP_TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_STOP_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:  # also false for nan
        raise ValueError(f"{STOP_TIMEOUT_VARIABLE}={text!r}: must be a number of seconds above 0 and at most "
                         f"86400 (default {DEFAULT_STOP_TIMEOUT:g}); set it so or unset it")
    return value


def watch(abort, who: str, timeout: float) -> None:
    """Start the watchdog of this process (within :func:`stop_signals`; a no-op outside it
    or when one runs already).

    After a stop request, if this rank waits in one :func:`collective` for more than
    ``timeout`` seconds (counted from the request or from entering the wait, whichever is
    later), it prints a message naming the rank ``who`` (e.g. ``1/4``) and calls
    ``abort(EXIT_STOP_TIMEOUT)`` (e.g. ``comm.Abort``) from the watchdog thread; should
    that not end the process within 10 seconds, the process exits with that status."""
    if _STOP["depth"] == 0 or _WATCHDOG:
        return
    wake_r, wake_w = os.pipe()
    quit_r, quit_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    saved = None
    try:
        saved = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: the watchdog sees only what the Python handler records
        pass
    thread = threading.Thread(target=_watchdog, args=(abort, who, timeout, wake_r, quit_r),
                              name="fbpinn-stop-watchdog", daemon=True)
    _WATCHDOG.update(thread=thread, fds=(wake_r, wake_w, quit_r, quit_w), saved=saved)
    thread.start()


def _unwatch() -> None:
    """Stop the watchdog (if any) and give the wakeup file descriptor back."""
    if not _WATCHDOG:
        return
    wake_r, wake_w, quit_r, quit_w = _WATCHDOG["fds"]
    if _WATCHDOG["saved"] is not None:
        try:
            signal.set_wakeup_fd(_WATCHDOG["saved"])
        except ValueError:
            pass
    os.write(quit_w, b"q")
    _WATCHDOG["thread"].join(timeout=5)
    for fd in (wake_r, wake_w, quit_r, quit_w):
        os.close(fd)
    _WATCHDOG.clear()


def _watchdog(abort, who: str, timeout: float, wake_r: int, quit_r: int) -> None:
    """The watchdog thread's loop (see :func:`watch`)."""
    while True:
        armed = _STOP["at"] is not None
        ready, _, _ = select.select([wake_r, quit_r], [], [], 0.2 if armed else 1.0)
        if quit_r in ready:
            return
        if wake_r in ready:
            try:
                data = os.read(wake_r, 512)
            except BlockingIOError:
                data = b""
            for signum in data:  # the C-level handler writes one byte per signal, any signal
                if signum in STOP_SIGNALS:
                    _note(signum)
        since, at = _WAIT["since"], _STOP["at"]
        if since is None or at is None:
            continue
        waited = time.monotonic() - max(since, at)
        if waited > timeout:
            name = signal.Signals(_STOP["signal"]).name if _STOP["signal"] else "a signal"
            print(f"fbpinn: rank {who}: stop requested by {name}, but the other ranks did not answer within "
                  f"{timeout:g} s ({STOP_TIMEOUT_VARIABLE}): a rank is dead or frozen; aborting the job (the "
                  "newest checkpoint is kept)", file=sys.stderr, flush=True)
            time.sleep(1.0)  # let the launcher forward the message before the job is torn down
            threading.Thread(target=abort, args=(EXIT_STOP_TIMEOUT,), daemon=True).start()
            time.sleep(10.0)
            os._exit(EXIT_STOP_TIMEOUT)
