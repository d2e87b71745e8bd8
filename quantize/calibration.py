"""Calibration and held-out token sequences from the chat files in prompts/."""

from __future__ import annotations

import hashlib
from array import array
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from quantserve.errors import UserError
from quantserve.jsonl import read_jsonl

CALIBRATION_FILE = "calibration/support_chat.jsonl"
HELDOUT_FILE = "heldout/support_heldout.jsonl"


class _Conversation(BaseModel):
    messages: list[dict[str, Any]]


def load_conversations(path: Path) -> list[list[dict[str, Any]]]:
    if not path.is_file():
        raise UserError(f"text file {path} does not exist")
    convs = read_jsonl(path, lambda data: _Conversation.model_validate(data).messages, "a conversation")
    if not convs:
        raise UserError(f"{path} holds no conversations")
    return convs


def _render(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    else:  # base models: plain role-prefixed text
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def calibration_ids(tokenizer, path: Path, samples: int, seq_len: int) -> list[list[int]]:
    """`samples` windows of `seq_len` tokens cut from the chat-formatted conversations, end to end.

    Packing keeps every window full-length, so the count and length asked for are what GPTQ/AWQ see.
    """
    stream: list[int] = []
    for conv in load_conversations(path):
        stream.extend(_render(tokenizer, conv))
    windows = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    if not windows:
        raise UserError(f"{path} has fewer than {seq_len} tokens; lower --seq-len")
    return windows[:samples]


def heldout_ids(tokenizer, path: Path, max_len: int = 512) -> list[list[int]]:
    """One sequence per held-out conversation, so perplexity is measured on whole chats."""
    return [ids[:max_len] for ids in (_render(tokenizer, c) for c in load_conversations(path)) if len(ids) > 1]


def ids_sha256(sequences: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for seq in sequences:
        digest.update(array("l", seq).tobytes())
        digest.update(b"|")
    return digest.hexdigest()
