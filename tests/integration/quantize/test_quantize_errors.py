"""Bad input: one clear line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import pytest

from tests.support.cli import run_cli


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_variant(tmp_path):
    _assert_one_line_error(run_cli("quantize", "--variants", "int3-magic", "--out", str(tmp_path / "o")),
                           "unknown variant int3-magic", "gptq-w4a16")


def test_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _assert_one_line_error(run_cli("quantize", "--model", str(tmp_path), "--variants", "bnb-nf4",
                                   "--out", str(tmp_path / "o")), "not a model folder")


def test_group_size_that_does_not_divide(tmp_path):
    _assert_one_line_error(run_cli("quantize", "--variants", "gptq-w4a16", "--group-size", "128",
                                   "--out", str(tmp_path / "o")), "group size 128 does not divide")


def test_output_folder_that_is_not_ours(tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    _assert_one_line_error(run_cli("quantize", "--variants", "bnb-nf4", "--out", str(tmp_path)),
                           "not a quantserve variants folder")


@pytest.mark.parametrize("flag", ["--debug"])
def test_debug_shows_the_traceback(tmp_path, flag):
    proc = run_cli(flag, "quantize", "--variants", "int3-magic", "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr
