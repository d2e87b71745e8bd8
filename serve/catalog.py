"""What to host: variants from a folder, --model references and serve.yaml entries, resolved to served names.

Policy for variants that cannot run here (manifest `servable_here: false`, e.g. INT4 on this AVX2 CPU):
- named on purpose (`--model NAME`, a variant folder given as a path, or a serve.yaml `models:` entry):
  refused with a UserError that gives the manifest's reason and lists what does run here;
- found by scanning `--variants DIR`: skipped with a warning line, since the user asked for "whatever is
  there" and a folder of mixed variants is the normal output of `quantserve quantize`.
Sources (manifest `source.path`) of hosted variants are hosted too, once, as the quality and speed baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantserve.errors import UserError
from quantserve.quantize.manifest import MANIFEST_NAME, Manifest, list_manifests
from quantserve.serve.config import ModelSpec, ServeConfig
from quantserve.serve.device import Device, resolve_device

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class HostedModel:
    name: str  # served model name, what clients put in "model"
    path: str | None  # what local engines load; None when only external upstreams serve it
    upstreams: tuple[str, ...] = ()
    replicas: int = 1
    tensor_parallel_size: int = 1
    extra_args: tuple[str, ...] = ()
    origin: str = "model"  # variant | source | model | config
    required: bool = True  # False for variants found by scanning a folder: one that fails to start is skipped


@dataclass
class Catalog:
    models: list[HostedModel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def add(self, model: HostedModel) -> None:
        for existing in self.models:
            if existing.name == model.name:
                if existing.path == model.path:
                    return  # the same source reached twice (two variants of one model)
                raise UserError(f"two models want the served name '{model.name}': {existing.path} and "
                                f"{model.path}; rename one in serve.yaml")
        self.models.append(model)


def servable(manifest: Manifest, device: Device) -> bool:
    # servable_here was judged by quantize on a CPU; a CUDA host can run whatever vLLM loads at all.
    return manifest.servable_here or (device == "cuda" and bool(manifest.vllm_loadable))


def resolve_catalog(config: ServeConfig) -> Catalog:
    device = resolve_device(config.engine.device)
    catalog = Catalog()
    variants = _scan(config.variants_dir) if config.variants_dir is not None else []
    by_name = {m.name: (folder, m) for folder, m in variants}
    refs_naming_variants = [ref for ref in config.model_refs if ref in by_name]

    for spec in config.models:
        _add_spec(catalog, spec, config, device, variants)
    for ref in config.model_refs:
        if ref in by_name:
            folder, manifest = by_name[ref]
            _add_variant(catalog, folder, manifest, config, device, variants, named=True)
        else:
            _add_ref(catalog, ref, config, device, variants)
    if config.variants_dir is not None and not refs_naming_variants:
        for folder, manifest in variants:
            _add_variant(catalog, folder, manifest, config, device, variants, named=False)

    if not catalog.models and config.variants_dir is None and not config.model_refs and not config.models:
        catalog.warnings.append(f"no --variants or --model given: serving the default {DEFAULT_MODEL_NAME}")
        _add_path(catalog, _default_model(), config, origin="model")
    if not catalog.models:
        skipped = "; ".join(catalog.warnings) or "no variants found"
        raise UserError(f"nothing to serve from {config.variants_dir}: {skipped}. "
                        f"Pass --model PATH to serve a model folder.")
    return catalog


def _scan(root: Path) -> list[tuple[Path, Manifest]]:
    if not root.is_dir():
        raise UserError(f"variants folder not found: {root} (run `quantserve quantize`, or pass --model)")
    return list_manifests(root)


def runnable_here(variants: list[tuple[Path, Manifest]], device: Device) -> list[str]:
    names = [m.name for _, m in variants if servable(m, device)]
    sources = sorted({Path(m.source.path).name for _, m in variants if Path(m.source.path).is_dir()})
    return names + [f"{s} (source)" for s in sources]


def _add_variant(
    catalog: Catalog,
    folder: Path,
    manifest: Manifest,
    config: ServeConfig,
    device: Device,
    variants: list[tuple[Path, Manifest]],
    named: bool,
) -> None:
    if not servable(manifest, device):
        runs = ", ".join(runnable_here(variants, device)) or "the source model"
        reason = _short(manifest.servable_reason) or "its manifest says servable_here: false"
        message = f"variant {manifest.name} cannot be served on this machine: {reason}. Serve instead: {runs}"
        if named:
            raise UserError(message)
        catalog.warnings.append(f"skipping {message}")
        return
    catalog.add(_hosted(manifest.name, str(folder.resolve()), config, origin="variant", required=named))
    source = Path(manifest.source.path)
    if source.is_dir():
        catalog.add(_hosted(source.name, str(source.resolve()), config, origin="source"))
    else:
        catalog.warnings.append(f"source of {manifest.name} not found at {source}; not hosting it")


def _add_ref(
    catalog: Catalog, ref: str, config: ServeConfig, device: Device, variants: list[tuple[Path, Manifest]]
) -> None:
    path = Path(ref).expanduser()
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        manifest = Manifest.read(path)
        _add_variant(catalog, path, manifest, config, device, variants or [(path, manifest)], named=True)
        return
    from quantserve.quantize.model_fetch import resolve_model

    try:
        folder = resolve_model(ref)  # the default's name, a folder, or an HF id fetched into the HF cache
    except UserError as err:
        known = ", ".join(m.name for _, m in variants)
        hint = f"; variants in {config.variants_dir}: {known}" if known else ""
        raise UserError(f"--model {ref}: {err}{hint}") from None
    is_hub_id = not path.exists() and ref.count("/") == 1 and ref != DEFAULT_MODEL_NAME
    name = ref.split("/")[-1].lower() if is_hub_id else folder.name
    catalog.add(_hosted(name, str(folder), config, origin="model"))


def _add_path(catalog: Catalog, path: Path, config: ServeConfig, origin: str) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
    catalog.add(_hosted(path.name, str(path.resolve()), config, origin=origin))


def _add_spec(
    catalog: Catalog,
    spec: ModelSpec,
    config: ServeConfig,
    device: Device,
    variants: list[tuple[Path, Manifest]],
) -> None:
    if spec.path is None and not spec.upstreams:
        raise UserError(f"serve config: model {spec.name} needs a path (to start engines) or upstreams")
    if spec.path is not None and (Path(spec.path) / MANIFEST_NAME).is_file():
        manifest = Manifest.read(Path(spec.path))
        if not servable(manifest, device):
            runs = ", ".join(runnable_here(variants, device)) or "the source model"
            raise UserError(f"model {spec.name} ({spec.path}) cannot be served on this machine: "
                            f"{_short(manifest.servable_reason)}. Serve instead: {runs}")
    catalog.add(HostedModel(
        name=spec.name,
        path=spec.path,
        upstreams=tuple(spec.upstreams),
        replicas=spec.replicas if spec.replicas is not None else (config.engine.replicas if spec.path else 0),
        tensor_parallel_size=spec.tensor_parallel_size or config.engine.tensor_parallel_size,
        extra_args=tuple(spec.extra_args),
        origin="config",
    ))


def _hosted(name: str, path: str, config: ServeConfig, origin: str, required: bool = True) -> HostedModel:
    if Path(path).is_dir():
        path = str(Path(path).resolve())  # one spelling per folder, so a source reached twice is hosted once
    return HostedModel(
        name=name,
        path=path,
        replicas=config.engine.replicas,
        tensor_parallel_size=config.engine.tensor_parallel_size,
        origin=origin,
        required=required,
    )


def _short(reason: str, limit: int = 240) -> str:
    # vLLM's config errors list every quantization method it knows; the first sentence says what matters
    reason = " ".join(reason.split())
    return reason if len(reason) <= limit else reason[: limit - 1].rstrip() + "…"


def _default_model() -> Path:
    from quantserve.quantize.model_fetch import ensure_default_model

    return ensure_default_model()
