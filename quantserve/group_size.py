"""Group size for grouped INT4: it must divide every quantized Linear's input width.

In the core because two stages apply the rule: quantize picks the group it builds with, eval's VRAM plan
re-picks it for a larger target model's shapes.
"""

from __future__ import annotations

from collections.abc import Iterable

from quantserve.errors import UserError

CANDIDATES = (128, 64, 32)


def quantized_in_features(config: dict) -> list[int]:
    """Input widths of the Linear layers a W4A16 recipe quantizes, from an HF config.json (llama-like)."""
    hidden = int(config["hidden_size"])
    inter = int(config.get("intermediate_size") or 4 * hidden)
    # q/k/v/o and gate/up take `hidden` in (o_proj takes heads*head_dim, equal to hidden for these models);
    # down_proj takes `intermediate`.
    heads = int(config.get("num_attention_heads", 1))
    head_dim = int(config.get("head_dim") or hidden // heads)
    return sorted({hidden, inter, heads * head_dim})


def auto_group_size(in_features: Iterable[int]) -> int | None:
    """The largest candidate dividing every width; None when none does."""
    widths = set(in_features)
    return next((size for size in CANDIDATES if all(w % size == 0 for w in widths)), None)


def choose_group_size(in_features: Iterable[int], requested: int | str = "auto") -> int:
    widths = sorted(set(in_features))
    if requested != "auto":
        size = int(requested)
        bad = [w for w in widths if w % size] if size > 0 else widths
        if size <= 0 or bad:
            raise UserError(
                f"group size {size} does not divide the input width of every quantized layer "
                f"(widths {widths}; {bad} are not multiples); use one of "
                f"{[c for c in CANDIDATES if all(w % c == 0 for w in widths)] or 'a smaller size'} or 'auto'"
            )
        return size
    size = auto_group_size(widths)
    if size is not None:
        return size
    raise UserError(f"no group size among {CANDIDATES} divides every layer input width {widths}")
