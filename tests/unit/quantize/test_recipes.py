from __future__ import annotations

import pytest

from quantserve.errors import UserError
from quantserve.quantize.recipes import (
    AWQRecipe,
    BnbRecipe,
    GPTQRecipe,
    load_variants,
    parse_recipe,
    select_variants,
    to_yaml,
)


def test_variant_list_has_the_five_issue_variants_with_typed_recipes():
    variants = load_variants()
    assert list(variants) == ["gptq-w4a16", "awq-w4a16", "w8a8-int8", "bnb-nf4", "bnb-int8"]
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
