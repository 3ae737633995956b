"""The generation cache: a second evaluation re-judges stored answers and loads no model; sampled answers."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from harness import answers, generate, merge, model, overlap
from harness import evaluation as stage


def _settings(run_settings, **eval_changes):
    return dataclasses.replace(run_settings, eval=dataclasses.replace(run_settings.eval, **eval_changes))


def _forbid_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or asked to generate although the cache holds its answers")

    for owner, name in ((generate, "generate"), (merge, "load_merged"), (merge, "load_adapter_model"),
                        (merge, "load_merged_in_memory"), (model, "load_base")):
        monkeypatch.setattr(owner, name, refuse)


def test_a_second_evaluation_loads_no_model_and_judges_the_same(evaluation, run_settings, trained_adapter,
                                                                merged_dir, monkeypatch):
    _forbid_models(monkeypatch)  # the session's evaluation, run before this test, filled the cache
    again = stage.evaluate(run_settings, trained_adapter, merged_dir)
    assert again.generated == ()
    for key in ("metrics", "control", "agreement", "retention", "hearts"):
        assert again.report[key] == evaluation.report[key], key


def test_without_the_cache_every_answer_is_generated_again(run_settings, trained_adapter, merged_dir, monkeypatch):
    s = _settings(run_settings, max_prompts=3, generation_cache=False)
    first = stage.evaluate(s, trained_adapter, merged_dir)
    second = stage.evaluate(s, trained_adapter, merged_dir)
    assert set(first.generated) == set(second.generated) == {"adapter", "merged", "control"}


def test_a_changed_generation_setting_is_generated_anew_and_then_cached(run_settings, trained_adapter, merged_dir,
                                                                         monkeypatch, tmp_path):
    # An empty cache of its own: the session's may hold these answers from an earlier run on this machine.
    s = dataclasses.replace(_settings(run_settings, max_prompts=3), artifacts=tmp_path)
    s = dataclasses.replace(s, generation=dataclasses.replace(s.generation, max_new_tokens=24))
    first = stage.evaluate(s, trained_adapter, merged_dir)
    assert set(first.generated) == {"adapter", "merged", "control"}
    _forbid_models(monkeypatch)
    assert stage.evaluate(s, trained_adapter, merged_dir).generated == ()


def test_the_report_says_where_the_evaluation_spent_its_time(run_settings, trained_adapter, merged_dir,
                                                              monkeypatch, tmp_path):
    s = dataclasses.replace(_settings(run_settings, max_prompts=3), artifacts=tmp_path)  # an empty cache
    before = stage.Stages()
    before.add("the command's own", 5.0)  # what a command measured before it called the evaluation
    started = time.perf_counter()
    fresh = stage.evaluate(s, trained_adapter, merged_dir, stages=before)
    wall = time.perf_counter() - started
    stages = fresh.report["stage_timing"]
    assert next(iter(stages.items())) == ("the command's own", 5.0)  # first, as it came
    for name in ("adapter", "merged", "control"):
        assert stages[f"load {name}"] > 0
        assert stages[f"generate {name}"] >= fresh.report["generation_timing"][name]["seconds"]
    assert {"cache keys", "cache lookup", "fidelity", "retention", "judge and report"} <= set(stages)
    assert sum(stages.values()) - 5.0 <= wall  # the stages do not overlap or count anything twice
    # Negative control: re-judged from the cache, nothing is loaded, generated or measured, and with no stages
    # given nothing before the evaluation is claimed.
    _forbid_models(monkeypatch)
    cached = stage.evaluate(s, trained_adapter, merged_dir).report["stage_timing"]
    assert set(cached) == {"tokenizer and prompts", "cache keys", "cache lookup", "judge and report"}


def test_an_interrupted_store_leaves_no_entry_that_reads_as_complete(run_settings, monkeypatch, tmp_path):
    from harness.generate import Generation

    def dies(path, rows):
        path.write_text('{"prompt": "p", "resp')  # half a line, then the process is killed
        raise KeyboardInterrupt

    material = {"model": "m", "prompts": "p"}
    monkeypatch.setattr(answers, "write_jsonl", dies)
    with pytest.raises(KeyboardInterrupt):
        answers.store_answers(tmp_path, material, [Generation("p", "r", 1, True)])
    assert answers.lookup_answers(tmp_path, material) is None


def test_sampled_answers_report_pass_k_and_each_regenerates_from_its_seed(run_settings, trained_adapter,
                                                                          merged_dir, merged_model, tokenizer,
                                                                          compute_dtype):
    s = _settings(run_settings, max_prompts=4, samples=3, temperatures=(0.9, 1.3))
    # Eager decoding (the default on CPU): with the compiled decode, answers drawn by another pytest process (the
    # generation cache's) forked at the ~30th word from this process's regeneration, in bf16 on the H200 (twice,
    # SmolLM2), though a fresh model object in one process reproduced all 12 (`gpu-measure.sh compile-history`;
    # not explained: perhaps dynamo's recompile limit, after many shapes, sent one process to eager). Eager
    # decoding reproduced them across every history there, so the seeds are what this test checks.
    s = dataclasses.replace(s, generation=dataclasses.replace(s.generation, cache="dynamic"))
    result = stage.evaluate(s, trained_adapter, merged_dir)
    blocks = result.report["sampled"]
    assert [b["temperature"] for b in blocks] == [0.9, 1.3] and all(b["samples"] == 3 for b in blocks)
    behaviour = blocks[0]["checks"]["behaviour"]
    assert behaviour["pass_k"]["n"] == 4 and behaviour["pass_k"]["k"] <= behaviour["pass_at_k"]["k"]
    drawn = result.sampled[0.9]
    cfg = dataclasses.replace(s.generation, do_sample=True, temperature=0.9, top_p=s.eval.top_p)
    # Its batch again (the same prompts and seeds): every answer, on any device and dtype.
    again = generate.generate(merged_model, tokenizer, [g.prompt for g in drawn], cfg, seeds=[g.seed for g in drawn])
    assert [g.response for g in again] == [g.response for g in drawn]
    # One answer alone needs arithmetic that does not depend on the batch: fp32. In bf16 a batch of one rounds
    # otherwise than the batch the answer was drawn in, and the draw forks (SmolLM2 on the H200: at the 20th word).
    if compute_dtype == torch.float32:
        one = drawn[4]  # prompt 1, sample 1
        [alone] = generate.generate(merged_model, tokenizer, [one.prompt], cfg, seeds=[one.seed])
        assert alone.response == one.response


def test_the_fp32_agreement_answers_the_4bit_model_and_the_merge_in_fp32_and_caches_them(
        run_settings, trained_adapter, merged_dir, monkeypatch, tmp_path):
    loads = []

    def recorded(name):
        real = getattr(merge, name)

        def load(*args, **kwargs):
            loads.append((name, args[3], kwargs.get("method")))  # args[3]: the dtype it computes in
            return real(*args, **kwargs)
        return load

    for name in ("load_adapter_model", "load_merged_in_memory"):
        monkeypatch.setattr(merge, name, recorded(name))
    # A half-precision run with eager decoding: the plumbing is the point, not a compile. The CPU computes in
    # fp32 only (model.compute_dtype refuses bf16 there), so the run's dtype is taken as given.
    real_dtype = model.run_dtype
    monkeypatch.setattr(model, "run_dtype",
                        lambda cfg: torch.bfloat16 if cfg.compute_dtype == "bf16" else real_dtype(cfg))
    off = _settings(run_settings, max_prompts=3)
    off = dataclasses.replace(off, train=dataclasses.replace(off.train, compute_dtype="bf16"), artifacts=tmp_path,
                              generation=dataclasses.replace(off.generation, cache="dynamic"))
    on = _settings(off, fp32_agreement=2)
    assert set(stage.evaluate(off, trained_adapter, merged_dir).generated) == {"adapter", "merged", "control"}
    del loads[:]
    first = stage.evaluate(on, trained_adapter, merged_dir)
    # Only the fp32 pair is new: the run's answers and measurements (fidelity, retention) come from the cache.
    assert set(first.generated) == {stage.FP32_ADAPTER, stage.FP32_MERGED}
    assert loads == [("load_adapter_model", torch.float32, None),
                     ("load_merged_in_memory", torch.float32, on.merge.method)]
    f = first.report["agreement"]["fp32"]
    # In fp32 the dequantised merge is the trained model (its verdicts on 128 of 128 prompts, CPU and H200); the
    # text may still fork on CPU, whose 4-bit path rounds through bf16.
    assert (f["k"], f["n"]) == (2, 2) and 0 <= f["same_text"] <= 2
    assert first.report["agreement"]["n"] == 3  # the run's own agreement stays on every prompt, in bf16
    original = dataclasses.replace(on, merge=dataclasses.replace(on.merge, method="original"))
    assert stage.evaluate(original, trained_adapter, merged_dir).generated == (stage.FP32_MERGED,)
    _forbid_models(monkeypatch)
    again = stage.evaluate(on, trained_adapter, merged_dir)
    assert again.generated == () and again.report["agreement"]["fp32"] == f


def test_no_fp32_agreement_where_it_is_off_or_the_run_is_fp32_already(run_settings, trained_adapter, merged_dir,
                                                                     compute_dtype):
    s = _settings(run_settings, max_prompts=3)
    assert "fp32" not in stage.evaluate(s, trained_adapter, merged_dir).report["agreement"]
    if compute_dtype == torch.float32:  # the stand-in's runs: its agreement is already fp32's
        on = _settings(run_settings, max_prompts=3, fp32_agreement=2)
        result = stage.evaluate(on, trained_adapter, merged_dir)
        assert "fp32" not in result.report["agreement"]
        assert not {stage.FP32_ADAPTER, stage.FP32_MERGED} & set(result.generated)


def _beside_everywhere(monkeypatch, device):
    """On CPU, where the planner never overlaps, the 4-bit model is sent to a child process anyway, in the batch a
    serial CPU run would use; on CUDA the planner decides, and this session's small models fit."""
    if device == "cpu":
        monkeypatch.setattr(overlap, "planned_batch",
                            lambda merged_dir, tokenizer, prompts, *rest: min(generate.CPU_BATCH, len(prompts)))


