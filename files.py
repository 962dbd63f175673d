"""Writing files so that a crash or Ctrl-C never leaves a half-written one."""
import os
import tempfile
from contextlib import contextmanager

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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
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
