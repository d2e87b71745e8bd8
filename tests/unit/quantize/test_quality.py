"""The quality check's numbers, and its source reference computed once per `quantize` call, on a tiny randomly
initialised Llama (built from a config in memory: no weights to download)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from quantserve.quantize.quality import cached_reference, compare, reference_logprobs  # noqa: E402

SEQUENCES = [[1, 5, 9, 2, 7, 3], [4, 4, 8, 1], [6, 2, 9, 9, 5]]


def _tiny_llama(seed: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                      initializer_range=0.5)  # peaked distributions, not near-uniform ones
    return transformers.LlamaForCausalLM(config).eval()


def test_a_model_against_itself_has_no_divergence():
    model = _tiny_llama(0)
    stats = compare(reference_logprobs(model, SEQUENCES), model, SEQUENCES)
    assert stats.tokens == sum(len(s) - 1 for s in SEQUENCES)
    assert stats.kld_mean == pytest.approx(0.0, abs=1e-6)
    assert stats.top1_agreement == 1.0
    assert stats.ppl_ratio == pytest.approx(1.0)


def test_a_different_model_diverges_and_its_perplexity_is_its_own():
    source, other = _tiny_llama(0), _tiny_llama(1)
    stats = compare(reference_logprobs(source, SEQUENCES), other, SEQUENCES)
    assert stats.kld_mean > 0.01
    assert stats.kld_p95 >= stats.kld_mean * 0.5
    assert stats.ppl != pytest.approx(stats.ppl_source)
    alone = compare(reference_logprobs(other, SEQUENCES), other, SEQUENCES)
    assert stats.ppl == pytest.approx(alone.ppl)  # the variant's perplexity does not depend on the reference
    assert math.isfinite(stats.ppl_source)


def test_the_reference_is_computed_once_and_read_back_identical(tmp_path: Path):
    source, other = _tiny_llama(0), _tiny_llama(1)
    calls = []

    def compute():
        calls.append(1)
        return reference_logprobs(source, SEQUENCES)

    first = cached_reference(tmp_path, "ab" * 32, compute)
    second = cached_reference(tmp_path, "ab" * 32, compute)
    assert len(calls) == 1
    assert len(list(tmp_path.glob("source-logprobs-*.pt"))) == 1
    assert compare(first, other, SEQUENCES) == compare(second, other, SEQUENCES)
    cached_reference(tmp_path, "cd" * 32, compute)  # another held-out set: another file, computed anew
    assert len(calls) == 2


def test_a_reference_that_cannot_be_stored_is_still_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    source = _tiny_llama(0)
    missing = tmp_path / "gone"  # a folder removed under the check: the write fails for real
    reference = cached_reference(missing, "ab" * 32, lambda: reference_logprobs(source, SEQUENCES))
    assert compare(reference, source, SEQUENCES).kld_mean == pytest.approx(0.0, abs=1e-6)
    assert "source reference not cached" in capsys.readouterr().err
    assert not missing.exists()
