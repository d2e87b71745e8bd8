from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quantserve import atomic
from quantserve.errors import UserError
from quantserve.manifest import Manifest, list_manifests
from quantserve.quantize import publish
from tests.support.cli import REPO
from tests.support.manifests import make_manifest, variant_build


def test_foreign_output_folder_is_refused(tmp_path):
    (tmp_path / "holiday.jpg").write_text("x")
    with pytest.raises(UserError) as err:
        publish.prepare_out_dir(tmp_path)
    assert "not a quantserve variants folder" in str(err.value)


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        publish.prepare_out_dir(target)


def test_publish_renames_complete_build_into_place_and_replaces_old(tmp_path):
    publish.prepare_out_dir(tmp_path)
    target = tmp_path / "m-gptq"
    for version in ("one", "two"):
        tmp = publish.temp_dir_for(target)
        tmp.mkdir()
        (tmp / "weights.safetensors").write_text(version)
        make_manifest(name="m-gptq").write(tmp)
        publish.publish(tmp, target)
    assert (target / "weights.safetensors").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m-gptq")] == []
    assert [m.name for _, m in list_manifests(tmp_path)] == ["m-gptq"]


def test_build_killed_midway_leaves_nothing_listed_and_is_cleaned_next_time(tmp_path):
    # A real child process starts a build the way the runner does and is SIGKILLed before it publishes.
    code = textwrap.dedent(f"""
        import pathlib, time
        from quantserve.quantize import publish
        out = pathlib.Path({str(tmp_path)!r}); publish.prepare_out_dir(out)
        tmp = publish.temp_dir_for(out / "m-awq"); tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"half")
        print("building", flush=True); time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "building"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert list_manifests(tmp_path) == []
    assert any(p.name.startswith(".m-awq.tmp-") for p in tmp_path.iterdir())
    publish.prepare_out_dir(tmp_path)  # the next run
    assert not any(p.name.startswith(".m-awq") for p in tmp_path.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RENAME_EXCHANGE is Linux only")
def test_replacing_a_variant_is_one_exchange_where_the_filesystem_has_it(tmp_path, monkeypatch):
    publish.prepare_out_dir(tmp_path)
    target = tmp_path / "m-gptq"
    publish.publish(variant_build(target, "one"), target)
    new = variant_build(target, "two")

    def no_rename(self, dst):
        raise AssertionError(f"{self} -> {dst}: a rename leaves a moment with no {target.name}")

    monkeypatch.setattr(Path, "rename", no_rename)
    publish.publish(new, target)
    assert (target / "weights.safetensors").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m-gptq")] == []


def test_replacing_falls_back_to_renames_where_exchange_is_unsupported(tmp_path, monkeypatch):
    def unsupported(src, dst, flags):
        raise OSError(errno.EINVAL, "exchange not supported by this filesystem")

    monkeypatch.setattr(atomic, "_renameat2", unsupported)
    publish.prepare_out_dir(tmp_path)
    target = tmp_path / "m-gptq"
    for version in ("one", "two"):
        publish.publish(variant_build(target, version), target)
    assert (target / "weights.safetensors").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m-gptq")] == []


def test_replace_killed_between_its_two_renames_keeps_the_old_variant(tmp_path):
    # A child replaces a published variant on the rename fallback and is SIGKILLed right after setting the old
    # one aside: the only moment a kill could lose it. From outside, a kill cannot be timed to land there, so
    # the child's rename kills the child itself when it is about to move the new build in.
    code = textwrap.dedent(f"""
        import os, pathlib, signal
        from quantserve import atomic
        from quantserve.quantize import publish
        from tests.support.manifests import variant_build
        out = pathlib.Path({str(tmp_path)!r}); publish.prepare_out_dir(out)
        target = out / "m-gptq"
        publish.publish(variant_build(target, "one"), target)
        new = variant_build(target, "two")
        atomic.exchange = lambda tmp, target: False
        real_rename = pathlib.Path.rename
        def rename(self, dst):
            if self == new:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rename(self, dst)
        pathlib.Path.rename = rename
        publish.publish(new, target)
    """)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert child.returncode == -signal.SIGKILL, child.stderr
    target = tmp_path / "m-gptq"
    assert not target.exists()
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(".m-gptq.old")]
    assert Manifest.read(aside) == make_manifest(name="m-gptq")  # whole, and still the old one
    publish.prepare_out_dir(tmp_path)  # the next run
    assert (target / "weights.safetensors").read_text() == "one"
    assert [m.name for _, m in list_manifests(tmp_path)] == ["m-gptq"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m-gptq")] == []


def test_publish_refuses_a_folder_without_manifest(tmp_path):
    tmp = tmp_path / ".x.tmp-1"
    tmp.mkdir()
    with pytest.raises(RuntimeError):
        publish.publish(tmp, tmp_path / "x")


def test_out_of_disk_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not enough disk space"):
        publish.check_free_space(tmp_path, 1 << 60)
