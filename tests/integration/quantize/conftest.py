from __future__ import annotations

import pytest

from tests.support.cli import run_cli


@pytest.fixture(scope="session")
def default_model():
    from quantserve.model_fetch import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def variants_dir(tmp_path_factory, default_model, machine_probe):
    """Every variant of variants.yaml (opt-in ones too) of the real default model, quick calibration (8 x 128
    tokens), built once; after the probe, whose verdict quantize records in each manifest."""
    out = tmp_path_factory.mktemp("variants")
    proc = run_cli("quantize", "--variants", "all", "--out", str(out), "--samples", "8", "--seq-len", "128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
