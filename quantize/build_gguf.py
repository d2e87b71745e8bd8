"""llama.cpp GGUF variants: the source converted by llama.cpp's own converter, then quantized by ggml's kernels.

1. HF folder -> F32 GGUF with `convert_hf_to_gguf.py`, llama.cpp's converter (tokenizer, chat template and
   architecture metadata as llama.cpp expects them). No wheel ships it; `make install` takes it from the
   llama-cpp-python sdist on PyPI (pinned in the Makefile) into the quantization environment.
2. F32 GGUF -> Q8_0 / Q4_0 / Q4_K_M with `ggml_quantize_chunk` from the ggml library inside xllamacpp's wheel,
   the same code llama.cpp's `llama-quantize` calls (that tool ships in no wheel on the registries, and
   xllamacpp does not export `llama_model_quantize`). Which tensor gets which type follows `llama-quant.cpp` for
   dense models: output (and tied embeddings) at Q6_K, half the attn_v / ffn_down layers at Q6_K in Q4_K_M,
   norms in F32; a tensor whose row is not a multiple of the type's block falls back as llama.cpp does
   (Q4_K -> Q5_0, Q6_K -> Q8_0). SmolLM2-135M's rows are 576 wide, not a multiple of 256, so its "Q4_K_M"
   is mostly Q5_0 and Q8_0 (llama-quantize does the same); Q4_0 (blocks of 32) is its true 4-bit GGUF.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from quantserve.errors import UserError
from quantserve.quantize.recipes import GgufRecipe

GGUF_NAME = "model.gguf"
CONVERTER_ENV = "QUANTSERVE_LLAMA_CONVERTER"  # a convert_hf_to_gguf.py to use instead of the installed one


def converter() -> Path:
    found = os.environ.get(CONVERTER_ENV) or str(Path(sys.prefix) / "share" / "llama.cpp" / "convert_hf_to_gguf.py")
    if not Path(found).is_file():
        raise UserError(f"llama.cpp's converter is not at {found}; `make install` puts it there "
                        f"(or set {CONVERTER_ENV})")
    return Path(found)


@cache
def _ggml():
    """ggml's quantize entry point in xllamacpp's shared library."""
    import xllamacpp

    folder = Path(xllamacpp.__file__).parent
    lib = ctypes.CDLL(str(next(folder.glob("xllamacpp*.so"))))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    return fn


def _use_more_bits(layer: int, n_layer: int) -> bool:
    """llama-quant.cpp's choice of the layers that keep more bits in the _M k-quant mixes."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def _quantizable(name: str, ndims: int) -> bool:
    return ndims >= 2 and name.endswith("weight") and "_norm.weight" not in name and \
        name not in ("position_embd.weight", "token_types.weight") and "ffn_gate_inp.weight" not in name


def tensor_type(name: str, row: int, quant_type: str, n_layer: int, tied: bool):
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T

    default = {"Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_K_M": T.Q4_K}[quant_type]
    chosen = default
    match = re.match(r"blk\.(\d+)\.", name)
    layer = int(match.group(1)) if match else -1
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        chosen = default if default == T.Q8_0 else T.Q6_K
    elif quant_type == "Q4_K_M" and ("attn_v.weight" in name or "ffn_down" in name) and _use_more_bits(layer, n_layer):
        chosen = T.Q6_K
    fallback = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
    if row % GGML_QUANT_SIZES[chosen][0]:
        chosen = fallback.get(chosen, chosen)
        if row % GGML_QUANT_SIZES[chosen][0]:
            chosen = T.F16
    return chosen


def _quantize_rows(values, qtype, threads: int):
    import numpy as np
    from gguf import GGML_QUANT_SIZES

    rows, cols = values.shape
    block, type_size = GGML_QUANT_SIZES[qtype]
    src = np.ascontiguousarray(values, dtype=np.float32)
    dst = np.empty((rows, cols // block * type_size), dtype=np.uint8)
    quantize = _ggml()

    def part(chunk) -> int:
        # ggml offsets src by the start element and dst by start row x row size itself: pass the bases
        return 0 if len(chunk) == 0 else quantize(int(qtype), src.ctypes.data, dst.ctypes.data, int(chunk[0]) * cols,
                                                   len(chunk), cols, None)

    with ThreadPoolExecutor(threads) as pool:
        written = sum(pool.map(part, np.array_split(np.arange(rows), max(1, min(threads, rows)))))
    if written != dst.nbytes:
        raise RuntimeError(f"ggml wrote {written} bytes for a {dst.nbytes}-byte tensor")
    return dst


def requantize(src: Path, dst: Path, quant_type: str, threads: int) -> dict[str, int]:
    """A full-precision GGUF re-written with its weights in `quant_type`; returns how many tensors got each type."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T

    file_types = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}  # llama_ftype, written to general.file_type
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    n_layer = int(reader.fields[f"{arch}.block_count"].contents())
    tied = "output.weight" not in {t.name for t in reader.tensors}
    writer = gguf.GGUFWriter(dst, arch=arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or \
                field.name in ("general.file_type", "general.quantization_version"):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    writer.add_file_type(file_types[quant_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    plan = []
    for tensor in reader.tensors:
        shape = tuple(int(x) for x in reversed(tensor.shape))  # numpy order: rows first, the row last
        if _quantizable(tensor.name, len(shape)):
            qtype = tensor_type(tensor.name, shape[-1], quant_type, n_layer, tied)
        else:
            qtype = tensor.tensor_type if tensor.tensor_type in (T.F32, T.F16) else T.F32
        plan.append((tensor, shape, qtype))
        if qtype in (T.F32, T.F16):
            dtype = np.dtype(np.float32 if qtype == T.F32 else np.float16)
            writer.add_tensor_info(tensor.name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        else:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            packed = (*shape[:-1], shape[-1] // block * type_size)
            writer.add_tensor_info(tensor.name, packed, np.dtype(np.uint8), int(np.prod(packed)), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    counts: dict[str, int] = {}
    for tensor, shape, qtype in plan:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32, copy=False)
        if qtype == T.F32:
            out = values
        elif qtype == T.F16:
            out = values.astype(np.float16)
        else:
            out = _quantize_rows(values.reshape(-1, shape[-1]), qtype, threads).reshape(*shape[:-1], -1)
        writer.write_tensor_data(out)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.close()
    return counts


def build(recipe: GgufRecipe, source: Path, out: Path, threads: int) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-f32-", dir=out.parent) as tmp:
        full = Path(tmp) / "f32.gguf"
        proc = subprocess.run([sys.executable, str(converter()), str(source), "--outtype", "f32", "--outfile",
                               str(full)], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"llama.cpp's converter failed on {source}:\n{tail}")
        counts = requantize(full, out / GGUF_NAME, recipe.quant_type, threads)
    # the quality check loads the GGUF through transformers, which takes the tokenizer from the folder
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return counts
