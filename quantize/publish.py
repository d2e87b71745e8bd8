"""Atomic publishing: a variant is built in a hidden temp folder beside its target and renamed into place,
so a killed build leaves nothing that `variants list` shows. A published variant that is rebuilt stays in
place until the new one replaces it, so a killed rebuild never loses both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from quantserve.atomic import TMP_TAG, replace_dir, temp_path_for
from quantserve.errors import UserError
from quantserve.manifest import MANIFEST_NAME, Manifest

OWNER_MARK = ".quantserve-variants"
# `.NAME.old.tmp-PID`: a published variant set aside by the rename fallback of `publish`. The same name
# the earlier two-rename publish used, so what a run of that version left behind is recovered too.
_ASIDE_SUFFIX = ".old"


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
    """Clear what dead runs left. A variant set aside whose folder is missing is the only copy left (its run
    died between the two renames of the fallback in `publish`): it goes back instead."""
    for path in sorted(out.glob(f".*{TMP_TAG}*")):
        pid = path.name.rsplit(TMP_TAG, 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        final = _aside_of(path)
        if final is not None and not final.exists():
            path.rename(final)
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _aside_of(path: Path) -> Path | None:
    """The variant folder `path` was set aside from, or None when `path` is no whole published variant."""
    stem = path.name.rsplit(TMP_TAG, 1)[0]
    if not (stem.startswith(".") and stem.endswith(_ASIDE_SUFFIX)):
        return None
    final = path.with_name(stem[1:-len(_ASIDE_SUFFIX)])
    try:
        name = Manifest.read(path).name
    except (OSError, ValueError):
        return None
    # A manifest names its folder: this also tells a set-aside copy from a build of a variant named `*.old`.
    return final if name == final.name else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_dir_for(target: Path) -> Path:
    tmp = temp_path_for(target)
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def publish(tmp: Path, target: Path) -> None:
    """Move the complete build `tmp` to `target`; a variant already there stays until the new one replaces
    it: in one exchange where the system has it, else in two renames the next run can undo."""
    if not (tmp / MANIFEST_NAME).is_file():
        raise RuntimeError(f"refusing to publish {tmp}: it has no manifest")
    replace_dir(tmp, target, fallback=_replace_via_aside)


def _replace_via_aside(tmp: Path, target: Path) -> None:
    aside = temp_path_for(target, _ASIDE_SUFFIX)
    target.rename(aside)
    # A kill here leaves no `target`: remove_stale_builds in the next run renames `aside` back.
    tmp.rename(target)
    shutil.rmtree(aside, ignore_errors=True)


def check_free_space(out: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise UserError(f"not enough disk space in {out}: {free / 1e9:.2f} GB free, "
                        f"about {need_bytes / 1e9:.2f} GB needed for the variants asked for")
