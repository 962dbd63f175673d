"""The exceptions users see, and the one handler of Ctrl-C and SIGTERM: run_main turns each into one line on stderr."""
import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import types


def short_reason(error, limit=160):
    """An exception's first line (without terminal colours) for a one-line message, or its type when it says nothing."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def shown(value, limit=60):
    """A value as a message shows it: its repr, cut short (a pickle can hold a list nested past what repr reaches)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a {type(value).__name__} nested too deep to show"
    return text if len(text) <= limit else text[:limit] + "..."


class UserError(Exception):
    """A problem with the user's input or files: run_main prints it as one line and exits 2, with no traceback."""


class Stopped(Exception):
    """A run stopped from outside after saving what it could; run_main prints the message (if any) and exits 130."""


# How this process answers Ctrl-C and SIGTERM: one handler, whose answer depends on what the process is doing.
#   loading   the script's imports are still loading: end the process at once
#   running   main is working: raise KeyboardInterrupt where it is
#   deferred  a training step is in flight: note the request (the loop stops after the step); a second one raises
#   finished  main has returned: ignore it, the work is done
_signals = types.SimpleNamespace(mode="running", requested=False)


def _on_signal(signum, frame):
    if _signals.mode == "loading":
        print("\ninterrupted", file=sys.stderr, flush=True)
        os._exit(130)
    if _signals.mode == "deferred" and not _signals.requested:
        _signals.requested = True
    elif _signals.mode != "finished":
        raise KeyboardInterrupt


def _handle_signals(mode, handler=_on_signal):
    _signals.mode = mode
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, handler)


def stop_cleanly(module_name):
    """Where the module runs as a script, Ctrl-C and SIGTERM end it from here on with one line and status 130, never a
    traceback. Scripts call it before their slow imports (torch takes a second): an exception raised while modules load
    can land where Python only reports it and carries on, so until run_main starts the work, a stop ends the process."""
    if module_name == "__main__":
        _handle_signals("loading")


@contextlib.contextmanager
def deferred_stop():
    """While training: a stop request waits for the step in flight (`.requested` says one came)."""
    before, _signals.requested = _signals.mode, False
    _handle_signals("deferred")
    try:
        yield _signals
    finally:
        _signals.mode = before


def run_main(main, argv=None):
    """Call main(argv); a UserError becomes 'error: ...' on stderr and exit 2, and a stop from outside (Ctrl-C, or a
    SIGTERM from kill, a job scheduler's time limit or torchrun) arrives as a KeyboardInterrupt: one line and exit 130,
    not a traceback (a run that saved its work first raises Stopped, saying so). With argv None (the command line), a
    stop after main has finished is ignored, or Python, restoring the signals' defaults as it shuts down, would kill
    the finished run with no message."""
    _handle_signals("running")
    for stream in (sys.stdout, sys.stderr):  # a file name or prompt that is not UTF-8 prints as \xff escapes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    stdout, sys.stdout = sys.stdout, StdoutUntilClosed(sys.stdout)
    try:
        result = main(argv)
        # No call between main's return and this line, so no signal handler runs in between: from here on a late
        # stop is ignored, even during the clean-up below.
        _signals.mode = "finished"
        return result
    except (UserError, KeyboardInterrupt, Stopped) as e:
        tqdm = sys.modules.get("tqdm")  # end any progress bar still drawn, so that the message starts a line of its own
        for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
            bar.close()
        if isinstance(e, UserError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        message = str(e) if isinstance(e, Stopped) else "interrupted"
        if message:  # a Stopped without one: another process (torchrun's rank 0) reports the stop
            print(f"\n{message}", file=sys.stderr)
        sys.exit(130)
    finally:
        sys.stdout = stdout
        if argv is not None:  # main was called in-process (by a test): the process goes on
            _signals.mode = "running"
        else:  # SIG_IGN, not a handler of ours: Python resets those as it exits
            _handle_signals("finished", signal.SIG_IGN)


class StdoutUntilClosed:
    """sys.stdout that goes quiet when its reader goes away (`generate.py | head`), the Unix way: no BrokenPipeError,
    and work that writes files still finishes them. `closed_by_reader` tells a script that only prints it may stop."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text):
        self._quietly(self._stream.write, text)
        return len(text)

    def flush(self):
        self._quietly(self._stream.flush)

    def _quietly(self, call, *args):
        try:
            if not self.closed_by_reader:
                call(*args)
        except BrokenPipeError:
            self.closed_by_reader = True  # and point the descriptor at /dev/null: Python's flush at exit stays quiet
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError, one line on stderr (argparse prints the usage first and exits)."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")
