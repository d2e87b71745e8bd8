"""Hashes and sizes of model folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from quantserve.manifest import MANIFEST_NAME

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# OpenVINO keeps its tokenizer as small IR models beside the weights: not weights
_NOT_WEIGHTS = ("openvino_tokenizer.bin", "openvino_detokenizer.bin")


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name not in _NOT_WEIGHTS)


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in weight_files(folder))


def weights_sha256(folder: Path) -> str:
    """One hash over the weight files' contents, in name order (what identifies a source model)."""
    digest = hashlib.sha256()
    for path in weight_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME  # the manifest holds these hashes: it cannot hash itself
    }
