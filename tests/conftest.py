"""Shared fixtures. Everything runs offline: no hub is reachable on the build machines, and
saying so up front turns a hub look-up into an immediate error instead of minutes of retries."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
