"""Checkpoint files: atomic write, keep the last N, buffer only in the newest, damage is refused."""

import os

import numpy as np
import pytest

import checkpoints
import config as cfg


def _save(folder, updates, keep=2, buffer_text="buffer"):
    def save_buffer(path):
        os.makedirs(path)
        with open(os.path.join(path, "data.txt"), "w") as file:
            file.write(f"{buffer_text}-{updates}")

    arrays = {"online": [np.full((2, 3), updates, np.float32), np.arange(4)],
              "optimizer": [np.zeros(1)]}
    return checkpoints.save_checkpoint(folder, updates, arrays, {"updates": updates},
                                       cfg.smoke(), save_buffer, keep)


def test_round_trip_is_exact(tmp_path):
    path = _save(str(tmp_path), 7)
    loaded = checkpoints.load_checkpoint(path)
    assert loaded.config == cfg.smoke()
    assert loaded.state == {"updates": 7}
    np.testing.assert_array_equal(loaded.arrays["online"][0], np.full((2, 3), 7, np.float32))
    np.testing.assert_array_equal(loaded.arrays["online"][1], np.arange(4))
    assert open(os.path.join(loaded.buffer_path, "data.txt")).read() == "buffer-7"


def test_keeps_last_n_and_the_buffer_only_in_the_newest(tmp_path):
    for updates in (10, 20, 30):
        _save(str(tmp_path), updates, keep=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ["ckpt-00000020", "ckpt-00000030"]
    assert not os.path.exists(tmp_path / "ckpt-00000020" / "buffer")
    assert os.path.exists(tmp_path / "ckpt-00000030" / "buffer")


def test_run_folder_and_checkpoints_folder_resolve_to_the_newest(tmp_path):
    run = tmp_path / "run"
    for updates in (1, 2):
        _save(str(run / "checkpoints"), updates)
    expected = str(run / "checkpoints" / "ckpt-00000002")
    assert checkpoints.resolve_checkpoint(str(run)) == expected
    assert checkpoints.resolve_checkpoint(str(run / "checkpoints")) == expected


def test_a_partial_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    _save(str(tmp_path), 1)
    partial = tmp_path / ".tmp-ckpt-00000002"      # what a kill in the middle of a save leaves
    partial.mkdir()
    (partial / "weights.npz").write_bytes(b"half")
    assert checkpoints.load_checkpoint(str(tmp_path)).state == {"updates": 1}


def test_missing_incomplete_and_corrupt_checkpoints_raise_one_line(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.load_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(checkpoints.CheckpointError, match="no complete checkpoint"):
        checkpoints.load_checkpoint(str(tmp_path))
    path = _save(str(tmp_path), 3)
    os.remove(os.path.join(path, checkpoints.COMPLETE_MARKER))
    with pytest.raises(checkpoints.CheckpointError, match="incomplete"):
        checkpoints.load_checkpoint(path)
    path = _save(str(tmp_path), 4)
    with open(os.path.join(path, "weights.npz"), "wb") as file:
        file.write(b"not a zip file")
    with pytest.raises(checkpoints.CheckpointError, match="corrupt") as error:
        checkpoints.load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_pickled_arrays_are_refused(tmp_path):
    path = _save(str(tmp_path), 5)
    np.savez(os.path.join(path, "weights.npz"), **{"online/00000": np.array([{"a": 1}], object)})
    with pytest.raises(checkpoints.CheckpointError, match="corrupt"):
        checkpoints.load_checkpoint(path)


def test_weights_for_another_shape_are_refused():
    with pytest.raises(checkpoints.CheckpointError, match="another env or network shape"):
        checkpoints.check_weights_match([np.zeros((3, 4))], [np.zeros((3, 5))], "online weights")
    with pytest.raises(checkpoints.CheckpointError, match="another network configuration"):
        checkpoints.check_weights_match([np.zeros(1)], [], "online weights")


def test_killing_the_process_while_a_checkpoint_is_written_keeps_the_previous(tmp_path):
    """A real SIGKILL in the middle of writing the buffer of the second checkpoint."""
    import signal
    import subprocess
    import sys
    import textwrap

    _save(str(tmp_path), 1)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
        import numpy as np, checkpoints, config
        def save_buffer(path):
            os.makedirs(path)
            open(os.path.join(path, "half.bin"), "wb").write(b"0" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoints.save_checkpoint({str(tmp_path)!r}, 2, {{"online": [np.ones(3)]}}, {{}},
                                    config.smoke(), save_buffer, 2)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    loaded = checkpoints.load_checkpoint(str(tmp_path))
    assert loaded.state == {"updates": 1} and loaded.buffer_path is not None
    _save(str(tmp_path), 3)                  # the next save cleans the leftover temporary folder
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001", "ckpt-00000003"]
