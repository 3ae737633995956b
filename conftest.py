"""Root conftest: loads the fixture plugins, declares the harness's options, and the GPU skip logic."""

from __future__ import annotations

import os

# No test reaches the network: a model or dataset name that is not a local path resolves against the local
# Hugging Face cache only (set before any Hugging Face library is imported, which reads these once). To test a
# Hub model that is not cached yet, download it first, or run with HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["fixtures.environment", "fixtures.data", "fixtures.models", "fixtures.generation",
                  "fixtures.faults"]

# deadline=None: torch calls have cold-start costs that are not the property under test.
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("dev")  # CI passes --hypothesis-profile=ci


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hearts", "hearts harness")
    group.addoption("--base-model", default=None,
                    help="base model to fine-tune and judge: 'tiny' (default), 'llama2-7b-shape', a Hub id or a path")
    group.addoption("--dataset", default=None,
                    help="training data: 'bundled' (default), a Hub dataset id or a local .jsonl/.json/.parquet/.csv")
    group.addoption("--max-steps", type=int, default=None, help="QLoRA training steps (default: the config's)")
    group.addoption("--artifacts-dir", default=None,
                    help="where trained artifacts are cached (default: .hearts-cache in the rootdir)")
    group.addoption("--retrain", action="store_true", default=False,
                    help="ignore the cache and train the adapter again (default: reuse)")
    group.addoption("--adapter", default=None,
                    help="judge this trained adapter folder instead of training one (default: train)")
    group.addoption("--gpu-profile", default=None, choices=["t4"],
                    help="emulate a GPU on a bigger one: 't4' caps memory at 15 GiB, fp16 only (default: none)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from fixtures.models import gpu_skip_reason

    reason = gpu_skip_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords or "envelope" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
