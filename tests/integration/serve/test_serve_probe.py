"""The machine probe on real vLLM engines, and a bitsandbytes checkpoint served through the gateway with the real
openai client in the dtype the probe picked (or refused with the probe's reason where it does not run).

Nothing here reads the CPU: what should run, and in which dtype, is the probe's measurement of this machine."""

from __future__ import annotations

import httpx
import openai
import pytest

from quantserve.checkpoint import FORMATS
from quantserve.errors import UserError
from quantserve.model_fetch import DEFAULT_MODEL
from quantserve.paths import state_dir
from quantserve.probe import ProbeResult, candidate_dtypes
from quantserve.serve.config import build_config
from quantserve.serve.stack import ServeStack


def test_probe_tries_every_format_in_every_candidate_dtype(machine_probe):
    result = ProbeResult.model_validate(machine_probe)
    device = result.machine.device
    # vLLM's formats in its dtypes, llama.cpp's in their file types, OpenVINO's in its precisions (CPU only)
    planned = {(f, d) for f in FORMATS for d in candidate_dtypes(f, device)}
    assert {(t.format, t.dtype) for t in result.trials} == planned
    for t in result.trials:
        if t.runs:
            assert set(t.tok_s) == {"1", "16"} and all(v > 0 for v in t.tok_s.values()), t
        else:
            assert t.reason and not t.tok_s, t
    assert machine_probe["verdicts"]["full"]["runs"], "the source model must run somewhere to serve anything"


def test_serving_picks_the_fastest_dtype_the_probe_measured(machine_probe):
    result = ProbeResult.model_validate(machine_probe)
    for fmt, verdict in machine_probe["verdicts"].items():
        running = [t for t in result.trials if t.format == fmt and t.runs]
        if running:
            assert verdict["runs"] and verdict["dtype"] == max(running, key=lambda t: t.score).dtype
        else:
            assert verdict["runs"] is False and verdict["dtype"] is None and "does not run" in verdict["reason"]


def test_probe_prints_a_table_and_reuses_its_cache(cli, machine_probe):
    proc = cli("probe")
    assert proc.returncode == 0, proc.stderr[-2000:]
    device = ProbeResult.model_validate(machine_probe).machine.device
    for fmt, label in FORMATS.items():
        if candidate_dtypes(fmt, device):  # llama.cpp's and OpenVINO's CPU wheels are not probed on a GPU
            assert label in proc.stdout
    assert "*" in proc.stdout and "cached:" in proc.stdout
    assert "probe 1/" not in proc.stderr  # cached: no engine was started again


def test_bitsandbytes_nf4_through_the_gateway_in_the_probes_dtype(machine_probe, tmp_path):
    folder = state_dir() / "probe" / "checkpoints" / DEFAULT_MODEL / "bnb-nf4"  # built by bitsandbytes, as bnb-nf4
    verdict = machine_probe["verdicts"]["bnb-nf4"]
    config = build_config(model_path=folder, port=0, no_auth=True, database_url=f"sqlite:///{tmp_path / 'db'}",
                          engine={"port_base": 18300})
    if not verdict["runs"]:
        with pytest.raises(UserError, match="bitsandbytes NF4 does not run on this machine"):
            ServeStack(config, log_dir=tmp_path / "logs").start()
        return
    with ServeStack(config, log_dir=tmp_path / "logs") as stack:
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=120,
                               http_client=httpx.Client(trust_env=False))
        (card,) = client.models.list().data
        assert card.model_extra == {"runtime": "vllm", "format": "bnb-nf4", "dtype": verdict["dtype"],
                                    "dtype_from": "probe"}
        reply = client.chat.completions.create(
            model=card.id, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12, temperature=0)
        assert reply.choices[0].message.content.strip()
        assert 0 < reply.usage.completion_tokens <= 12
