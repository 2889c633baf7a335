"""Shared test set-up: quiet TensorFlow, import the flat modules from the repository root, and
start the longest test (the CartPole learning run) first."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LONGEST_FIRST = "test_learning.py"


def pytest_collection_modifyitems(items):
    """The learning run first: with two workers (pytest.ini) the other one runs the rest of the
    suite meanwhile, instead of the run starting when that worker is free."""
    items.sort(key=lambda item: item.path.name != LONGEST_FIRST)
