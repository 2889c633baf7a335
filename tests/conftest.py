"""Shared test set-up: quiet TensorFlow, import the flat modules from the repository root, and
start the longest files first."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Longest first (CI, 2 cores): the CartPole learning run (about 11 min) on one worker while the
# other runs the files of end-to-end runs; the short files then fill whichever worker is free, so
# the two finish together. xdist starts each worker with two files, so the third file, which waits
# behind the learning run, is a short one.
FIRST = ("test_learning.py", "test_train.py", "test_lint.py", "test_ray.py", "test_continuous.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: (FIRST.index(item.path.name) if item.path.name in FIRST
                                 else len(FIRST)))
