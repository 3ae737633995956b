"""The behaviour battery of ``test_behaviour.py`` on CUDA (``pytest -m gpu``): real 4-bit CUDA kernels."""

from __future__ import annotations

import pytest

from test_model.test_behaviour import *  # noqa: F403  (the same battery, collected again under this marker)

pytestmark = pytest.mark.gpu
