"""What several test files share, in one importable place: `from tests.support.<module> import ...`.

cli                  REPO, run_cli (the `quantserve` command as a user runs it)
helpers              free_port, wait_until
manifests            make_manifest (a complete Manifest, any field overridden)
probe_fixtures       hand-built ProbeResults and checkpoint folders; the machine's real probe
fake_quantize        FakeQuantize: `quantize()` without a model library
serve_fake_upstream  a fake OpenAI-compatible upstream for the gateway's unit tests
serve_helpers        FAKE_MODEL, chat_body, Gateway (what the make_gateway fixture returns)
serve_fuzz           seeded hostile request bodies and check_fuzz
live_stack           LiveStack (a real stack and a key), the vLLM processes running, waiting for readiness
eval_fake_openai     a scripted OpenAI-style server for the eval tests
eval_fixtures        synthetic manifests and run folders for the report tests

Test modules import from here, never from another test module or a conftest; fixtures stay in the conftest.py of
the folder that uses them. Nothing here imports a library one environment lacks at import time of this package:
the quantization environment (.venv-quant) imports only what its tests use.
"""