def test_the_4bit_model_answering_in_a_child_process_gives_the_serial_answers_and_fidelity(
        run_settings, trained_adapter, merged_dir, monkeypatch, device):
    s = _settings(run_settings, max_prompts=4, generation_cache=False)
    # Eager decoding (the default on CPU): with the merged model's compiled decode, its greedy answer to 1 of the 4
    # prompts forked beside the busy child (H200, SmolLM2, bf16), while the child's 4-bit answers were the
    # serial ones (see harness.overlap). What is tested is the plumbing: the plan, the child's answers, its logits.
    s = dataclasses.replace(s, generation=dataclasses.replace(s.generation, cache="dynamic"))
    serial = stage.evaluate(s, trained_adapter, merged_dir)
    _beside_everywhere(monkeypatch, device)
    beside = stage.evaluate(_settings(s, overlap=True), trained_adapter, merged_dir)
    timing = beside.report["generation_timing"]
    assert timing["adapter"]["beside"] == "merged and control"  # it did run in the child
    assert timing["merged"]["beside"] == timing["control"]["beside"] == "adapter"  # both answered meanwhile
    stages = list(beside.report["stage_timing"])  # in the order first met
    assert stages.index("retention") < stages.index("wait for adapter") < stages.index("fidelity")
    assert "wait for adapter" not in serial.report["stage_timing"]
    assert "beside" not in serial.report["generation_timing"]["adapter"]
    timing = serial.report["generation_timing"]  # how each set was decoded here: the plan "auto" would not key
    assert {(timing[n]["decode"], timing[n]["batch_size"]) for n in ("merged", "control", "adapter")} == {("eager", 4)}
    assert "decode" not in beside.report["generation_timing"]["adapter"]  # the child's plan is its own
    assert beside.adapter == serial.adapter and beside.merged == serial.merged
    for key in ("metrics", "agreement", "retention"):  # the fidelity's logits came back from the child too
        assert beside.report[key] == serial.report[key], key
    # Not equal by emptiness: the 4-bit model's answers are its own, not the base's.
    assert [g.response for g in beside.adapter] != [g.response for g in beside.control]


