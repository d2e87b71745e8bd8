"""serve.yaml with env overrides, and what `serve` hosts or refuses from a variants folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantserve.errors import UserError
from quantserve.manifest import Manifest, SourceInfo
from quantserve.serve.catalog import resolve_catalog
from quantserve.serve.config import EXAMPLE_CONFIG, ServeConfig, build_config, load_config
from quantserve.serve.vllm_command import EngineSpec, build_engine_specs
from tests.support.probe_fixtures import AMX_LIKE, AVX2_LIKE, NO_INT4, checkpoint_folder


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_bind_loopback_with_auth_on(monkeypatch):
    config = load_config()
    assert (config.host, config.port, config.auth, config.log_prompts) == ("127.0.0.1", 8000, True, False)
    assert config.resolved_database_url().startswith("sqlite:///")


def test_yaml_then_env_then_flags(tmp_path, monkeypatch):
    path = write_yaml(tmp_path / "serve.yaml", {
        "port": 9000, "log_prompts": True, "engine": {"max_model_len": 1024, "port_base": 9100},
        "overload": {"max_in_flight_per_upstream": 8},
    })
    config = load_config(path)
    assert (config.port, config.log_prompts, config.engine.max_model_len) == (9000, True, 1024)
    monkeypatch.setenv("QUANTSERVE_PORT", "9500")
    monkeypatch.setenv("QUANTSERVE_ENGINE__MAX_MODEL_LEN", "4096")
    config = load_config(path)
    assert config.port == 9500
    assert config.engine.max_model_len == 4096
    assert config.engine.port_base == 9100  # env overrides one nested field, the file keeps the others
    assert config.overload.max_in_flight_per_upstream == 8
    config = load_config(path, port=9999, auth=False, variants_dir=None)  # flags win; None = flag not given
    assert (config.port, config.auth) == (9999, False)


def test_bad_files_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("port: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="prot"):
        load_config(write_yaml(tmp_path / "typo.yaml", {"prot": 1}))
    with pytest.raises(UserError, match="port"):
        load_config(write_yaml(tmp_path / "type.yaml", {"port": "eighty"}))


def test_example_config_is_valid_and_shows_every_field():
    config = load_config(EXAMPLE_CONFIG)
    assert config == ServeConfig(gateway_id=config.gateway_id)  # the example spells out the defaults
    text = EXAMPLE_CONFIG.read_text()
    for field in ServeConfig.model_fields:
        if field not in ("gateway_id", "model_refs"):
            assert f"{field}:" in text, f"serve.example.yaml does not mention {field}"


def test_build_config_for_python_callers(tmp_path):
    config = build_config(variants_dir=tmp_path, model_path="/some/model", no_auth=True, port=8123)
    assert (config.variants_dir, config.model_refs, config.auth, config.port) == (tmp_path, ["/some/model"],
                                                                                 False, 8123)


# --- catalog -------------------------------------------------------------------------------------------------

def hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def variant(root: Path, name: str, source: Path, fmt: str, claimed: bool = True) -> Path:
    """A variant folder of checkpoint format `fmt` whose manifest claims `claimed` (its quantize-time verdict)."""
    folder = checkpoint_folder(root / name, fmt)
    Manifest(
        name=name, variant=name.split("-", 2)[-1], method="m", scheme="s", bits=8, format="compressed-tensors",
        recipe={}, recipe_hash="h", source=SourceInfo(model="src", path=str(source), sha256="x", weight_bytes=1),
        versions={}, wall_time_s=1.0, peak_rss_bytes=1, weight_bytes=1, size_ratio=0.5,
        vllm_loadable=True, servable_here=claimed, servable_reason="verified elsewhere", created_at="now",
        quantserve_version="0",
    ).write(folder)
    return folder


def on(probe):
    return lambda: probe


def no_probe():
    raise AssertionError("the probe was not needed here")


@pytest.fixture
def variants_dir(tmp_path):
    source = hf_folder(tmp_path / "models" / "tiny-src")
    root = tmp_path / "variants"
    variant(root, "tiny-src-w8a8-int8", source, "w8a8-int8", claimed=False)
    variant(root, "tiny-src-gptq-w4a16", source, "w4a16-int4")
    variant(root, "tiny-src-awq-w4a16", source, "w4a16-int4")
    (root / ".tmp-build").mkdir()
    return root


def test_whole_folder_skips_what_the_probe_cannot_run_and_adds_the_source(variants_dir):
    catalog = resolve_catalog(load_config(variants_dir=variants_dir), on(AVX2_LIKE))
    assert catalog.names() == ["tiny-src-w8a8-int8", "tiny-src"]  # the manifest's "no" is not what decides
    assert [m.origin for m in catalog.models] == ["variant", "source"]
    assert len(catalog.warnings) == 2 and set(catalog.skipped) == {"tiny-src-gptq-w4a16", "tiny-src-awq-w4a16"}
    assert all(NO_INT4 in w and "tiny-src-w8a8-int8" in w for w in catalog.warnings)
    assert [(m.format, m.dtype, m.dtype_from) for m in catalog.models] == [("w8a8-int8", "float32", "probe"),
                                                                           ("full", "float32", "probe")]


def test_a_variant_alone_when_sources_are_not_hosted(variants_dir):
    """`quantserve run` measures each model alone: a variant's folder must not bring its source along."""
    ref = [str(variants_dir / "tiny-src-w8a8-int8")]
    assert resolve_catalog(load_config(model_refs=ref), on(AVX2_LIKE)).names() == ["tiny-src-w8a8-int8", "tiny-src"]
    alone = resolve_catalog(load_config(model_refs=ref, host_sources=False), on(AVX2_LIKE))
    assert alone.names() == ["tiny-src-w8a8-int8"]


