"""`make bench`: the benchmarks that write JSON under bench/ (quantize per variant, the gateway's own overhead and a
soak against real engines). Targets for speed and memory live here, not in timed tests."""
