"""Checkpoints of a training run: numbered, atomic, pickle-free, the last N kept.

A checkpoint is a folder `<run>/checkpoints/ckpt-<updates:08d>/` holding
    weights.npz   every array: online, self-play and target network weights, optimiser variables
    state.json    counters, RNG states, evaluation scores (anything JSON-able the trainer keeps)
    config.json   the run's configuration
    buffer/       the replay buffer, in the newest checkpoint only (about 0.11 GB at 100K Atari
                  transitions with the default frame compression)
    COMPLETE      written last: a folder without it is never loaded
It is written under `.tmp-ckpt-<updates>` and renamed when complete, so killing the process at any
moment leaves the previous checkpoint usable. Only after the rename is the buffer of the older
checkpoints removed and the checkpoints beyond the newest `keep` deleted. Arrays are read with
`allow_pickle=False`; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from typing import Callable, NamedTuple

import numpy as np

from config import Config

CHECKPOINT_PREFIX = "ckpt-"
TEMPORARY_PREFIX = ".tmp-ckpt-"
COMPLETE_MARKER = "COMPLETE"
BUFFER_FOLDER = "buffer"


class CheckpointError(Exception):
    """A checkpoint that is missing, partial, corrupt or made for another set-up
    (one-line message)."""


class Checkpoint(NamedTuple):
    path: str
    config: Config
    arrays: dict[str, list[np.ndarray]]   # "online", "optimizer", ... -> ordered arrays
    state: dict                           # counters, RNG states, scores
    buffer_path: str | None               # the saved replay buffer, if this checkpoint holds one


def save_checkpoint(checkpoints_dir: str, updates: int, arrays: dict[str, list[np.ndarray]],
                    state: dict, config: Config, save_buffer: Callable[[str], None] | None,
                    keep: int) -> str:
    """Write a complete checkpoint atomically and prune older ones; returns its final path."""
    os.makedirs(checkpoints_dir, exist_ok=True)
    name = f"{CHECKPOINT_PREFIX}{updates:08d}"
    final_path = os.path.join(checkpoints_dir, name)
    temporary_path = os.path.join(checkpoints_dir, TEMPORARY_PREFIX + f"{updates:08d}")
    shutil.rmtree(temporary_path, ignore_errors=True)
    os.makedirs(temporary_path)
    flat = {f"{group}/{index:05d}": value for group, values in arrays.items()
            for index, value in enumerate(values)}
    np.savez(os.path.join(temporary_path, "weights.npz"), **flat)
    with open(os.path.join(temporary_path, "state.json"), "w") as file:
        json.dump(state, file)
    with open(os.path.join(temporary_path, "config.json"), "w") as file:
        file.write(config.to_json())
    if save_buffer is not None:
        save_buffer(os.path.join(temporary_path, BUFFER_FOLDER))
    with open(os.path.join(temporary_path, COMPLETE_MARKER), "w") as file:
        file.write("complete\n")
    _sync_folder(temporary_path)
    if os.path.exists(final_path):      # re-saving the same update count (e.g. after a resume)
        shutil.rmtree(final_path)
    os.rename(temporary_path, final_path)
    _prune(checkpoints_dir, keep, newest=final_path)
    return final_path


def _sync_folder(path: str) -> None:
    """Flush the files of `path` to disk so a completed rename never points at unwritten data."""
    for root, _, files in os.walk(path):
        for file_name in files:
            with open(os.path.join(root, file_name), "rb") as file:
                os.fsync(file.fileno())


def _prune(checkpoints_dir: str, keep: int, newest: str) -> None:
    complete = list_checkpoints(checkpoints_dir)
    for path in complete[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for path in complete[-keep:]:
        if path != newest:
            shutil.rmtree(os.path.join(path, BUFFER_FOLDER), ignore_errors=True)
    for entry in os.listdir(checkpoints_dir):
        if entry.startswith(TEMPORARY_PREFIX):
            shutil.rmtree(os.path.join(checkpoints_dir, entry), ignore_errors=True)


def list_checkpoints(checkpoints_dir: str) -> list[str]:
    """Complete checkpoint folders in `checkpoints_dir`, oldest first."""
    if not os.path.isdir(checkpoints_dir):
        return []
    names = sorted(entry for entry in os.listdir(checkpoints_dir)
                   if entry.startswith(CHECKPOINT_PREFIX)
                   and os.path.exists(os.path.join(checkpoints_dir, entry, COMPLETE_MARKER)))
    return [os.path.join(checkpoints_dir, name) for name in names]


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, a `checkpoints/` folder or a run folder ->
    the newest complete checkpoint."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint path '{path}' does not exist")
    if os.path.exists(os.path.join(path, "weights.npz")) or \
            os.path.basename(os.path.normpath(path)).startswith(CHECKPOINT_PREFIX):
        if not os.path.exists(os.path.join(path, COMPLETE_MARKER)):
            raise CheckpointError(f"checkpoint '{path}' is incomplete "
                                  f"(no {COMPLETE_MARKER} marker)")
        return path
    for folder in (path, os.path.join(path, "checkpoints")):
        found = list_checkpoints(folder)
        if found:
            return found[-1]
    raise CheckpointError(f"no complete checkpoint found in '{path}'")


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint (resolved as in `resolve_checkpoint`);
    any damage raises CheckpointError."""
    path = resolve_checkpoint(path)
    try:
        with open(os.path.join(path, "config.json")) as file:
            config = Config.from_json(file.read())
        with open(os.path.join(path, "state.json")) as file:
            state = json.load(file)
        arrays: dict[str, list[np.ndarray]] = {}
        with np.load(os.path.join(path, "weights.npz"), allow_pickle=False) as data:
            for key in sorted(data.files):
                group, _ = key.split("/")
                arrays.setdefault(group, []).append(data[key])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint '{path}' is corrupt or unreadable: {message}") from None
    buffer_path = os.path.join(path, BUFFER_FOLDER)
    return Checkpoint(path, config, arrays, state,
                      buffer_path if os.path.isdir(buffer_path) else None)


def check_weights_match(expected: list[np.ndarray], loaded: list[np.ndarray], what: str) -> None:
    """Refuse weights made for another network shape with one clear line."""
    if len(expected) != len(loaded):
        raise CheckpointError(f"checkpoint {what} has {len(loaded)} arrays but this network has "
                              f"{len(expected)}: it was made for another network configuration")
    for index, (want, got) in enumerate(zip(expected, loaded)):
        if want.shape != got.shape:
            raise CheckpointError(f"checkpoint {what} array {index} has shape {got.shape} but this "
                                  f"network expects {want.shape}: it was made for another env or "
                                  "network shape")
