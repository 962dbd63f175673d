"""The files a run reads and writes, so that a crash, a Ctrl-C, a second run or a mistyped path never loses one:
every path is checked before the work starts (an input must be a regular file, a file output absent or a regular file,
a folder output new, empty or an earlier output of ours), names are compared by inode, so links cannot slip an input
or a running run's checkpoint past the checks, and outputs are written atomically and claimed with an OS lock."""
import glob
import os
import shutil
import stat
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
# Files this process holds with `exclusive`: {resolved path: descriptor holding a lock on the file there now}.
_HELD_FILES = {}


def cache_dir():
    """Where derived files (tokenized corpora, measured peak FLOP/s) are kept: $B_LM_CACHE or ~/.cache/b_lm."""
    return os.environ.get("B_LM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "b_lm")


@contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write, for writers that open the file themselves (the gguf package); on
    success it is renamed over `path` (os.replace is atomic: readers see the old file or the whole new one). If the
    block raises, `path` stays untouched. A symbolic link is written through."""
    path = os.path.realpath(path)
    if _kind_of(path, "output") not in (None, "file"):
        raise UserError(f"{path} is not a regular file: b_lm writes only files it can replace")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=temporary_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "r+b") as f:  # on disk before the rename, or a power cut could leave an empty file there
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if path in _HELD_FILES:  # the name now points at a new file: hold that one
        _HELD_FILES[path] = _lock_file(path, _HELD_FILES.pop(path))


@contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """Open a temporary file beside `path`, renamed over it on success (atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def temporary_prefix(path):
    return "." + os.path.basename(os.path.realpath(path)) + "."


def _kind_of(path, flag):
    """None if nothing is at `path` (a dangling link counts as nothing), else 'file', 'folder' or 'other'."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:  # a symbolic-link loop, a path through a file, no permission
        raise UserError(f"{flag} {path}: {e.strerror}") from None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "other"


def same_or_inside(path, other):
    """Whether `path` is `other` (by inode: links count) or lies inside `other`, a folder."""
    with suppress(OSError):
        if os.path.samefile(path, other):
            return True
    real, outer = os.path.realpath(path), os.path.realpath(other)
    return real == outer or (os.path.isdir(outer) and os.path.commonpath([real, outer]) == outer)


@contextmanager
def exclusive(path, flag):
    """Hold an exclusive claim on `path` for the block: a second run that asks for it is refused. The claim is an OS
    lock on a hidden file beside the path's target (so a symbolic link names the same claim) and, where the OS allows
    it, on the file itself (so a hard link does too); the OS drops both however the process ends (kill -9 too)."""
    real = os.path.realpath(path)
    lock_path = os.path.join(os.path.dirname(real), "." + os.path.basename(real) + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise UserError(f"cannot write beside {path} ({lock_path}: {e.strerror})") from None
    try:
        if fcntl:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        if real in _HELD_FILES:
            raise BlockingIOError
        _HELD_FILES[real] = _lock_file(real)
    except OSError:
        os.close(fd)
        raise UserError(f"{path} is in use by another run: wait for it to finish, or choose another {flag}") from None
    try:
        yield
    finally:
        if (held := _HELD_FILES.pop(real)) is not None:
            os.close(held)
        os.close(fd)  # before the unlink: Windows cannot remove a file that is open
        with suppress(OSError):  # another run took it over in between, or it is gone
            os.unlink(lock_path)


def _lock_file(real, previous=None):
    """A descriptor holding a lock on the regular file now at `real` (None where there is none to lock); OSError if
    another process holds it. Not on Windows, where an open file cannot be replaced."""
    if previous is not None:
        os.close(previous)
    try:
        if fcntl is None or not stat.S_ISREG(os.stat(real).st_mode):
            return None
        fd = os.open(real, os.O_RDONLY)
    except OSError:  # nothing there, or unreadable: the lock beside it still stands
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


@contextmanager
def claimed(path, flag):
    """exclusive(path) for the block, with the temporary files a killed run left beside path cleared first: holding
    the claim, no one else is writing them."""
    with exclusive(path, flag):
        real = os.path.realpath(path)
        for stale in glob.glob(glob.escape(os.path.join(os.path.dirname(real), temporary_prefix(real))) + "*.tmp"):
            with suppress(OSError):  # gone already, or not ours to remove: it does no harm
                if os.path.isdir(stale) and not os.path.islink(stale):
                    shutil.rmtree(stale)
                else:
                    os.unlink(stale)
        yield


def _file_or_nothing(path, flag, purpose=""):
    """'file', or None if nothing is there; UserError for an empty name, a folder, a device, a pipe or a socket."""
    if not path:
        raise UserError(f"{flag} is empty: name a file{purpose}")
    kind = _kind_of(path, flag)
    if kind == "folder":
        raise UserError(f"{flag} {path} is a folder: name a file")
    if kind == "other":
        raise UserError(f"{flag} {path} is not a regular file (a device, pipe or socket): name a file{purpose}")
    return kind


def check_input_file(path, what):
    """UserError unless `path` is a regular file to read, saying what it is instead (a pipe would be read forever)."""
    if _file_or_nothing(path, what) is None:
        if os.path.islink(path):
            raise UserError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist")
        raise UserError(f"{what} {path} not found")


def read_text(path, what):
    """The text of a UTF-8 file; UserError, naming it as `what`, if it cannot be read."""
    check_input_file(path, what)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def check_output_path(path, flag, inputs=()):
    """UserError unless `path` can be written as a file in a folder that exists, and is no `inputs` nor inside one."""
    _file_or_nothing(path, flag, " to write")
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path}: folder {folder} does not exist")
    for source in inputs:
        if source and os.path.lexists(source) and same_or_inside(path, source):
            raise UserError(f"{flag} {path} is also an input of this run ({source}): writing it would destroy it")


def refuse_existing(path, flag, overwrite):
    if not overwrite and os.path.lexists(path):
        raise UserError(f"{flag} {path} already exists: pass --overwrite to replace it, or name another file")


def check_output_folder(path, flag, inputs=(), overwrite=False, ours=lambda folder: False):
    """UserError unless `path` can become the folder we write: new, empty, or (with overwrite) one that `ours`
    recognises as an earlier output of ours. Never a symbolic link, the current folder or one holding it, or a folder
    holding one of the `inputs`: replacing those would lose what they hold."""
    if not path:
        raise UserError(f"{flag} is empty: name a folder to write")
    if os.path.islink(path):
        raise UserError(f"{flag} {path} is a symbolic link: name the folder itself")
    kind = _kind_of(path, flag)
    if kind not in (None, "folder"):
        raise UserError(f"{flag} {path} is a file, not a folder: name a folder to write into")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: folder {parent} does not exist")
    if kind is None:
        return
    if same_or_inside(os.getcwd(), path):
        raise UserError(f"{flag} {path} is the current folder or holds it: name a new folder")
    for source in inputs:
        if source and os.path.lexists(source) and same_or_inside(source, path):
            raise UserError(f"{flag} {path} holds an input of this run ({source}): name another folder")
    if os.listdir(path) and not overwrite:
        raise UserError(f"{flag} {path} already exists and is not empty: pass --overwrite to replace it")
    if os.listdir(path) and not ours(path):
        raise UserError(f"{flag} {path} holds files b_lm did not write there: --overwrite replaces only an "
                        f"earlier export of b_lm; move them, or name another folder")


def swap_in_folder(new, path):
    """Put the folder `new` at `path`, then delete what was there: a crash never leaves `path` half-written."""
    old = None
    if os.path.isdir(path):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)), prefix=temporary_prefix(path), suffix=".tmp")
        os.rmdir(old)  # a fresh name for the old folder (Windows renames nothing onto a folder)
        os.rename(path, old)
    os.replace(new, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)
