"""Atomic publishing: a variant is built in a hidden temp folder beside its target and renamed into place,
so a killed build leaves nothing that `variants list` shows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from quantserve.errors import UserError
from quantserve.quantize.manifest import MANIFEST_NAME

OWNER_MARK = ".quantserve-variants"
_TMP_TAG = ".tmp-"


def prepare_out_dir(out: Path) -> None:
    """Refuse a folder that holds something else; adopt an empty or new one."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    if out.is_dir() and not (out / OWNER_MARK).exists():
        foreign = [p.name for p in out.iterdir()]
        if foreign:
            raise UserError(f"output folder {out} exists and is not a quantserve variants folder "
                            f"(it holds {', '.join(sorted(foreign)[:3])}...); pick an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / OWNER_MARK).touch()
    remove_stale_builds(out)


def remove_stale_builds(out: Path) -> None:
    for path in out.glob(f".*{_TMP_TAG}*"):
        pid = path.name.rsplit(_TMP_TAG, 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_dir_for(target: Path) -> Path:
    tmp = target.parent / f".{target.name}{_TMP_TAG}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def publish(tmp: Path, target: Path) -> None:
    if not (tmp / MANIFEST_NAME).is_file():
        raise RuntimeError(f"refusing to publish {tmp}: it has no manifest")
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old{_TMP_TAG}{os.getpid()}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_free_space(out: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise UserError(f"not enough disk space in {out}: {free / 1e9:.2f} GB free, "
                        f"about {need_bytes / 1e9:.2f} GB needed for the variants asked for")
