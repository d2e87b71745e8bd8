from __future__ import annotations

import pytest
from pydantic import ValidationError

from quantserve.errors import UserError
from quantserve.quantize.recipes import (
    AutoRoundRecipe,
    AWQRecipe,
    BnbRecipe,
    GPTQRecipe,
    MixedRecipe,
    SparseW8A8Recipe,
    load_variants,
    parse_recipe,
    select_variants,
    to_yaml,
)


def test_variant_list_has_typed_recipes_and_the_default_leaves_out_the_opt_in_ones():
    variants = load_variants()
    assert list(variants) == ["gptq-w4a16", "awq-w4a16", "autoround-w4a16", "mixed-w4a16-w8a8", "w8a8-int8",
                              "sparse24-w8a8", "bnb-nf4", "bnb-int8", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0",
                              "ov-int8", "ov-int4"]
    assert list(select_variants("default")) == ["gptq-w4a16", "awq-w4a16", "w8a8-int8", "bnb-nf4", "bnb-int8"]
    assert list(select_variants("all")) == list(variants)
    assert list(select_variants("sparse24-w8a8")) == ["sparse24-w8a8"]  # an opt-in one is built when named
    assert isinstance(variants["autoround-w4a16"], AutoRoundRecipe) and variants["autoround-w4a16"].iters == 50
    mixed = variants["mixed-w4a16-w8a8"]
    assert isinstance(mixed, MixedRecipe) and mixed.size_budget == 0.45 and mixed.promote_to == "w8a8"
    sparse = variants["sparse24-w8a8"]
    assert isinstance(sparse, SparseW8A8Recipe) and sparse.mask_structure == "2:4" and sparse.sparsity == 0.5
    assert isinstance(variants["gptq-w4a16"], GPTQRecipe) and variants["gptq-w4a16"].bits == 4
    assert isinstance(variants["awq-w4a16"], AWQRecipe) and not variants["awq-w4a16"].symmetric
    assert isinstance(variants["bnb-nf4"], BnbRecipe) and not variants["bnb-nf4"].needs_calibration


def test_recipes_round_trip_through_yaml():
    import yaml

    variants = load_variants()
    again = {n: parse_recipe(body) for n, body in yaml.safe_load(to_yaml(variants)).items()}
    assert again == variants


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(UserError) as err:
        select_variants("gptq-w4a16,fp3-magic")
    assert "fp3-magic" in str(err.value) and "awq-w4a16" in str(err.value)


def test_unknown_recipe_field_is_rejected():
    with pytest.raises(ValueError):
        parse_recipe({"method": "gptq", "scheme": "W4A16", "bits": 4, "group_sise": 64})


def test_opt_in_is_a_selection_not_part_of_the_recipe_hash():
    recipe = load_variants()["autoround-w4a16"]
    assert recipe.opt_in and "opt_in" not in recipe.model_dump()  # the manifest's recipe and hash leave it out
    assert "opt_in: true" in to_yaml({"autoround-w4a16": recipe})  # the variants-file form keeps it


def test_a_bad_mask_structure_is_rejected():
    with pytest.raises(ValueError):
        parse_recipe({"method": "sparsegpt-w8a8", "scheme": "W8A8", "bits": 8, "mask_structure": "half"})


def test_runtime_groups_select_the_other_runtimes_variants():
    assert list(select_variants("llama.cpp")) == ["gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0"]
    assert list(select_variants("openvino")) == ["ov-int8", "ov-int4"]
    both = list(select_variants("default,runtimes"))
    assert both == [*select_variants("default"), "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0", "ov-int8", "ov-int4"]
    assert list(select_variants("bnb-nf4,default")) == ["bnb-nf4", "gptq-w4a16", "awq-w4a16", "w8a8-int8", "bnb-int8"]
    variants = load_variants()
    assert {n: variants[n].runtime for n in both if variants[n].runtime != "vllm"} == {
        "gguf-q8_0": "llama.cpp", "gguf-q4_k_m": "llama.cpp", "gguf-q4_0": "llama.cpp", "ov-int8": "openvino",
        "ov-int4": "openvino"}
    assert all(variants[n].opt_in for n in select_variants("runtimes"))  # make run's default stays vLLM's
    with pytest.raises(UserError, match="or a group: all, default, runtimes"):
        select_variants("llamacpp")


def test_awq_calibrates_on_fewer_windows_than_the_run_offers_and_gptq_on_all():
    variants = load_variants()
    awq, gptq = variants["awq-w4a16"], variants["gptq-w4a16"]
    assert isinstance(awq, AWQRecipe) and awq.calibration_samples == 32
    assert awq.calibration_windows(64) == 32 and awq.calibration_windows(8) == 8  # never more than offered
    assert gptq.calibration_windows(64) == 64
    assert "calibration_samples" in to_yaml({"awq-w4a16": awq})  # part of the recipe, so of its hash
    with pytest.raises(ValidationError):
        parse_recipe({"method": "awq", "scheme": "W4A16", "bits": 4, "calibration_samples": 0})
