"""Shared helpers for mmm's own tests (the fixtures themselves come from mmm.pytest_plugin)."""

from __future__ import annotations

import time
from typing import Callable

import pymongo
import pytest


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Polls until ``predicate()`` is true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def client(mongo_server):
    c = pymongo.MongoClient(mongo_server.uri)
    yield c
    c.close()
