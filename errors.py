"""The one exception users see, and the wrapper that turns it into one line on stderr."""
import argparse
import contextlib
import os
import signal
import sys


def short_reason(error, limit=160):
    """An exception as a few words for a one-line message: its first line, or its type when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class UserError(Exception):
    """A problem with the user's input or files, described so they can fix it.

    Scripts raise it anywhere; `run_main` prints its message as a single line
    and exits with status 2. Tracebacks are reserved for bugs.
    """


def stop_cleanly(module_name):
    """When the module is run as a script: from here on, Ctrl-C and SIGTERM end it with one line and status
    130, never a traceback.

    Each script calls it first, before its slow imports (torch takes a
    second to load). Until run_main starts the work, a stop ends the process
    at once: an exception raised while modules load can land where Python
    only reports it and carries on. Imported (by a test), a script leaves
    the signals alone.
    """
    if module_name != "__main__":
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _exit_interrupted)


def _exit_interrupted(signum, frame):
    print("\ninterrupted", file=sys.stderr, flush=True)
    os._exit(130)


def run_main(main, argv=None):
    """Call main(argv); turn a UserError into 'error: ...' on stderr and exit 2.

    A stop from outside, Ctrl-C or a SIGTERM (from kill, a job scheduler's
    time limit, or torchrun stopping its workers), arrives as a
    KeyboardInterrupt: scripts with work to save catch it and save; in the
    rest it ends the run with one line and status 130, not a traceback.
    With argv None, main is this process's command line; once it has
    finished, a late stop is ignored: Python would otherwise restore the
    signals' defaults while it shuts down, and the finished run would end
    killed, with no message.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    for stream in (sys.stdout, sys.stderr):  # a file name or prompt that is not UTF-8 prints as \xff escapes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    stdout, sys.stdout = sys.stdout, StdoutUntilClosed(sys.stdout)
    try:
        return main(argv)
    except UserError as e:
        _close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        sys.stdout = stdout
        if argv is None:
            for s in (signal.SIGINT, signal.SIGTERM):
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


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (argparse prints the usage first)."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
