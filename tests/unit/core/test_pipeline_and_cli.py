from __future__ import annotations

from quantserve.pipeline import _pick_served
from tests.conftest import run_cli
from tests.unit.quantize.test_manifest import make_manifest


def test_run_hosts_servable_variants_8bit_first_within_the_engine_budget(tmp_path):
    for name, bits, ok in (("m-gptq", 4, True), ("m-w8a8", 8, True), ("m-nf4", 4, False)):
        (tmp_path / name).mkdir()
        make_manifest(name=name, bits=bits, servable_here=ok, servable_reason="ok" if ok else "no bnb").write(
            tmp_path / name)
    chosen, skipped = _pick_served(tmp_path, max_engines=2)
    assert chosen == ["m-w8a8"]
    assert any(s.startswith("m-nf4: no bnb") for s in skipped)
    assert any(s.startswith("m-gptq: over the engine budget") for s in skipped)
    chosen, _ = _pick_served(tmp_path, max_engines=3)
    assert chosen == ["m-w8a8", "m-gptq"]


def test_help_lists_every_stage_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("quantize", "variants", "model", "serve", "keys", "usage", "eval", "report", "run"):
        assert command in proc.stdout, command


def test_unknown_command_is_a_usage_error_without_traceback():
    proc = run_cli("quantise")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "No such command" in proc.stderr
