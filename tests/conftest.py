"""Shared test set-up: quiet TensorFlow on one thread, import the flat modules from the repository
root, and start the longest files first."""

import os
import sys

import pytest

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


@pytest.fixture(autouse=True, scope="session")
def one_tensorflow_thread():
    """TensorFlow runs this worker's ops on one thread, as the CPU presets do (two workers share two
    cores). A thread count is fixed by the process's first operation, so without this it would be
    whatever the worker's first test asked for. A test that compares a resumed run with the
    uninterrupted one to the last bit failed once in CI, in a worker whose TensorFlow had started
    on two threads of each kind; it passes here on one thread and has not failed on two."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
