"""Can vLLM load a variant, and can it run it on this machine? vLLM's own config resolution says the first;
the machine probe's measured verdict for the checkpoint's format the second (for a llama.cpp or OpenVINO
variant only the second is asked).

Runs in the serving environment (where vLLM lives): `python -m quantserve.quantize.vllm_check DIR...`
prints one JSON object per folder.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class VllmVerdict:
    """What crosses the process boundary: one JSON line each way, typed on both sides."""

    path: str
    vllm_loadable: bool | None
    vllm_loadable_reason: str
    servable_here: bool | None  # None: not checked (this machine was never probed)
    servable_reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> VllmVerdict:
        return cls(**json.loads(line))


def _here_verdict(model_dir: Path) -> tuple[bool | None, str]:
    """This machine's probe verdict for the checkpoint's format, when the machine was probed (`make run` probes
    first); serving decides again on the machine it runs on."""
    from quantserve.machine import this_machine
    from quantserve.probe import cached

    machine = this_machine()
    probe = cached(machine)
    if probe is None:
        return None, "not checked: this machine has not been probed yet (`quantserve probe`)"
    verdict = probe.verdict_for(model_dir)
    return verdict.runs, f"{verdict.reason} [probed on {machine.summary()}]"


def check(model_dir: Path) -> VllmVerdict:
    from quantserve.checkpoint import RUNTIMES, checkpoint_runtime

    runtime = checkpoint_runtime(model_dir)
    if runtime != "vllm":  # another runtime's checkpoint: only whether that runtime runs here is asked
        servable, why = _here_verdict(model_dir)
        return VllmVerdict(str(model_dir), None, f"served by {RUNTIMES[runtime]}, not vLLM", servable, why)
    from vllm.engine.arg_utils import EngineArgs

    cfg = json.loads((model_dir / "config.json").read_text()).get("quantization_config") or {}
    method = cfg.get("quant_method")
    try:
        model_config = EngineArgs(model=str(model_dir), enforce_eager=True, max_model_len=2048).create_model_config()
    except Exception as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "quantization" in ln.lower()), lines[0] if lines else "")
        detail = detail.split(". Must be one of")[0]  # the list of every method vLLM knows helps nobody here
        reason = f"vLLM config resolution failed: {detail[:300]}"
        if method == "bitsandbytes":
            reason += " (bitsandbytes left vLLM core; the vllm-bnb-plugin package adds it back: `make install`)"
        return VllmVerdict(str(model_dir), False, reason, False, reason)
    servable, why = _here_verdict(model_dir)
    return VllmVerdict(str(model_dir), True, f"vLLM resolves the config (quantization={model_config.quantization})",
                       servable, why)


def main(argv: list[str]) -> None:
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # With no arguments it serves paths from stdin, one per line, so a caller pays vLLM's import once.
    for arg in argv or (line.strip() for line in sys.stdin):
        if arg:
            print(check(Path(arg)).to_json(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
