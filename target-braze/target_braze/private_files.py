"""Files the target writes (rejects, dry run, run report, SQLite ledger): private, never a link.

They hold customer data or per-user state, and their paths come from settings, so a path
another local user prepared must not redirect them: each file is created 0600, each
directory the target creates 0700, and the file is opened with `O_NOFOLLOW`. A symbolic
link, something that is not a regular file, or a file another user owns is refused with
one line naming the setting; the target never writes through it. A file of ours with a
looser mode is narrowed to 0600. The run report is written whole to a temporary file
beside it and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from target_braze.errors import ConfigError

_FILE_MODE = 0o600
_DIRECTORY_MODE = 0o700


def make_private_directories(directory: Path) -> None:
    """Create `directory` and any missing parents, each 0700; existing ones are left alone."""
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created meanwhile (another thread)
            path.mkdir(mode=_DIRECTORY_MODE)


def _make_directories_for(path: Path, setting: str) -> None:
    try:
        make_private_directories(path.parent)
    except OSError as exc:
        raise ConfigError(
            f"{setting}: the directory {path.parent} cannot be created ({exc.strerror}); "
            f"point {setting} at a directory this user may write"
        ) from None


def check_output_path(path: str | Path, setting: str) -> None:
    """Refuse, before any work, a path that is a link, not a file, or another user's file."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{setting}: {path} cannot be checked ({exc.strerror})") from None
    _check_status(status, path, setting)


def open_private(path: str | Path, setting: str, flags: int, *, truncate: bool = False) -> int:
    """Open (creating it 0600, with its directories 0700) a file only this user controls.

    `truncate` empties it once it is known to be ours (O_TRUNC would empty it before).

    Raises:
        ConfigError: a link, not a regular file, another user's file, or a directory that
            cannot be created; other `OSError`s (permissions) are left to the caller.

    """
    path = Path(path)
    _make_directories_for(path, setting)
    flags = (flags & ~os.O_TRUNC) | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, _FILE_MODE)
    except OSError:
        if os.path.islink(path):
            raise _refusal(path, setting, "is a symbolic link") from None
        raise  # the caller says what to do about a missing permission or a directory
    try:
        _check_status(os.fstat(fd), path, setting)
        os.set_blocking(fd, True)
        os.fchmod(fd, _FILE_MODE)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_private(path: str | Path, setting: str, data: bytes) -> None:
    """Write `data` to a 0600 temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    _make_directories_for(path, setting)
    check_output_path(path, setting)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _check_status(status: os.stat_result, path: str | Path, setting: str) -> None:
    if stat.S_ISLNK(status.st_mode):
        raise _refusal(path, setting, "is a symbolic link")
    if not stat.S_ISREG(status.st_mode):
        raise _refusal(path, setting, "is not a regular file")
    if status.st_uid != os.geteuid():
        raise _refusal(path, setting, f"belongs to another user (uid {status.st_uid})")


def _refusal(path: str | Path, setting: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{setting}: {path} {problem}; target-braze writes only files this user owns and "
        f"never follows links: remove it or point {setting} at another path"
    )


def _walk_beneath(directory: Path, path: Path) -> tuple[int, str]:
    """A handle on `path`'s parent reached from `directory` following no link; its name.

    Each component below `directory` is opened relative to the one before it with
    `O_NOFOLLOW`, so a component swapped for a symbolic link after `path` was checked
    fails (ELOOP) instead of leading out of `directory`. The caller closes the handle.
    """
    parts = path.relative_to(directory).parts
    if not parts:
        raise IsADirectoryError(21, "is the directory itself", str(path))
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(
                part,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=handle,
            )
            os.close(handle)
            handle = inner
    except BaseException:
        os.close(handle)
        raise
    return handle, parts[-1]


def open_beneath(directory: Path, path: Path, flags: int) -> int:
    """Open `path`, which lies under `directory`, with no link anywhere below `directory`.

    For paths checked first and opened later (a BATCH manifest's files): what is opened is
    under `directory` at the moment of opening, whatever changed since the check.
    """
    parent, name = _walk_beneath(directory, path)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)


def unlink_beneath(directory: Path, path: Path) -> None:
    """Remove `path`, which lies under `directory`, reached with no link below `directory`."""
    try:
        parent, name = _walk_beneath(directory, path)
    except FileNotFoundError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
