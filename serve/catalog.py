"""What to host: variants from a folder, --model references and serve.yaml entries, resolved to served names.

Whether a model runs here, and in which dtype, is the machine probe's verdict for its checkpoint format
(`quantserve/probe.py`), taken on this machine now: a variant's manifest says what was verified where it was
quantized, and variants move between machines. An explicit `engine.dtype` in serve.yaml wins over the probe.

Policy for variants whose format the probe found does not run here (e.g. INT4 on an AVX2-only CPU):
- named on purpose (`--model NAME`, a variant folder given as a path, or a serve.yaml `models:` entry):
  refused with a UserError that gives the probe's reason and lists what does run here;
- found by scanning `--variants DIR`: skipped with a warning line, since the user asked for "whatever is
  there" and a folder of mixed variants is the normal output of `quantserve quantize`.
Sources (manifest `source.path`) of hosted variants are hosted too, once, as the quality and speed baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantserve.checkpoint import runtime_of_format
from quantserve.device import resolve_device
from quantserve.errors import UserError
from quantserve.manifest import MANIFEST_NAME, Manifest, list_manifests
from quantserve.model_fetch import DEFAULT_MODEL
from quantserve.probe import ProbeProvider, ProbeResult, Verdict, ensure_probe
from quantserve.serve.config import EngineSettings, ModelSpec, ServeConfig
from quantserve.text import shorten


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
    format: str | None = None  # checkpoint format (quantserve.checkpoint); None for external upstreams
    runtime: str = "vllm"  # what its engines run (quantserve.checkpoint.RUNTIMES)
    dtype: str | None = None  # what its engines run in
    dtype_from: str | None = None  # "probe" (fastest measured here) or "config" (serve.yaml engine.dtype)
    dtype_reason: str = ""


@dataclass
class Catalog:
    models: list[HostedModel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # variant -> why it is not served here
    # the probe's engine environment (where engines compute) and why; empty when no local model needed the probe
    engine_env: dict[str, str] = field(default_factory=dict)
    placement: str | None = None

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def engine_settings(self, settings: EngineSettings) -> EngineSettings:
        """The engines' settings with the probe's environment added; serve.yaml's engine.env wins over it."""
        return settings.model_copy(update={"env": {**self.engine_env, **settings.env}})

    def add(self, model: HostedModel) -> None:
        for existing in self.models:
            if existing.name == model.name:
                if existing.path == model.path:
                    return  # the same source reached twice (two variants of one model)
                raise UserError(f"two models want the served name '{model.name}': {existing.path} and "
                                f"{model.path}; rename one in serve.yaml")
        self.models.append(model)


class Verdicts:
    """The probe's verdict per model folder, the probe loaded (or run) only when a local model needs one."""

    def __init__(self, config: ServeConfig, probe: ProbeProvider | None = None) -> None:
        self._provider = probe or (lambda: ensure_probe(resolve_device(config.engine.device)))
        self._probe: ProbeResult | None = None
        self.explicit_dtype = config.engine.dtype

    def of(self, path: str | Path) -> Verdict:
        if self._probe is None:
            self._probe = self._provider()
        return self._probe.verdict_for(path)

    @property
    def probe(self) -> ProbeResult | None:
        """The probe, if a local model needed it."""
        return self._probe


def resolve_catalog(config: ServeConfig, probe: ProbeProvider | None = None) -> Catalog:
    verdicts = Verdicts(config, probe)
    catalog = Catalog()
    variants = _scan(config.variants_dir) if config.variants_dir is not None else []
    by_name = {m.name: (folder, m) for folder, m in variants}
    refs_naming_variants = [ref for ref in config.model_refs if ref in by_name]

    for spec in config.models:
        _add_spec(catalog, spec, config, verdicts, variants)
    for ref in config.model_refs:
        if ref in by_name:
            folder, manifest = by_name[ref]
            _add_variant(catalog, folder, manifest, config, verdicts, variants, named=True)
        else:
            _add_ref(catalog, ref, config, verdicts, variants)
    if config.variants_dir is not None and not refs_naming_variants:
        for folder, manifest in variants:
            _add_variant(catalog, folder, manifest, config, verdicts, variants, named=False)

    if not catalog.models and config.variants_dir is None and not config.model_refs and not config.models:
        catalog.warnings.append(f"no --variants or --model given: serving the default {DEFAULT_MODEL}")
        _add_path(catalog, _default_model(), config, verdicts, origin="model")
    if not catalog.models:
        skipped = "; ".join(catalog.warnings) or "no variants found"
        raise UserError(f"nothing to serve from {config.variants_dir}: {skipped}. "
                        f"Pass --model PATH to serve a model folder.")
    if verdicts.probe is not None:
        catalog.engine_env, catalog.placement = verdicts.probe.engine_env, verdicts.probe.placement_reason()
    return catalog


def _scan(root: Path) -> list[tuple[Path, Manifest]]:
    if not root.is_dir():
        raise UserError(f"variants folder not found: {root} (run `quantserve quantize`, or pass --model)")
    return list_manifests(root)


def runnable_here(variants: list[tuple[Path, Manifest]], verdicts: Verdicts) -> list[str]:
    names = [m.name for folder, m in variants if verdicts.of(folder).runs is not False]
    sources = sorted({Path(m.source.path).name for _, m in variants if Path(m.source.path).is_dir()})
    return names + [f"{s} (source)" for s in sources]


