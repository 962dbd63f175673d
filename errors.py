"""The exceptions users see, the one handler of Ctrl-C and SIGTERM, and the wrapper that turns both into one
line on stderr."""
import argparse
import contextlib
import os
import re
import signal
import sys
import threading


def short_reason(error, limit=160):
    """An exception as a few words for a one-line message: its first line (without terminal colours), or its
    type when it says nothing."""
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
    """A problem with the user's input or files, described so they can fix it.

    Scripts raise it anywhere; `run_main` prints its message as a single line
    and exits with status 2. Tracebacks are reserved for bugs.
    """


class Stopped(Exception):
    """A run stopped from outside after saving what it could; run_main prints the message (if any) and exits
    130."""


# How this process answers Ctrl-C and SIGTERM: one handler, whose answer depends on what the process is doing.
#   loading   the script's imports are still loading: end the process at once
#   running   main is working: raise KeyboardInterrupt where it is
#   deferred  a training step is in flight: note the request (the loop stops after the step); a second one raises
#   finished  main has returned: ignore it, the work is done
_signals = {"mode": "running", "requested": False}


def _on_signal(signum, frame):
    mode = _signals["mode"]
    if mode == "loading":
        print("\ninterrupted", file=sys.stderr, flush=True)
        os._exit(130)
    if mode == "deferred" and not _signals["requested"]:
        _signals["requested"] = True
    elif mode != "finished":
        raise KeyboardInterrupt


def _handle_signals(mode):
    _signals["mode"] = mode
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _on_signal)


def stop_cleanly(module_name):
    """When the module is run as a script: from here on, Ctrl-C and SIGTERM end it with one line and status
    130, never a traceback.

    Each script calls it first, before its slow imports (torch takes a
    second to load): an exception raised while modules load can land where
    Python only reports it and carries on, so until run_main starts the
    work, a stop ends the process at once. Imported (by a test), a script
    leaves the signals alone.
    """
    if module_name == "__main__":
        _handle_signals("loading")


class deferred_stop:
    """While training: a stop request waits for the step in flight (`.requested` says one came)."""

    def __enter__(self):
        self._before = _signals["mode"]
        _signals["requested"] = False
        _handle_signals("deferred")
        return self

    @property
    def requested(self):
        return _signals["requested"]

    def __exit__(self, *exc):
        _signals["mode"] = self._before


def run_main(main, argv=None):
    """Call main(argv); turn a UserError into 'error: ...' on stderr and exit 2.

    A stop from outside, Ctrl-C or a SIGTERM (from kill, a job scheduler's
    time limit, or torchrun stopping its workers), arrives as a
    KeyboardInterrupt and ends the run with one line and status 130, not a
    traceback; a run that saved its work first raises Stopped, saying so.
    With argv None, main is this process's command line; once it has
    finished, a late stop is ignored: Python would otherwise restore the
    signals' defaults while it shuts down, and the finished run would end
    killed, with no message.
    """
    _handle_signals("running")
    for stream in (sys.stdout, sys.stderr):  # a file name or prompt that is not UTF-8 prints as \xff escapes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    stdout, sys.stdout = sys.stdout, StdoutUntilClosed(sys.stdout)
    try:
        result = main(argv)
        # No call between main's return and this line, so no signal handler runs in between: from here on a late
        # stop is ignored, even during the clean-up below.
        _signals["mode"] = "finished"
        return result
    except UserError as e:
        _close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Stopped) as e:
        _close_progress_bars()
        message = str(e) if isinstance(e, Stopped) else "interrupted"
        if message:  # a Stopped without one: another process (torchrun's rank 0) reports the stop
            print(f"\n{message}", file=sys.stderr)
        sys.exit(130)
    finally:
        sys.stdout = stdout
        if argv is not None:  # main was called in-process (by a test): the process goes on
            _signals["mode"] = "running"
        elif threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):  # not a handler of ours: Python resets those as it exits
                signal.signal(s, signal.SIG_IGN)


def _close_progress_bars():
    """End any progress bar still drawn on stderr, so that the message starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


class StdoutUntilClosed:
    """sys.stdout that goes quiet when its reader goes away (`generate.py | head`), the Unix way.

    Output stops without a BrokenPipeError, and work that writes files (a
    tokenizer, a checkpoint) still finishes them. `closed_by_reader` tells a
    script whose only work is output that it may stop.
    """

    def __init__(self, stream):
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text):
        self._quietly(self._stream.write, text)
        return len(text)

    def flush(self):
        self._quietly(self._stream.flush)

    def _quietly(self, call, *args):
        if not self.closed_by_reader:
            try:
                call(*args)
            except BrokenPipeError:
                self._go_quiet()

    def _go_quiet(self):
        self.closed_by_reader = True
        try:  # point the descriptor at /dev/null, so Python's own flush at exit stays quiet too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError, one line on stderr (argparse prints the usage first and exits)."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")
