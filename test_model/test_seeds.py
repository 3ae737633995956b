"""The default verdict has margin: the stand-in passes the release gate for three more training seeds (``-m slow``).

One seed passing says little: at 66 prompts a 0.90 Wilson bound tolerates one miss, so a verdict without margin
flips with the processor's vector unit or a library release. Three other seeds through the whole chain (train,
merge, judge) must pass the gate too, with its margin of 2 prompts; on the stand-in ~2 min a seed on 2 cores.
Measured on this CPU (2026-12-01): seeds 1 and 2 pass; seed 3 fails, template_leak 2/132 and malformed 1/132. Under
``-m gpu --base-model smollm2-135m`` (H200, 316 prompts, ~4.5 min a seed with six processes sharing the GPU): seeds
1, 2, 3 gave terminated 298, 304, 306 and 0 malformed, all passing; the run before, seed 2 gave 295, hence the
measured allowance in test_behaviour.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness import evaluation, merge, model, train
from harness.gate import assert_gate
from test_model.test_behaviour import allowed, gate_counts

pytestmark = pytest.mark.slow

OTHER_SEEDS = (1, 2, 3)  # the default is TrainConfig.seed = 42


@pytest.mark.parametrize("seed", OTHER_SEEDS)
def test_the_release_gate_passes_for_another_training_seed(seed, run_settings, gate_config, device,
                                                            record_property):
    s = dataclasses.replace(run_settings, train=dataclasses.replace(run_settings.train, seed=seed))
    adapter = train.adapter_for(s.artifacts, s.train, s.lora, s.data)
    merged = merge.merged_for(s.artifacts, adapter.path, adapter.base, s.train, model.run_dtype(s.train),
                              s.merge.method)
    report = evaluation.evaluate(s, adapter, merged).report
    record_property("metrics", gate_counts(report))
    assert_gate(report, allowed(gate_config, s.train.base_model, device))
