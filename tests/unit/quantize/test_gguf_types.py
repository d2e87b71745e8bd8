"""Which GGML type each tensor gets: llama.cpp's own rules (llama-quant.cpp), checked on the shapes that decide them."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from quantserve.quantize.build_gguf import tensor_type


def test_q4_k_m_keeps_half_the_attn_v_and_ffn_down_layers_at_6_bits():
    n = 32
    v_types = [tensor_type(f"blk.{i}.attn_v.weight", 4096, "Q4_K_M", n, tied=False) for i in range(n)]
    assert v_types.count(T.Q6_K) == 4 + 4 + 8  # the first and last eighth, and every third between
    assert set(v_types) == {T.Q4_K, T.Q6_K}
    assert tensor_type("blk.5.attn_q.weight", 4096, "Q4_K_M", n, tied=False) == T.Q4_K
    assert tensor_type("output.weight", 4096, "Q4_K_M", n, tied=False) == T.Q6_K
    assert tensor_type("token_embd.weight", 4096, "Q4_K_M", n, tied=False) == T.Q4_K
    assert tensor_type("token_embd.weight", 4096, "Q4_K_M", n, tied=True) == T.Q6_K  # it is the output too


def test_rows_that_do_not_fit_a_k_block_fall_back_as_llama_cpp_does():
    # SmolLM2-135M: rows of 576, not a multiple of 256
    assert tensor_type("blk.5.attn_q.weight", 576, "Q4_K_M", 30, tied=True) == T.Q5_0
    assert tensor_type("blk.0.attn_v.weight", 576, "Q4_K_M", 30, tied=True) == T.Q8_0
    assert tensor_type("token_embd.weight", 576, "Q4_K_M", 30, tied=True) == T.Q8_0
    assert tensor_type("blk.5.attn_q.weight", 576, "Q4_0", 30, tied=True) == T.Q4_0  # blocks of 32 fit
    assert tensor_type("blk.5.attn_q.weight", 576, "Q8_0", 30, tied=True) == T.Q8_0
    assert tensor_type("blk.5.attn_q.weight", 100, "Q4_0", 30, tied=True) == T.F16  # no block fits at all