def test_naming_a_variant_the_probe_cannot_run_is_refused_with_reason_and_alternatives(variants_dir):
    config = load_config(variants_dir=variants_dir, model_refs=["tiny-src-gptq-w4a16"])
    with pytest.raises(UserError) as err:
        resolve_catalog(config, on(AVX2_LIKE))
    message = str(err.value)
    assert "tiny-src-gptq-w4a16" in message and "W4A16 INT4 does not run on this machine" in message
    assert "tiny-src-w8a8-int8" in message and "tiny-src (source)" in message
    with pytest.raises(UserError, match="cpu_gemm_wna16"):  # the folder given as a path: named too
        resolve_catalog(load_config(model_refs=[str(variants_dir / "tiny-src-awq-w4a16")]), on(AVX2_LIKE))


def test_naming_runnable_variants_hosts_only_those(variants_dir):
    catalog = resolve_catalog(load_config(variants_dir=variants_dir, model_refs=["tiny-src-w8a8-int8"]),
                              on(AVX2_LIKE))
    assert catalog.names() == ["tiny-src-w8a8-int8", "tiny-src"]
    assert not catalog.warnings


def test_where_the_probe_runs_int4_every_variant_is_hosted_in_its_fastest_dtype(variants_dir):
    catalog = resolve_catalog(load_config(variants_dir=variants_dir), on(AMX_LIKE))
    assert len(catalog.names()) == 4 and not catalog.skipped
    assert {m.dtype for m in catalog.models} == {"bfloat16"}


