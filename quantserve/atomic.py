"""Write-then-rename: whoever reads a file or folder we replace (or we, after a crash) finds the old one or
the new one, never half of either.

Temp paths sit beside their target (a rename never crosses filesystems) and are named `.NAME[TAG].tmp-PID`,
so a later run can tell a dead process's leftovers from a live one's (quantize/publish.py does).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

TMP_TAG = ".tmp-"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1
# What renameat2 answers when the kernel or the filesystem cannot exchange (not: this exchange is wrong).
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def temp_path_for(target: Path, tag: str = "") -> Path:
    return target.parent / f".{target.name}{tag}{TMP_TAG}{os.getpid()}"


def replace_file(target: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` makes the new file (or symlink) at a temp path, which then replaces `target` in one rename.

    A `write` that fails leaves `target` as it was and no temp file behind.
    """
    tmp = temp_path_for(target)
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_text(target: Path, text: str) -> Path:
    return replace_file(target, lambda tmp: tmp.write_text(text))


def _remove_then_rename(tmp: Path, target: Path) -> None:
    shutil.rmtree(target)
    tmp.rename(target)


def replace_dir(tmp: Path, target: Path,
                fallback: Callable[[Path, Path], None] = _remove_then_rename) -> None:
    """Move the complete folder `tmp` to `target`. An old `target` stays whole until the new one replaces it,
    in one exchange where the system has it; elsewhere `fallback(tmp, target)` does it in steps (by default:
    remove the old one, then rename, so a crash in between leaves no `target` and the next run rebuilds it)."""
    if not target.exists():
        tmp.rename(target)
    elif exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # the old folder, now at the temp path
    else:
        fallback(tmp, target)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the OS or the filesystem cannot."""
    try:
        _renameat2(a, b, _RENAME_EXCHANGE)
    except OSError as err:
        if err.errno in _NO_EXCHANGE:
            return False
        raise
    return True


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    call = _libc_renameat2()
    if call is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available here")
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src), None, str(dst))


@functools.cache
def _libc_renameat2() -> Callable[..., int] | None:
    # Python has no binding for renameat2; glibc has had it since 2.28, and other C libraries may lack it.
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call
