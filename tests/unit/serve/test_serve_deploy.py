"""deploy/: the Kubernetes manifests parse, agree with each other and with the gateway config schema, and name
the models quantize produces; the Dockerfiles build what the manifests run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from quantserve.paths import REPO_ROOT
from quantserve.serve.config import load_config
from quantserve.serve.vllm_command import VLLM_MODULE, vllm_args

DEPLOY = REPO_ROOT / "deploy"
SOURCE = "smollm2-135m-instruct"
# bitsandbytes left vLLM core (a plugin serves it), so only these variants get engines
VLLM_VARIANTS = ("w8a8-int8", "gptq-w4a16", "awq-w4a16")


def load_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and {"apiVersion", "kind", "metadata"} <= set(doc), path
            docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What runs pods: the engines' Deployments and the gateway's StatefulSet."""
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def arg(args: list[str], flag: str) -> str:
    return str(args[args.index(flag) + 1])


def port_number(cont: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in cont["ports"] if p["name"] == port)


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return load_docs()


@pytest.fixture(scope="module")
def gateway_config(docs, tmp_path_factory):
    configmap = by_kind(docs, "ConfigMap")["quantserve-gateway"]
    path = tmp_path_factory.mktemp("cfg") / "serve.yaml"
    path.write_text(configmap["data"]["serve.yaml"])
    return load_config(path)  # the schema itself validates it


def test_selectors_match_pod_labels(docs):
    deployments = workloads(docs)
    for dep in deployments.values():
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    for svc in by_kind(docs, "Service").values():
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values()), f"Service {svc['metadata']['name']} selects no pods"


