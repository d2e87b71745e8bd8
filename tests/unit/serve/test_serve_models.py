"""/v1/models tells what each local model runs as: checkpoint format, dtype, and who chose the dtype."""

from __future__ import annotations

import httpx
import openai

from tests.support.serve_helpers import FAKE_MODEL


def test_models_carry_format_and_dtype_for_local_engines_and_null_for_external(make_gateway, fake_upstream):
    server, _ = fake_upstream
    gw = make_gateway(routes={FAKE_MODEL: [server.url], "remote": [server.url]},
                      model_info={FAKE_MODEL: {"runtime": "vllm", "format": "bnb-nf4", "dtype": "bfloat16",
                                               "dtype_from": "probe"}})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0,
                           http_client=httpx.Client(trust_env=False))
    cards = {m.id: m for m in client.models.list()}
    assert cards[FAKE_MODEL].model_extra == {"runtime": "vllm", "format": "bnb-nf4", "dtype": "bfloat16",
                                             "dtype_from": "probe"}
    assert cards["remote"].model_extra == {"runtime": None, "format": None, "dtype": None, "dtype_from": None}
    assert client.models.retrieve(FAKE_MODEL).model_extra["dtype"] == "bfloat16"
