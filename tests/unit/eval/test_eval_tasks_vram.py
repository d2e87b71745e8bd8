"""Task scoring rules, scenario/task file checks, and the VRAM plan against a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantserve.errors import UserError
from quantserve.eval.scenarios import load_scenario
from quantserve.eval.tasks import Task, TaskResult, TaskScores, load_tasks, recovery, score, summarize, task_quality
from quantserve.eval.vram import GIB, Precision, load_model_config, plan_models, precision_of, vram_plan


def task(match: str, answer: object, choices: list[str] | None = None) -> Task:
    return Task(id="t", kind="k", messages=[{"role": "user", "content": "q"}], answer=answer, match=match,
                choices=choices)


def test_choice_scoring_takes_the_first_choice_in_the_output():
    t = task("choice", "refund", ["refund", "exchange", "repair"])
    assert score(t, "A REFUND, not an exchange.")
    assert not score(t, "An exchange is better than a refund.")  # exchange comes first
    assert not score(t, "refunded")  # whole words only
    assert not score(t, "no idea")
    letters = task("choice", "B", ["A", "B", "C"])
    assert score(letters, "Answer: B") and not score(letters, "A")


def test_contains_and_number_scoring():
    assert score(task("contains", "Paris"), "It is paris.") and not score(task("contains", "Paris"), "Lyon")
    # whole words and exact strings: "ice" is not in "price", a longer order number is not the order number
    assert not score(task("contains", "ice"), "The price is nice") and score(task("contains", "ice"), "Ice.")
    assert score(task("contains", "NW-48213"), "NW-48213.") and not score(task("contains", "NW-48213"), "NW-482130")
    assert score(task("contains", "dana.kim@example.com"), "Email: dana.kim@example.com")
    n = task("number", 1200)
    assert score(n, "The total is 1,200 dollars, not 1300") and not score(n, "1300 or 1200")
    assert score(task("number", "-3.5"), "x = -3.5") and not score(task("number", "4"), "four")


def test_accuracy_per_kind_and_recovery():
    results = [TaskResult("a", "x", "", True), TaskResult("b", "x", "", False), TaskResult("c", "y", "", True),
               TaskResult("d", "y", "", False, error="HTTP 500")]
    s = summarize("m", results)
    assert (s.accuracy, s.by_kind, s.errors) == (0.5, {"x": 0.5, "y": 0.5}, 1)
    assert recovery(0.45, 0.5) == pytest.approx(0.9)
    assert recovery(0.5, 0.0) is None and recovery(None, 0.5) is None


def test_task_quality_pairs_items_with_the_source():
    def scores(model: str, right: set[int]) -> TaskScores:
        return summarize(model, [TaskResult(f"t{i}", "k", "", i in right) for i in range(50)])

    source, variant = scores("src", set(range(40))), scores("q", set(range(30)) | {45, 46})
    tq = task_quality(variant, source)
    assert tq.n == 50 and tq.accuracy.value == pytest.approx(32 / 50)
    # Wilson 32/50: centre (0.64 + z²/100) / (1 + z²/50) = 0.6300, half-width 0.1286 (z = 1.96)
    assert tq.accuracy.low == pytest.approx(0.5014, abs=1e-3)
    assert tq.accuracy.high == pytest.approx(0.7586, abs=1e-3)
    assert (tq.paired, tq.only_source_right, tq.only_model_right) == (50, 10, 2)
    assert tq.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)  # exact McNemar 10 vs 2
    assert tq.recovery == pytest.approx(32 / 40) and tq.recovery_ci.low < 0.8 < tq.recovery_ci.high
    alone = task_quality(variant, None)
    assert (alone.p_value, alone.recovery, alone.recovery_ci) == (None, None, None)
    # without per-item results (an older eval.json) the ratio of accuracies, and no interval
    bare = TaskScores("q", 50, 32, 0, 0.64, {}, [])
    legacy = task_quality(bare, TaskScores("src", 50, 40, 0, 0.8, {}, []))
    assert legacy.recovery == pytest.approx(0.8) and legacy.recovery_ci is None and legacy.p_value is None


def test_task_and_scenario_file_errors(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "t", "kind": "k", "messages": [{"role": "user", "content": "q"}],
                               "answer": "a", "match": "choice"}) + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl:1: not a task .*needs a non-empty 'choices'"):
        load_tasks(bad)
    with pytest.raises(UserError, match="task file not found"):
        load_tasks(tmp_path / "missing.jsonl")
    scenario = tmp_path / "s.jsonl"
    scenario.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}\n'
                        '{"id": "b", "messages": []}\n')
    with pytest.raises(UserError, match=r"s\.jsonl:2: not a scenario item \(messages: "):
        load_scenario(str(scenario))


def test_shipped_model_configs_match_their_parameter_counts():
    assert plan_models() == ["llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3", "qwen2.5-7b-instruct"]
    for name in plan_models():
        config = load_model_config(name)
        assert config.architecture_params() == config.num_parameters, name


def test_vram_plan_matches_a_hand_computation():
    # Llama-3.1-8B: 32 layers, 8 KV heads, head_dim 128 -> 2*32*8*128*2 = 131072 bytes per token.
    # Embeddings 128256*4096*2 (untied) = 1,050,673,152 params at 2 bytes; the other 6,979,588,096 at
    # 4 + 16/128 = 4.125 bits. KV: 131072 * 2048 tokens * 2 sequences = 0.5 GiB.
    plan = vram_plan("llama-3.1-8b-instruct", [Precision("int4 g128", 4, 128), Precision("bf16", 16)],
                     context_len=2048, concurrency=2)
    assert plan["kv_bytes_per_token"] == 131072
    int4, bf16 = plan["rows"]
    weights = (6_979_588_096 * 4.125 / 8 + 1_050_673_152 * 2) / GIB
    assert int4["weights_gb"] == pytest.approx(weights)
    assert int4["kv_cache_gb"] == pytest.approx(0.5)
    assert int4["total_gb"] == pytest.approx(weights + 0.5 + 1.5)
    assert int4["total_gb"] == pytest.approx(7.309, abs=1e-3)
    assert int4["fits"] == {"8": False, "12": True, "16": True, "24": True}  # 7.31 GiB > 0.9 * 8 = 7.2
    assert bf16["weights_gb"] == pytest.approx(8_030_261_248 * 2 / GIB)
    assert bf16["fits"] == {"8": False, "12": False, "16": False, "24": True}
    assert "KV bytes/token = 2 (K and V) × layers × kv_heads × head_dim" in plan["formula"]


def test_plan_precision_from_manifest_recipes():
    llama = load_model_config("llama-3.1-8b-instruct")
    gptq = precision_of("gptq-w4a16", "W4A16", 4, 64, {"group_size": "auto"})  # 64 on the tiny model
    assert gptq.effective_bits(llama) == 4.125  # "auto" picks 128 for Llama's shapes
    nf4 = precision_of("bnb-nf4", "NF4", 4, None, {"double_quant": True})
    assert nf4.effective_bits(llama) == pytest.approx(4 + (8 + 32 / 256) / 64)
    assert precision_of("w8a8-int8", "W8A8", 8, None).effective_bits(llama) == 8.0
    with pytest.raises(UserError, match="unknown plan model 'gpt-5'"):
        vram_plan("gpt-5")


def test_shipped_task_set_is_checkable_and_matches_its_generator():
    import importlib.util

    from quantserve.eval.tasks import default_tasks_path
    from tests.support.cli import REPO

    tasks = load_tasks(default_tasks_path())
    assert len(tasks) >= 480 and len({t.id for t in tasks}) == len(tasks)
    kinds = {t.kind for t in tasks}
    assert kinds == {"intent", "policy", "extract", "fact"}
    assert min(sum(t.kind == k for t in tasks) for k in kinds) >= 120
    for t in tasks:
        if t.match == "choice":
            assert str(t.answer) in (t.choices or []), t.id
        if t.kind == "extract":  # an exact string the message holds
            assert str(t.answer) in t.messages[-1]["content"], t.id
        assert score(t, str(t.answer)), t.id  # the answer itself passes its own rule
    # the file is the generator's output: edit prompts/tasks/build_support_tasks.py, then run it
    spec = importlib.util.spec_from_file_location("build_support_tasks",
                                                  REPO / "prompts" / "tasks" / "build_support_tasks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [Task.model_validate(row) for row in module.tasks()] == tasks
