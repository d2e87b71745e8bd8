from __future__ import annotations

import pytest

from quantserve.app.pipeline import _pick_served
from tests.support.cli import run_cli
from tests.support.manifests import make_manifest
from tests.support.probe_fixtures import AMX_LIKE, AVX2_LIKE, checkpoint_folder


def test_run_hosts_what_the_probe_runs_8bit_first_within_the_engine_budget(tmp_path):
    # The manifests claim the opposite of the probe: the machine at hand decides, not where it was quantized.
    for name, fmt, bits, claimed in (("m-gptq", "w4a16-int4", 4, True), ("m-w8a8", "w8a8-int8", 8, False),
                                     ("m-nf4", "bnb-nf4", 4, False)):
        make_manifest(name=name, bits=bits, servable_here=claimed).write(checkpoint_folder(tmp_path / name, fmt))
    chosen, skipped = _pick_served(tmp_path, max_engines=2, probe=AVX2_LIKE)
    assert chosen == ["m-w8a8"]
    assert skipped["m-gptq"].startswith("W4A16 INT4 does not run on this machine")
    assert skipped["m-nf4"].startswith("over the engine budget")
    chosen, skipped = _pick_served(tmp_path, max_engines=6, probe=AVX2_LIKE)
    assert chosen == ["m-w8a8", "m-nf4"] and list(skipped) == ["m-gptq"]
    chosen, skipped = _pick_served(tmp_path, max_engines=6, probe=AMX_LIKE)
    assert chosen == ["m-w8a8", "m-gptq", "m-nf4"] and not skipped


def test_run_hosts_only_the_variants_it_selected_from_a_fuller_folder(tmp_path):
    """`make bench` builds the opt-in recipes into the same folder; `make run` afterwards still measures its own."""
    for recipe, fmt, bits in (("gptq", "w4a16-int4", 4), ("w8a8", "w8a8-int8", 8), ("opt-in", "w8a8-int8", 8)):
        name = f"tiny-{recipe}"  # the folder is named after the source too; `--variants` names the recipe
        make_manifest(name=name, variant=recipe, bits=bits).write(checkpoint_folder(tmp_path / name, fmt))
    chosen, skipped = _pick_served(tmp_path, max_engines=6, probe=AMX_LIKE, selected={"gptq", "w8a8"})
    assert chosen == ["tiny-w8a8", "tiny-gptq"] and not skipped
    chosen, _ = _pick_served(tmp_path, max_engines=6, probe=AMX_LIKE, selected={"opt-in"})
    assert chosen == ["tiny-opt-in"]


def test_help_lists_every_stage_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("quantize", "variants", "model", "serve", "keys", "usage", "eval", "report", "run", "probe"):
        assert command in proc.stdout, command


def test_a_stage_that_fails_to_import_fails_loudly(monkeypatch):
    """Before, a ModuleNotFoundError inside quantserve.* dropped the stage and its commands from --help."""
    from quantserve.app import cli

    monkeypatch.setattr(cli, "_STAGES", ("quantserve.no_such_stage",))
    with pytest.raises(ModuleNotFoundError, match=r"quantserve\.no_such_stage"):
        cli._register_stages()


def test_unknown_command_is_a_usage_error_without_traceback():
    proc = run_cli("quantise")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "No such command" in proc.stderr


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--gpu", "rtx-9999", "unknown GPU/hardware 'rtx-9999'"),
    ("--sweep", "concurrency=one", "--sweep value 'one' is not a number"),
    ("--slo", "ttft_p99=fast", "ttft_p99"),
    ("--variants", "gptq-w5", "gptq-w5"),
])
def test_run_refuses_a_bad_option_before_anything_is_built(tmp_path, option, value, says):
    # Before: a mistyped --gpu reached the eval stage after the whole quantize stage, and was reported as
    # "every engine failed to start".
    proc = run_cli("run", option, value, "--variants-dir", str(tmp_path / "variants"),
                   "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert proc.returncode != 0
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert "[1/6]" not in proc.stderr  # not one stage started
    assert not (tmp_path / "variants").exists() and not (tmp_path / "runs").exists()