def test_engines_take_the_probes_core_placement_unless_serve_yaml_sets_it(variants_dir):
    from quantserve.probe import ALL_CORES_ENV, Trial
    from quantserve.serve.vllm_command import build_engine_specs

    measured = AMX_LIKE.model_copy(update={"trials": [*AMX_LIKE.trials, Trial(
        format="full", dtype="bfloat16", runs=True, env=ALL_CORES_ENV, tok_s={"1": 18.0, "16": 230.0})]})
    config = load_config(variants_dir=variants_dir)
    catalog = resolve_catalog(config, on(measured))
    assert catalog.engine_env == ALL_CORES_ENV and catalog.placement.startswith("engines compute on all cores")
    (spec, *_) = build_engine_specs(catalog.models, catalog.engine_settings(config.engine), "cpu")
    assert spec.environment()["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    mine = load_config(variants_dir=variants_dir, engine={"env": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}})
    (spec, *_) = build_engine_specs(catalog.models, catalog.engine_settings(mine.engine), "cpu")
    assert spec.environment()["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    default = resolve_catalog(config, on(AMX_LIKE))  # not measured: vLLM's own placement
    assert default.engine_env == {} and default.placement is None
    (spec, *_) = build_engine_specs(default.models, default.engine_settings(config.engine), "cpu")
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in spec.environment()


def test_an_explicit_dtype_wins_and_is_reported_as_the_users_choice(variants_dir):
    catalog = resolve_catalog(load_config(variants_dir=variants_dir, engine={"dtype": "float16"}), on(AMX_LIKE))
    assert {(m.dtype, m.dtype_from) for m in catalog.models} == {("float16", "config")}
    assert "set in the serve config" in catalog.models[0].dtype_reason


def test_plain_folder_and_missing_things(tmp_path):
    folder = hf_folder(tmp_path / "my-model")
    assert resolve_catalog(load_config(model_refs=[str(folder)]), on(AVX2_LIKE)).names() == ["my-model"]
    nf4 = checkpoint_folder(tmp_path / "my-nf4", "bnb-nf4")  # a bitsandbytes folder without a manifest
    (model,) = resolve_catalog(load_config(model_refs=[str(nf4)]), on(AVX2_LIKE)).models
    assert (model.format, model.dtype) == ("bnb-nf4", "bfloat16")
    with pytest.raises(UserError, match="variants folder not found"):
        resolve_catalog(load_config(variants_dir=tmp_path / "nope"), no_probe)
    with pytest.raises(UserError, match="not-a-thing"):
        resolve_catalog(load_config(model_refs=["not-a-thing"]), no_probe)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="nothing to serve"):
        resolve_catalog(load_config(variants_dir=empty), no_probe)


def test_config_models_with_external_upstreams(tmp_path):
    config = load_config(write_yaml(tmp_path / "serve.yaml", {"models": [
        {"name": "remote", "upstreams": ["http://10.0.0.1:8000/v1/", "http://10.0.0.2:8000"]},
        {"name": "local", "path": str(hf_folder(tmp_path / "local")), "replicas": 2},
    ]}))
    catalog = resolve_catalog(config, on(AVX2_LIKE))
    remote, _local = catalog.models
    assert remote.dtype is None and _local.dtype == "float32"
    assert remote.upstreams == ("http://10.0.0.1:8000", "http://10.0.0.2:8000") and remote.path is None
    specs = build_engine_specs(catalog.models, config.engine, "cpu")
    assert [(s.name, s.replica, s.dtype) for s in specs] == [("local", 0, "float32"), ("local", 1, "float32")]
    assert specs[0].port != specs[1].port


def test_engine_command_line_per_device(tmp_path):
    settings = load_config().engine
    cpu = EngineSpec(name="m", model=str(tmp_path), port=8100, device="cpu", settings=settings, dtype="bfloat16")
    cmd = cpu.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16" and "--enforce-eager" in cmd
    assert cmd[cmd.index("--served-model-name") + 1] == "m" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    env = cpu.environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env or env["VLLM_CPU_OMP_THREADS_BIND"]
    gpu = EngineSpec(name="m", model="org/m", port=8100, device="cuda", settings=settings, tensor_parallel_size=2)
    cmd = gpu.command()
    assert cmd[cmd.index("--dtype") + 1] == "auto" and "--enforce-eager" not in cmd
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
