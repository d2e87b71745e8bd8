"""Our OpenVINO engine server's request checks (no model): what it cannot serve is a 4xx naming the field, never a
crash of its stepping thread. Serving itself is tested on the real runtime in tests/integration/serve."""

from __future__ import annotations

import pytest

from quantserve.runtime_servers import llamacpp_command, openvino_command
from quantserve.serve.engine_openvino import _check

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("body", "param"), [
    ({**CHAT, "model": "other"}, "model"),
    ({**CHAT, "messages": []}, "messages"),
    ({**CHAT, "messages": [{"content": "no role"}]}, "messages"),
    ({**CHAT, "n": 2}, "n"),
    ({**CHAT, "logprobs": True}, "logprobs"),
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "max_tokens": True}, "max_tokens"),
    ({**CHAT, "temperature": 3}, "temperature"),
    ({**CHAT, "top_p": "x"}, "top_p"),
    ({**CHAT, "stop": [1]}, "stop"),
    ({**CHAT, "seed": -1}, "seed"),
])
def test_bodies_it_cannot_serve_name_the_field(body, param):
    problem = _check(body, chat=True, name="m")
    assert problem is not None and problem[2] == param
    assert problem[0] == (404 if param == "model" else 400)


def test_bodies_it_serves_pass():
    assert _check({**CHAT, "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "seed": 3,
                   "stream": True, "n": 1}, chat=True, name="m") is None
    assert _check({"model": "m", "prompt": "Hello"}, chat=False, name="m") is None
    assert _check({"model": "m", "prompt": ["a", "b"]}, chat=False, name="m")[2] == "prompt"


def test_engine_command_lines_keep_the_key_off_them():
    llama = llamacpp_command("/v/model.gguf", "m", "127.0.0.1", 8101, parallel=16, threads=None, ctx_per_slot=2048)
    assert llama[llama.index("--threads") + 1].isdigit() and "--api-key" not in llama
    ov = openvino_command("/v/ov", "m", "127.0.0.1", 8102, parallel=16, threads=None, precision="bfloat16",
                          kv_cache_gib=1, max_model_len=2048)
    assert "--precision" not in ov  # a vLLM dtype name is not OpenVINO's: its own default is kept
    assert openvino_command("/v/ov", "m", "127.0.0.1", 8102, parallel=4, threads=2, precision="f32",
                            kv_cache_gib=1, max_model_len=512)[-4:] == ["--threads", "2", "--precision", "f32"]
