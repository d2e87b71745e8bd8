"""Orchestration above the stages: the `quantserve` command line, the `run` pipeline (quantize, serve, evaluate,
report) and the benchmarks. It imports the stages; no stage and nothing in the core imports it."""
