from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quantserve import atomic
from quantserve.errors import UserError
from quantserve.manifest import MANIFEST_NAME, Manifest, list_manifests
from quantserve.quantize import publish

if TYPE_CHECKING:
    from tests.support.fake_quantize import FakeQuantize


class _Killed(BaseException):
    """The run dies here: nothing in quantize() catches a BaseException it does not know."""


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _refusals(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "not published" in line]


@pytest.mark.parametrize("gate", [{"max_kld": 0.1}, {"min_top1": 0.9}], ids=["max-kld", "min-top1"])
def test_a_reused_variant_that_fails_the_gate_fails_the_run_like_a_fresh_one(fake_quantize: FakeQuantize,
                                                                             tmp_path, capsys, gate):
    with pytest.raises(UserError) as fresh:
        fake_quantize.run(tmp_path / "fresh", **gate)
    fresh_said = _refusals(capsys.readouterr().err)
    assert list_manifests(tmp_path / "fresh") == []

    out = tmp_path / "reused"
    fake_quantize.run(out)  # ungated: published, KLD 0.5 and top-1 0.7 in its manifest
    before = _files(out)
    capsys.readouterr()
    with pytest.raises(UserError) as reused:
        fake_quantize.run(out, **gate)
    said = capsys.readouterr().err
    assert "reused" in said
    assert str(reused.value) == str(fresh.value)
    assert "quality gate failed" in str(reused.value)
    assert _refusals(said) == fresh_said != []
    assert _files(out) == before  # like a refused fresh build: nothing written, an earlier folder left alone
    assert fake_quantize.builds == ["bnb-nf4", "bnb-nf4"]  # the gated rerun reused the folder, built nothing


def test_a_gated_run_refuses_a_reused_variant_without_quality_numbers(fake_quantize: FakeQuantize, tmp_path):
    out = tmp_path / "out"
    [published] = fake_quantize.run(out)
    published.model_copy(update={"quality": None}).write(out / published.name)  # same recipe hash, no numbers
    with pytest.raises(UserError, match=r"quality gate failed.*no quality numbers") as reused:
        fake_quantize.run(out, max_kld=1.0)
    assert fake_quantize.builds == ["bnb-nf4"]

    # A fresh build without numbers (the worker always measures them, so only a fake gets here) is refused
    # by the same rule, with the same words.
    fake_quantize.quality = None
    with pytest.raises(UserError) as fresh:
        fake_quantize.run(tmp_path / "fresh", max_kld=1.0)
    assert str(fresh.value) == str(reused.value)
    assert list_manifests(tmp_path / "fresh") == []


def test_an_ungated_run_still_reuses_a_variant_without_quality_numbers(fake_quantize: FakeQuantize, tmp_path):
    out = tmp_path / "out"
    [published] = fake_quantize.run(out)
    bare = published.model_copy(update={"quality": None})
    bare.write(out / published.name)
    assert fake_quantize.run(out) == [bare]


def test_force_rebuild_replaces_the_variant_and_leaves_no_copy(fake_quantize: FakeQuantize, tmp_path):
    out = tmp_path / "out"
    [old] = fake_quantize.run(out)
    fake_quantize.weights = b"two"
    [new] = fake_quantize.run(out, force=True)
    assert (out / new.name / "model.safetensors").read_bytes() == b"two"
    assert Manifest.read(out / new.name) == new
    assert [p.name for p in out.iterdir() if p.name.startswith(f".{old.name}")] == []


def test_force_rebuild_killed_between_its_renames_keeps_the_old_variant_for_the_next_run(
        fake_quantize: FakeQuantize, tmp_path, monkeypatch):
    out = tmp_path / "out"
    [old] = fake_quantize.run(out)
    folder = out / old.name
    fake_quantize.weights = b"two"
    real_rename = Path.rename

    def dies_moving_the_build_in(self: Path, dst: Path) -> Path:
        if Path(dst) == folder and self.name.startswith(f".{old.name}.tmp-"):
            raise _Killed
        return real_rename(self, dst)

    # A kill cannot be timed to land between two renames in a unit test, so it is injected: the exchange
    # reports itself unsupported (as on a filesystem without RENAME_EXCHANGE), and the rename that moves the
    # new build into place raises as if the process had died there.
    with monkeypatch.context() as fault:
        fault.setattr(atomic, "exchange", lambda tmp, target: False)
        fault.setattr(Path, "rename", dies_moving_the_build_in)
        with pytest.raises(_Killed):
            fake_quantize.run(out, force=True)
    held = [p for p in out.iterdir() if (p / MANIFEST_NAME).is_file()]
    assert [Manifest.read(p) for p in held] == [old]  # the old variant is whole, set aside
    assert (held[0] / "model.safetensors").read_bytes() == b"one"

    monkeypatch.setattr(publish, "_alive", lambda pid: False)  # the next run: the killed process is gone
    assert fake_quantize.run(out) == [old]
    assert fake_quantize.builds == ["bnb-nf4", "bnb-nf4"]  # restored and reused, not deleted and rebuilt
    assert Manifest.read(folder) == old
    assert (folder / "model.safetensors").read_bytes() == b"one"
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.is_dir()] == []


def test_the_builds_of_one_run_share_a_source_reference_that_is_removed_afterwards(fake_quantize: FakeQuantize,
                                                                                   tmp_path):
    out = tmp_path / "variants"
    fake_quantize.run(out, variants="bnb-nf4,bnb-int8")
    assert fake_quantize.builds == ["bnb-nf4", "bnb-int8"]
    first, second = fake_quantize.reference_caches
    assert first == second  # the second check reads what the first one computed
    assert not Path(first).exists()
    assert not list(out.glob(".quality-reference-*"))
    assert [m.name for _, m in list_manifests(out)] == ["tiny-src-bnb-int8", "tiny-src-bnb-nf4"]