def test_an_adapter_the_child_cannot_load_is_the_one_line_error_of_one_process(
        run_settings, trained_adapter, merged_dir, monkeypatch, device, tmp_path):
    import json
    import shutil

    from harness.errors import InputError

    broken = shutil.copytree(trained_adapter.path, tmp_path / "adapter")
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "r": config["r"] * 2}))  # wrong shapes
    s = _settings(run_settings, max_prompts=2, generation_cache=False, overlap=True)
    _beside_everywhere(monkeypatch, device)
    with pytest.raises(InputError, match=rf"adapter {broken}: was made for another base model"):
        stage.evaluate(s, dataclasses.replace(trained_adapter, path=broken), merged_dir)


def test_a_finished_child_has_exited_and_a_stopped_one_ends_at_once(trained_adapter, run_settings, tokenizer):
    prompts = stage.held_out_prompts(run_settings.eval)[:2]
    s = run_settings
    args = (trained_adapter.base, trained_adapter.path, s.train, model.run_dtype(s.train), prompts, s.generation)
    done = overlap.Child().start(*args, fidelity_texts=1)
    made, reference, _ = done.result()
    assert not done.running  # its memory is free before the next model plans a batch
    assert len(made) == 2 and reference is not None and reference.dtype == torch.float32
    stopped = overlap.Child().start(*args, fidelity_texts=0)
    stopped.stop()  # a parent that failed does not wait for the answers
    assert not stopped.running
    idle = overlap.Child()  # spawned early, never given work (its evaluation did not overlap)
    assert idle.running
    idle.stop()
    assert not idle.running


