"""The small core helpers the stages share: JSONL reading, validation messages, atomic replacement, text."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError, model_validator

from quantserve import atomic
from quantserve.errors import UserError, first_validation_error
from quantserve.jsonl import read_jsonl
from quantserve.text import shorten


class Item(BaseModel):
    id: str
    tags: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_x(self) -> Item:
        if self.id == "x":
            raise ValueError("id 'x' is reserved")
        return self


def _error(data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        Item.model_validate(data)
    return err.value


def test_first_validation_error_names_the_field_or_the_root():
    assert first_validation_error(_error({"id": "a", "tags": ["t", 3]})) == "tags.1: Input should be a valid string"
    assert first_validation_error(_error({"id": "x", "tags": ["t"]})) == "Value error, id 'x' is reserved"
    assert first_validation_error(_error({"id": "x", "tags": ["t"]}), root="item") == (
        "item: Value error, id 'x' is reserved")


def test_read_jsonl_skips_blank_lines_and_names_the_bad_line(tmp_path: Path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "tags": ["t"]}\n\n{"id": "b", "tags": ["u"]}\n')
    assert [i.id for i in read_jsonl(path, Item.model_validate, "an item")] == ["a", "b"]
    path.write_text('{"id": "a", "tags": ["t"]}\n{"id": "b", "tags": []}\n')
    with pytest.raises(UserError, match=r"items\.jsonl:2: not an item \(tags: List should have at least 1 item"):
        read_jsonl(path, Item.model_validate, "an item")
    path.write_text('{"id": "a", "tags": ["t"]}\n{"id": "b",\n')
    with pytest.raises(UserError, match=r"items\.jsonl:2: not an item \(not JSON: "):
        read_jsonl(path, Item.model_validate, "an item")
    path.write_text('{"name": "a"}\n')
    with pytest.raises(UserError, match=r"items\.jsonl:1: not a thing \(no 'id' field\)"):
        read_jsonl(path, lambda data: data["id"], "a thing")


def test_replace_file_swaps_in_a_complete_file_or_leaves_the_old_one(tmp_path: Path):
    target = tmp_path / "cache.json"
    atomic.write_text(target, "one")
    assert target.read_text() == "one"

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "disk full")

    with pytest.raises(OSError):
        atomic.replace_file(target, fails)
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["cache.json"]
    link = tmp_path / "latest"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        atomic.replace_file(link, lambda tmp, name=name: tmp.symlink_to(name, target_is_directory=True))
        assert os.readlink(link) == name


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "f").write_text(text)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "no-exchange"])
def test_replace_dir_moves_the_new_folder_in_and_the_old_one_out(tmp_path: Path, monkeypatch, exchange: bool):
    if not exchange:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = tmp_path / "model"
    atomic.replace_dir(_folder(atomic.temp_path_for(target), "one"), target)
    atomic.replace_dir(_folder(atomic.temp_path_for(target), "two"), target)
    assert (target / "f").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_shorten_puts_text_on_one_line_within_the_limit():
    assert shorten("a  b\n c", 10) == "a b c"
    assert shorten("x" * 20, 10) == "x" * 9 + "…"
    assert len(shorten("word " * 100, 240)) == 240
