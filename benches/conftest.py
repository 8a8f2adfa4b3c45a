"""Shared benchmark settings: fixed seeds, and per-operation figures in extra_info."""

from __future__ import annotations

import random

import pytest


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    random.seed(12345)