def test_a_warm_child_is_spawned_only_where_it_may_answer_beside_and_ends_on_leaving(run_settings, monkeypatch):
    on = dataclasses.replace(run_settings, eval=dataclasses.replace(run_settings.eval, overlap=True,
                                                                    with_adapter=True),
                             train=dataclasses.replace(run_settings.train, device="auto"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU runner, as far as the choice goes
    with overlap.warm_child(on) as child:
        assert isinstance(child, overlap.Child) and child.running
    assert not child.running  # unused: ended with the command
    # Negative controls: overlap off, no 4-bit model, a CPU run, no GPU visible.
    for cfg in (dataclasses.replace(on, eval=dataclasses.replace(on.eval, overlap=False)),
                dataclasses.replace(on, eval=dataclasses.replace(on.eval, with_adapter=False)),
                dataclasses.replace(on, train=dataclasses.replace(on.train, device="cpu"))):
        with overlap.warm_child(cfg) as child:
            assert child is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with overlap.warm_child(on) as child:
        assert child is None


def test_the_evaluation_gives_its_work_to_the_child_it_was_handed(run_settings, trained_adapter, merged_dir,
                                                                  monkeypatch, device):
    s = _settings(run_settings, max_prompts=2, generation_cache=False, overlap=True)
    _beside_everywhere(monkeypatch, device)
    spawned = []
    real = overlap.Child.__init__

    def counting(self):
        spawned.append(self)
        real(self)

    warm = overlap.Child()
    monkeypatch.setattr(overlap.Child, "__init__", counting)
    result = stage.evaluate(s, trained_adapter, merged_dir, child=warm)
    assert result.report["generation_timing"]["adapter"]["beside"] == "merged and control"
    assert spawned == [] and not warm.running  # no second process: the warm one answered and exited
    stage.evaluate(s, trained_adapter, merged_dir)  # negative control: without one, the evaluation spawns its own
    assert len(spawned) == 1


def test_answers_made_beside_the_child_are_not_served_to_a_run_without_it(run_settings, trained_adapter, merged_dir,
                                                                          monkeypatch, device, tmp_path):
    s = dataclasses.replace(_settings(run_settings, max_prompts=3), artifacts=tmp_path)
    s = dataclasses.replace(s, generation=dataclasses.replace(s.generation, cache="dynamic"))
    assert set(stage.evaluate(s, trained_adapter, merged_dir).generated) == {"adapter", "merged", "control"}
    if device == "cpu":  # overlap asked for where the plan cannot overlap: the serial entries serve it
        assert stage.evaluate(_settings(s, overlap=True), trained_adapter, merged_dir).generated == ()
    _beside_everywhere(monkeypatch, device)
    # The 4-bit answers are the same either way; the merged and base models', made beside it, have their own entry.
    assert stage.evaluate(_settings(s, overlap=True), trained_adapter, merged_dir).generated == ("merged", "control")


def test_the_childs_work_goes_at_once_whatever_its_size_and_only_once(trained_adapter, run_settings):
    s = run_settings
    prompts = [f"### Instruction:\nSay {'very ' * 200}much, {n}.\n\n### Response:\n" for n in range(200)]
    args = (trained_adapter.base, trained_adapter.path, s.train, model.run_dtype(s.train), prompts, s.generation, 0)
    child = overlap.Child()
    try:
        started = time.perf_counter()
        child.start(*args)  # ~230 KB of prompts: more than a pipe holds, while the child is still importing
        handed = time.perf_counter() - started
        assert child.running and handed < 2.0, handed  # the child's reader took it; the imports take longer
        with pytest.raises(RuntimeError, match="one piece of work"):
            child.start(*args)
    finally:
        child.stop()
    assert not child.running


def test_the_plan_overlaps_only_on_cuda_with_room_for_both_and_keeps_a_users_batch(merged_dir, tokenizer,
                                                                                   run_settings, monkeypatch):
    prompts = stage.held_out_prompts(run_settings.eval)[:8]
    cfg, dtype, cuda = run_settings.generation, torch.float32, torch.device("cuda")
    assert overlap.planned_batch(merged_dir, tokenizer, prompts, cfg, torch.device("cpu"), dtype) is None
    for free, expected in ((2**40, 8), (2**10, None)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 2**41))
        assert overlap.planned_batch(merged_dir, tokenizer, prompts, cfg, cuda, dtype) == expected
    users = dataclasses.replace(cfg, batch_size=3)
    assert overlap.planned_batch(merged_dir, tokenizer, prompts, users, cuda, dtype) is None  # 1 KiB: no room
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**40, 2**41))
    assert overlap.planned_batch(merged_dir, tokenizer, prompts, users, cuda, dtype) == 3


def test_a_child_that_dies_before_answering_is_one_error_naming_the_way_out(trained_adapter, run_settings):
    s = run_settings
    child = overlap.Child()
    child._process.kill()  # killed while importing (out of host memory, a runner's limit)
    child._process.join()
    prompts = stage.held_out_prompts(s.eval)[:1]
    child.start(trained_adapter.base, trained_adapter.path, s.train, model.run_dtype(s.train), prompts,
                s.generation, 0)  # its work goes nowhere: no error here
    with pytest.raises(overlap.ChildDied, match=r"died before answering \(exit code -9\); with --no-overlap"):
        child.result()
