"""Turn one source chat model into quantized variants, each a vLLM-loadable folder with a manifest."""
