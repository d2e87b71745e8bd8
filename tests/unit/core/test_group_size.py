"""The INT4 group-size rule, shared by quantize (what it builds) and eval's VRAM plan (what a target would get)."""

from __future__ import annotations

import pytest

from quantserve.errors import UserError
from quantserve.group_size import auto_group_size, choose_group_size, quantized_in_features

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
LLAMA8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32}


def test_auto_group_size_divides_every_width():
    assert quantized_in_features(SMOLLM2) == [576, 1536]
    assert choose_group_size(quantized_in_features(SMOLLM2)) == 64  # 128 does not divide 576
    assert choose_group_size(quantized_in_features(LLAMA8B)) == 128


def test_no_candidate_dividing_is_none_for_the_plan_and_an_error_for_a_build():
    assert auto_group_size([576, 100]) is None
    with pytest.raises(UserError, match="no group size among"):
        choose_group_size([576, 100])


def test_explicit_group_size_that_does_not_divide_is_a_clear_error():
    with pytest.raises(UserError) as err:
        choose_group_size([576, 1536], 128)
    assert "128 does not divide" in str(err.value) and "576" in str(err.value)
    assert choose_group_size([576, 1536], "32") == 32
    with pytest.raises(UserError, match="group size 0 does not divide"):
        choose_group_size([576, 1536], 0)

