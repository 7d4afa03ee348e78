"""Safe output files: atomic writes with the user's file modes, write probes, run locks, clear OS errors.

Every file the engine, the CLI and the widgets write goes through :func:`atomic_path`: a temporary file
beside the target, renamed over it in one step, so a crash, Ctrl-C or a full disk never leaves a
half-written file. An operating-system error on the way becomes one :class:`OutputError` line naming the
path and the fix. :func:`probe_writable` finds such problems before long work starts, and
:func:`exclusive_run` keeps two runs from writing the same output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

# what to do about an OSError on an output, by errno
_FIXES = {
    errno.EACCES: "no permission to write there: choose a folder you can write to",
    errno.EPERM: "no permission to write there: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a folder you can write to",
    errno.ENOSPC: "the disk is full: free some space or choose another disk",
    errno.EDQUOT: "your disk quota is used up: free some space or choose another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EEXIST: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: give the path of a file",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def output_error(path: str | os.PathLike, err: BaseException) -> OutputError:
    """One line for an error while writing ``path``: what happened and what to do about it."""
    fix = _FIXES.get(getattr(err, "errno", None))
    if fix is None and "No space left" in str(err):  # safetensors reports ENOSPC as text
        fix = _FIXES[errno.ENOSPC]
    if fix is None:  # e.g. NumPy's "N requested and M written": a short write, nearly always a full disk
        fix = (
            f"writing failed ({getattr(err, 'strerror', None) or err}): check that the disk has space and "
            "that the folder can be written"
        )
    return OutputError(f"cannot write {path}: {fix}")


def _umask() -> int:
    """The process umask, read without changing it where the system allows (other threads may be writing)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(target: Path) -> int:
    """The mode a written file gets: an existing file keeps its own, a new one gets 0666 less the umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _temporary_prefix(target: Path) -> str:
    return f".{target.stem}."


def _temporary_suffix(target: Path) -> str:
    return ".tmp" + "".join(target.suffixes)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(folder, err) from None
    if not folder.is_dir():
        raise OutputError(f"cannot write into {folder}: it is a file, not a folder; choose another path")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target`` in one rename.

    If the body raises (or the process is cancelled), the target keeps its old content and the
    temporary file is removed. The temporary name keeps the target's suffixes, so writers that pick a
    format from the file name (tifffile, nibabel, safetensors) still do the right thing. The new file
    gets the old file's mode, or the user's umask for a new one (not mkstemp's 0600). Errors of the
    operating system (and safetensors' write errors) become :class:`OutputError`.
    """
    from safetensors import SafetensorError

    target = Path(target)
    _make_folder(target.parent)
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder; give the path of a file")
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=_temporary_prefix(target), suffix=_temporary_suffix(target), dir=target.parent
        )
    except OSError as err:
        raise output_error(target, err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except (OSError, SafetensorError) as err:
        raise output_error(target, err) from None
    finally:
        tmp.unlink(missing_ok=True)


def probe_writable(target: str | os.PathLike) -> None:
    """Check, before long work, that ``target`` can be written: its folder can be made and written, it is
    not a folder. Raises :class:`OutputError`; leaves nothing behind (the folder may be created)."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder; give the path of a file")
    probe_folder(target.parent)


def probe_folder(folder: str | os.PathLike) -> None:
    """Check that files can be created in ``folder`` (created if missing); raises :class:`OutputError`."""
    folder = Path(folder)
    _make_folder(folder)
    try:
        fd, name = tempfile.mkstemp(prefix=".dinounet-probe.", dir=folder)
    except OSError as err:
        raise output_error(folder, err) from None
    os.close(fd)
    os.unlink(name)


def stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`atomic_path` left beside ``target`` (a run killed mid-write)."""
    target = Path(target)
    pattern = re.compile(
        re.escape(_temporary_prefix(target)) + r"[A-Za-z0-9_]{8}" + re.escape(_temporary_suffix(target))
    )
    with contextlib.suppress(OSError):
        return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))
    return []


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of a run writing ``target``: ``.<name>.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def exclusive_run(target: str | os.PathLike, *also: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of ``target`` for the body, so that two runs cannot write it at once.

    The lock is a file made with O_EXCL holding this process's id; one left by a process that no longer
    runs (killed with kill -9) is taken over. While the lock is held, temporary files of ``target`` and
    ``also`` (other outputs of the same run) are leftovers of an earlier run and are removed.
    Raises :class:`OutputError` when another running process holds the lock.
    """
    target = Path(target)
    lock = lock_path(target)
    _make_folder(target.parent)
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _running(holder):
                raise OutputError(
                    f"another run (process {holder}) is writing {target}: wait for it to finish, choose another "
                    f"output path, or, if no such run is going, remove {lock}"
                ) from None
            lock.unlink(missing_ok=True)
            continue
        except OSError as err:
            raise output_error(lock, err) from None
        break
    else:
        raise OutputError(f"cannot take the lock {lock} for {target}: remove it if no other run is writing there")
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        for path in (target, *also):
            for leftover in stale_temporaries(path):
                leftover.unlink(missing_ok=True)
        yield
    finally:
        lock.unlink(missing_ok=True)
