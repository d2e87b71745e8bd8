from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from quantserve.errors import UserError
from quantserve.quantize import publish
from quantserve.quantize.manifest import list_manifests
from tests.unit.quantize.test_manifest import make_manifest


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


def test_publish_refuses_a_folder_without_manifest(tmp_path):
    tmp = tmp_path / ".x.tmp-1"
    tmp.mkdir()
    with pytest.raises(RuntimeError):
        publish.publish(tmp, tmp_path / "x")


def test_out_of_disk_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not enough disk space"):
        publish.check_free_space(tmp_path, 1 << 60)
