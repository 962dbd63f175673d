"""Writing files so that a crash, a Ctrl-C or a second run never leaves a half-written or lost one."""
import glob
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

from errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_dir():
    """Where derived files (tokenized corpora, measured peak FLOP/s) are kept: $B_LM_CACHE or ~/.cache/b_lm."""
    return os.environ.get("B_LM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "b_lm")


@contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """Open a temporary file beside `path`; on success rename it over `path`.

    os.replace is atomic, so readers see either the old file or the complete
    new one. If the block raises (or is interrupted), the temporary file is
    removed and whatever was at `path` stays untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temporary_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def temporary_prefix(path):
    return "." + os.path.basename(path) + "."


@contextmanager
def exclusive(path, flag):
    """Hold an exclusive claim on `path` for the block: a second run that asks for it is refused.

    The claim is an OS lock on a hidden file beside `path`, which the OS
    drops when the process ends however it ends (kill -9 too), so a crashed
    run never blocks the next. Holding it, we may also clear temporary files
    that a killed run left beside `path`: no one else is writing them.
    """
    lock_path = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise UserError(f"cannot write beside {path} ({lock_path}: {e.strerror})") from None
    try:
        if fcntl:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        os.close(fd)
        raise UserError(f"{path} is in use by another run: wait for it to finish, or choose another {flag}") from None
    try:
        yield
    finally:
        os.close(fd)  # before the unlink: Windows cannot remove a file that is open
        with suppress(OSError):  # another run took it over in between, or it is gone
            os.unlink(lock_path)


def remove_stale_temporaries(path):
    """Delete temporary files or folders a killed run left beside `path` (only while holding `exclusive`)."""
    pattern = os.path.join(glob.escape(os.path.dirname(os.path.abspath(path))), glob.escape(temporary_prefix(path)))
    for stale in glob.glob(pattern + "*.tmp"):
        with suppress(OSError):  # gone already, or not ours to remove: it does no harm
            if os.path.isdir(stale):
                shutil.rmtree(stale)
            else:
                os.unlink(stale)


def check_output_path(path, flag, inputs=()):
    """UserError unless `path` can be written: its folder exists, it is no folder itself, and no input file."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder: name a file")
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path}: folder {folder} does not exist")
    for source in inputs:
        if source and os.path.exists(source) and os.path.realpath(source) == os.path.realpath(path):
            raise UserError(f"{flag} {path} is also an input of this run: writing it would destroy it")