def test_config_upstreams_reach_engines_serving_that_name(docs, gateway_config):
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    served = set()
    for model in gateway_config.models:
        assert model.path is None and model.upstreams  # the gateway pod starts no engines
        for url in model.upstreams:
            parts = urlsplit(url)
            svc = services[parts.hostname]
            svc_port = next(p for p in svc["spec"]["ports"] if p["port"] == parts.port)
            (dep,) = [d for d in deployments.values()
                      if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
            cont = container(dep)
            args = cont["args"]
            assert arg(args, "--served-model-name") == model.name
            assert int(arg(args, "--port")) == port_number(cont, svc_port["targetPort"])
            assert arg(args, "--host") == "0.0.0.0"
            served.add(model.name)
    engines = [d for d in deployments.values()
               if d["metadata"]["labels"].get("app.kubernetes.io/component") == "engine"]
    assert {arg(container(d)["args"], "--served-model-name") for d in engines} == served


def test_model_names_are_what_quantize_publishes(gateway_config):
    recipes = yaml.safe_load((REPO_ROOT / "quantize" / "variants.yaml").read_text())
    assert set(VLLM_VARIANTS) <= set(recipes)
    expected = {SOURCE} | {f"{SOURCE}-{v}" for v in VLLM_VARIANTS}
    assert {m.name for m in gateway_config.models} == expected


def test_gateway_deployment_matches_its_config(docs, gateway_config):
    dep = by_kind(docs, "StatefulSet")["quantserve-gateway"]
    cont = container(dep)
    assert gateway_config.host == "0.0.0.0" and gateway_config.auth
    http = port_number(cont, "http")
    assert http == gateway_config.port
    assert cont["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert cont["livenessProbe"]["httpGet"]["path"] == "/health"
    assert cont["args"] == ["serve", "--config", "/etc/quantserve/serve.yaml"]
    mount = next(m for m in cont["volumeMounts"] if m["mountPath"] == "/etc/quantserve")
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "quantserve-gateway"
    env = {e["name"]: e for e in cont["env"]}
    assert env["QUANTSERVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "quantserve-db"
    assert env["QUANTSERVE_UPSTREAM_API_KEY"]["valueFrom"]["secretKeyRef"] == ENGINE_KEY
    assert load_config(None, upstream_api_key="x").upstream_api_key == "x"  # the variable names a real setting
    assert dep["spec"]["replicas"] >= 2  # several replicas: the ledger must be shared
    svc = by_kind(docs, "Service")["quantserve-gateway"]
    assert port_number(cont, svc["spec"]["ports"][0]["targetPort"]) == gateway_config.port


ENGINE_KEY = {"name": "quantserve-engine-key", "key": "api-key"}


def test_engine_manifests_run_the_command_line_local_engines_run(docs):
    """One renderer of vLLM's command line: a flag renamed there and not here (or the reverse) fails."""
    for dep in by_kind(docs, "Deployment").values():
        if dep["metadata"]["labels"]["app.kubernetes.io/component"] != "engine":
            continue
        cont = container(dep)
        args = [str(a) for a in cont["args"]]
        assert cont["command"] == ["python3", "-m", VLLM_MODULE]
        tp = int(arg(args, "--tensor-parallel-size")) if "--tensor-parallel-size" in args else 1
        expected = vllm_args("/models/model", arg(args, "--served-model-name"), "0.0.0.0",
                             port_number(cont, "http"), int(arg(args, "--max-model-len")), tensor_parallel_size=tp)
        assert args == expected, dep["metadata"]["name"]


def test_engines_demand_the_key_the_gateway_sends_and_admit_only_gateway_pods(docs):
    engines = [d for d in by_kind(docs, "Deployment").values()
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == "engine"]
    assert engines
    for dep in engines:
        env = {e["name"]: e for e in container(dep).get("env", [])}
        assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == ENGINE_KEY, dep["metadata"]["name"]
        assert "--api-key" not in container(dep)["args"]  # not on a command line anyone can read
    assert ENGINE_KEY["name"] in by_kind(docs, "Secret")
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for dep in engines:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selected.items() <= labels.items(), dep["metadata"]["name"]
    (rule,) = policy["spec"]["ingress"]
    allowed = [f["podSelector"]["matchLabels"] for f in rule["from"]]
    gateway_labels = by_kind(docs, "StatefulSet")["quantserve-gateway"]["spec"]["template"]["metadata"]["labels"]
    assert allowed and all(a.items() <= gateway_labels.items() for a in allowed)
    assert all(a.get("app.kubernetes.io/component") == "gateway" for a in allowed)


def test_dockerfiles_agree_with_the_manifests(docs, gateway_config):
    gateway = (DEPLOY / "Dockerfile").read_text()
    assert f"EXPOSE {gateway_config.port}" in gateway
    assert 'ENTRYPOINT ["quantserve"]' in gateway and "/etc/quantserve/serve.yaml" in gateway
    assert 'pip install ".[gateway]"' in gateway  # pins from pyproject.toml, not a second list
    assert not re.search(r"==\d", gateway)
    engine = (DEPLOY / "Dockerfile.vllm").read_text()
    vllm_version = re.search(r"^FROM vllm/vllm-openai:v(\d[\w.]*)$", engine, re.MULTILINE)
    assert vllm_version
    assert "COPY ${MODEL_DIR} /models/model" in engine
    # the engine key guard: the file vLLM's --middleware imports, at the module path the manifests name
    assert "COPY serve/engine_guard.py /opt/quantserve/quantserve/serve/engine_guard.py" in engine
    assert "PYTHONPATH=/opt/quantserve" in engine and "--middleware quantserve.serve.engine_guard" in engine
    assert re.search(r"^USER \d+$", engine, re.MULTILINE) and re.search(r"^USER quantserve$", gateway, re.MULTILINE)
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    for dep in workloads(docs).values():
        cont = container(dep)
        if dep["metadata"]["labels"]["app.kubernetes.io/component"] == "engine":
            assert arg(cont["args"], "--model") == "/models/model"
            served = arg(cont["args"], "--served-model-name")
            assert cont["image"] == f"quantserve-vllm:{vllm_version[1]}-{served}"
        else:
            assert cont["image"] == f"quantserve-gateway:{version}"


def test_readme_covers_scale_out(docs):
    text = (DEPLOY / "README.md").read_text()
    for topic in ("PostgreSQL", "--tensor-parallel-size", "replicas", "round-robin", "upstreams"):
        assert topic in text
    assert Path(DEPLOY / "k8s").is_dir()


def test_every_manifest_is_valid_kubernetes():
    """Against the API schemas (kubernetes-validate ships them: no cluster, no network), strict: an unknown or
    misplaced field fails, which a YAML parse alone lets through."""
    import kubernetes_validate

    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.30", strict=True)  # raises ValidationError naming the field


def test_pods_run_unprivileged_with_limits_timeouts_and_pinned_images(docs):
    for name, dep in workloads(docs).items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{name}: scratch volume {volume['name']} is unbounded"
        cont = container(dep)
        sc = cont["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(cont["resources"][kind]), f"{name}: {kind}"
        probes = [cont[p] for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in cont]
        assert len(probes) >= 2 and all(p.get("timeoutSeconds") for p in probes), name
        image = cont["image"]
        assert "@sha256:" in image or re.fullmatch(r"[\w./-]+:[\w.-]+", image), image
        assert not image.endswith(":latest"), image
        mounts = {m["mountPath"] for m in cont["volumeMounts"]}
        assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"


def test_the_gateways_spill_outlives_its_pod(docs):
    gateway = by_kind(docs, "StatefulSet")["quantserve-gateway"]
    (claim,) = gateway["spec"]["volumeClaimTemplates"]
    cont = container(gateway)
    home = re.search(r"QUANTSERVE_HOME=(\S+)", (DEPLOY / "Dockerfile").read_text())
    assert home and {"name": claim["metadata"]["name"], "mountPath": home[1]} in cont["volumeMounts"]
    assert gateway["spec"]["serviceName"] in by_kind(docs, "Service")
    assert by_kind(docs, "Service")[gateway["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"


def test_engines_get_only_the_environment_they_need(monkeypatch, tmp_path):
    from quantserve.serve.vllm_command import EngineSpec

    monkeypatch.setenv("QUANTSERVE_DATABASE_URL", "postgresql://ledger:secret@db/quantserve")
    monkeypatch.setenv("QUANTSERVE_METRICS_TOKEN", "metrics-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    spec = EngineSpec(name="m", model=str(tmp_path), port=8100, device="cpu", settings=load_config().engine,
                      api_key="engine-key")
    env = spec.environment()
    assert not {"QUANTSERVE_DATABASE_URL", "QUANTSERVE_METRICS_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert "secret" not in " ".join(env.values())
    assert env["HF_HOME"] == str(tmp_path / "hf") and env["OMP_NUM_THREADS"] == "2" and "PATH" in env
    assert env["VLLM_API_KEY"] == "engine-key"