def _add_variant(
    catalog: Catalog,
    folder: Path,
    manifest: Manifest,
    config: ServeConfig,
    verdicts: Verdicts,
    variants: list[tuple[Path, Manifest]],
    named: bool,
) -> None:
    message = _not_runnable(f"variant {manifest.name}", folder, verdicts, variants)
    if message:
        if named:
            raise UserError(message)
        catalog.warnings.append(f"skipping {message}")
        catalog.skipped[manifest.name] = verdicts.of(folder).reason
        return
    catalog.add(_hosted(manifest.name, str(folder.resolve()), config, verdicts, origin="variant", required=named))
    source = Path(manifest.source.path)
    if not config.host_sources:
        return
    if source.is_dir():
        catalog.add(_hosted(source.name, str(source.resolve()), config, verdicts, origin="source"))
    else:
        catalog.warnings.append(f"source of {manifest.name} not found at {source}; not hosting it")


def _add_ref(
    catalog: Catalog, ref: str, config: ServeConfig, verdicts: Verdicts, variants: list[tuple[Path, Manifest]]
) -> None:
    path = Path(ref).expanduser()
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        manifest = Manifest.read(path)
        _add_variant(catalog, path, manifest, config, verdicts, variants or [(path, manifest)], named=True)
        return
    from quantserve.model_fetch import resolve_model

    try:
        folder = resolve_model(ref)  # the default's name, a folder, or an HF id fetched into the HF cache
    except UserError as err:
        known = ", ".join(m.name for _, m in variants)
        hint = f"; variants in {config.variants_dir}: {known}" if known else ""
        raise UserError(f"--model {ref}: {err}{hint}") from None
    is_hub_id = not path.exists() and ref.count("/") == 1 and ref != DEFAULT_MODEL
    name = ref.split("/")[-1].lower() if is_hub_id else folder.name
    if message := _not_runnable(f"model {name} ({folder})", folder, verdicts, variants):
        raise UserError(message)
    catalog.add(_hosted(name, str(folder), config, verdicts, origin="model"))


def _add_path(catalog: Catalog, path: Path, config: ServeConfig, verdicts: Verdicts, origin: str) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
    catalog.add(_hosted(path.name, str(path.resolve()), config, verdicts, origin=origin))


def _not_runnable(what: str, path: str | Path, verdicts: Verdicts,
                  variants: list[tuple[Path, Manifest]]) -> str | None:
    """Why `what` cannot be served here and what can, or None when the probe says its format runs here."""
    verdict = verdicts.of(path)
    if verdict.runs is not False:
        return None
    runs = ", ".join(runnable_here(variants, verdicts)) or "a full-precision model"
    # vLLM's config errors list every quantization method it knows; the first sentence says what matters
    return f"{what} cannot be served on this machine: {shorten(verdict.reason, 240)}. Serve instead: {runs}"


def _add_spec(
    catalog: Catalog,
    spec: ModelSpec,
    config: ServeConfig,
    verdicts: Verdicts,
    variants: list[tuple[Path, Manifest]],
) -> None:
    if spec.path is None and not spec.upstreams:
        raise UserError(f"serve config: model {spec.name} needs a path (to start engines) or upstreams")
    dtype = {}
    if spec.path is not None:
        if message := _not_runnable(f"model {spec.name} ({spec.path})", spec.path, verdicts, variants):
            raise UserError(message)
        dtype = _dtype_fields(spec.path, verdicts)
    catalog.add(HostedModel(
        name=spec.name,
        path=spec.path,
        upstreams=tuple(spec.upstreams),
        replicas=spec.replicas if spec.replicas is not None else (config.engine.replicas if spec.path else 0),
        tensor_parallel_size=spec.tensor_parallel_size or config.engine.tensor_parallel_size,
        extra_args=tuple(spec.extra_args),
        origin="config",
        **dtype,
    ))


def _dtype_fields(path: str | Path, verdicts: Verdicts) -> dict[str, str | None]:
    verdict = verdicts.of(path)
    runtime = runtime_of_format(verdict.format)
    if verdicts.explicit_dtype and runtime == "vllm":  # engine.dtype is vLLM's --dtype
        return {"format": verdict.format, "runtime": runtime, "dtype": verdicts.explicit_dtype, "dtype_from": "config",
                "dtype_reason": f"engine.dtype set in the serve config (the probe: {verdict.reason})"}
    return {"format": verdict.format, "runtime": runtime, "dtype": verdict.dtype, "dtype_from": "probe",
            "dtype_reason": verdict.reason}


def _hosted(name: str, path: str, config: ServeConfig, verdicts: Verdicts, origin: str,
            required: bool = True) -> HostedModel:
    if Path(path).is_dir():
        path = str(Path(path).resolve())  # one spelling per folder, so a source reached twice is hosted once
    return HostedModel(
        name=name,
        path=path,
        replicas=config.engine.replicas,
        tensor_parallel_size=config.engine.tensor_parallel_size,
        origin=origin,
        required=required,
        **_dtype_fields(path, verdicts),
    )


def _default_model() -> Path:
    from quantserve.model_fetch import ensure_default_model

    return ensure_default_model()
