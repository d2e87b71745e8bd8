"""A real serving stack as the integration tests hold it: the stack, a key, its database, the model to ask; the vLLM
processes running on this machine; waiting until the gateway reports every model ready."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import openai
import psutil

from quantserve.serve.keys import KeyStore
from quantserve.serve.stack import ServeStack


@dataclass
class LiveStack:
    stack: ServeStack
    key: str
    db_url: str
    model: str

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.stack.base_url}/v1", api_key=key or self.key, max_retries=0,
                             timeout=120, http_client=httpx.Client(trust_env=False))

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.base_url, headers={"Authorization": f"Bearer {self.key}"},
                            timeout=120, trust_env=False)

    def new_key(self, name: str) -> str:
        return KeyStore(self.db_url).create(name)[1]


def vllm_processes() -> set[int]:
    found = set()
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if "vllm.entrypoints.openai.api_server" in cmd or (proc.info["name"] or "").startswith("VLLM"):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def wait_ready(base_url: str, timeout: float = 240.0) -> bool:
    """Whether the gateway at `base_url` answers /ready with 200 (every model up) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base_url}/ready", trust_env=False).status_code == 200:
            return True
        time.sleep(1)
    return False
