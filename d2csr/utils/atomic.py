"""Files that appear whole or not at all.

Every file d2csr writes for a user (converted weights, checkpoints, exported models, SR images, prepared data)
goes through :func:`atomic_write`: the content is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the target in one step, and the folder is fsynced. An error or interruption at any
point (a full disk, a file-size limit, Ctrl-C, a crash) removes the temporary file and leaves the target as it
was: its previous content, or no file.
"""
import contextlib
import os
import os.path as osp

TMP_MARK = '.tmp'  # temporary names: <target>.tmp<pid>


def temporary_name(path):
    """The temporary file :func:`atomic_write` writes before renaming it to ``path``."""
    return f'{os.fspath(path)}{TMP_MARK}{os.getpid()}'


def fsync_dir(directory):
    """Make a rename in ``directory`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    if os.name == 'nt':
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode='wb', **open_kwargs):
    """``with atomic_write(path) as f: f.write(...)``: ``path`` gets the whole content when the block ends
    without an error, else stays as it was (the temporary file is removed). ``mode`` and ``open_kwargs``
    (``encoding``, ``newline``) go to :func:`open`."""
    path = os.fspath(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(osp.dirname(osp.abspath(path)))


def write_bytes_atomic(path, data):
    """Write ``data`` (bytes) to ``path`` with :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(data)
