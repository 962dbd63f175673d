"""The one exception users see, and the wrapper that turns it into one line on stderr."""
import argparse
import signal
import sys


class UserError(Exception):
    """A problem with the user's input or files, described so they can fix it.

    Scripts raise it anywhere; `run_main` prints its message as a single line
    and exits with status 2. Tracebacks are reserved for bugs.
    """


def run_main(main, argv=None):
    """Call main(argv); turn a UserError into 'error: ...' on stderr and exit 2.

    A stop from outside, Ctrl-C or a SIGTERM (from kill, a job scheduler's
    time limit, or torchrun stopping its workers), arrives as a
    KeyboardInterrupt: scripts with work to save catch it and save; in the
    rest it ends the run with one line and status 130, not a traceback.
    """
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (argparse prints the usage first)."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
