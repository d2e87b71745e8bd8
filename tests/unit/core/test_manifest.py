from __future__ import annotations

from quantserve.manifest import Manifest, list_manifests
from tests.support.manifests import make_manifest


def test_manifest_round_trips_through_json(tmp_path):
    m = make_manifest()
    path = m.write(tmp_path)
    assert path.name == "manifest.json"
    assert Manifest.read(tmp_path) == m


def test_list_skips_hidden_build_folders_and_folders_without_manifest(tmp_path):
    for name in ("b-variant", ".a-variant.tmp-123"):
        (tmp_path / name).mkdir()
        make_manifest(name=name).write(tmp_path / name)
    (tmp_path / "stray").mkdir()
    assert [m.name for _, m in list_manifests(tmp_path)] == ["b-variant"]
