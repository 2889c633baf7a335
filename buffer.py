"""Prioritized replay: storage of whole episodes, sampling and what the targets need (EfficientZero V2,
arXiv 2403.00564; the targets themselves are built in targets.py).

Storage. Self-play runs `num_envs` envs in lockstep; each env's episode is staged until it ends and is
then written contiguously into a ring of `replay_capacity` frame slots: an episode of T transitions
takes T + 1 slots (its observations o_0..o_T, each a single frame stored once, zlib-compressed when
`frame_compression` > 0; o_T is not a transition start). When the ring is full the oldest episodes
leave whole.

Sampling. A sum tree over slots holds priority^α; new transitions get the largest priority currently in
the buffer (1 when it is empty), as the official `ez/data/replay_buffer.py`. Importance weights
(N·P(i))^-β are normalised by the batch maximum and clipped to [`priority_weight_min`, 1]. For a sampled position t the batch carries the
single frames t-S+1..t+K+n (S = frame_stack, K = unroll_steps, n = td_steps): frames before the
episode's start repeat its first frame, past its end its final frame. The network stacks them, S frames
along the last axis, oldest first, as envs.FrameStacker does (networks.stack_frames, inside the graph).
The batch also carries what the targets need, with the official code's episode-end semantics (no
loss of any kind after the last real action):
- transition_masks[k] = 1 while t+k < T: position t+k has an action, a reward and an acting policy.
  The policy loss at k uses transition_masks[k]; unroll step k (which predicts o_{t+k} from
  a_{t+k-1}) is real while t+k-1 < T, so its value-prefix and consistency losses use
  transition_masks[k-1], and the step that predicts o_T is trained. Past the end actions are uniform
  random and rewards 0, all masked.
- value_masks[k] = 1 while t+k < T, and at t+k = T when the episode terminated: a terminal o_T is
  absorbing and its value target is 0; a truncated episode's o_T is an ordinary state that is never
  trained toward 0 (the TD targets before it bootstrap from v(o_T)).
- reward targets (targets.value_prefix_targets): with `value_prefix`, running sums of clipped rewards
  from t, restarting every `lstm_horizon_len`; without it, the per-step rewards;
- TD pieces (targets.td_pieces): z = Σ_{i<n} γ^i u_{t+k+i} + γ^n v(o_{t+k+n}); no bootstrap past a
  terminal; past a truncation the bootstrap is v(o_T) with γ^(T-t-k).
"""

from __future__ import annotations

import json
import os
import zlib
from typing import NamedTuple

import numpy as np

from config import Config
from targets import td_pieces, value_prefix_targets


class Batch(NamedTuple):
    frames: np.ndarray                  # [B, S-1+K+n+1, *frame] single frames at t-S+1..t+K+n
    actions: np.ndarray                 # [B, K] int32 actions at t..t+K-1
    reward_targets: np.ndarray          # [B, K] value-prefix (or reward) targets of steps 1..K
    transition_masks: np.ndarray        # [B, K+1] 1 where t+k < T (an action, a reward, a policy)
    value_masks: np.ndarray             # [B, K+1] 1 where t+k < T, or t+k = T of a terminated episode
    importance_weights: np.ndarray      # [B] float32, max 1
    indices: np.ndarray                 # [B] int64 slots, for update_priorities
    stored_policies: np.ndarray         # [B, K+1, A] the acting search's policies (uniform past end)
    td_rewards: np.ndarray              # [B, K+1] Σ_{i<n} γ^i u_{t+k+i} (0 past the end)
    bootstrap_positions: np.ndarray     # [B, K+1] int index into the K+n+1 positions
    bootstrap_discounts: np.ndarray     # [B, K+1] γ^steps, 0 where there is no bootstrap
    collected_at: np.ndarray            # [B] env step at which position t was collected
    newest_env_step: int                # env step of the newest stored transition


class _SumTree:
    """Binary sum tree over `size` leaves with vectorised updates and stratified sampling."""

    def __init__(self, size: int):
        self.leaves = 1 << max(1, (size - 1).bit_length())
        self.nodes = np.zeros(2 * self.leaves, np.float64)

    def set(self, indices: np.ndarray, values: np.ndarray) -> None:
        positions = np.asarray(indices, np.int64) + self.leaves
        self.nodes[positions] = values
        positions = np.unique(positions // 2)
        while positions[0] >= 1:
            self.nodes[positions] = self.nodes[2 * positions] + self.nodes[2 * positions + 1]
            if positions[0] == 1:
                break
            positions = np.unique(positions // 2)

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(indices, np.int64) + self.leaves]

    def max(self) -> float:
        return float(self.nodes[self.leaves:].max())

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """One leaf per equal segment of the total mass (stratified), proportional to value."""
        targets = (np.arange(count) + rng.random(count)) * (self.total / count)
        positions = np.ones(count, np.int64)
        while positions[0] < self.leaves:
            left = 2 * positions
            go_right = targets >= self.nodes[left]
            targets = np.where(go_right, targets - self.nodes[left], targets)
            positions = left + go_right
        leaves = positions - self.leaves
        # Rounding can land on an empty leaf at a segment border: step back to the nearest non-empty.
        empty = self.nodes[positions] <= 0
        if empty.any():
            valid = np.flatnonzero(self.nodes[self.leaves:] > 0)
            nearest = np.searchsorted(valid, leaves[empty]).clip(0, len(valid) - 1)
            leaves[empty] = valid[nearest]
        return leaves


class _FrameRing:
    """The ring's frames, one per slot: a dense [C, *frame] array, or with `frame_compression` > 0 one
    zlib blob per slot, decoded when gathered (each distinct slot once). Lossless either way."""

    def __init__(self, capacity: int, frame_shape: tuple, frame_dtype, compression: int):
        self.capacity, self.frame_shape, self.frame_dtype = capacity, frame_shape, frame_dtype
        self.compression = compression
        if compression:
            self.blobs: list[bytes | None] = [None] * capacity
        else:
            self.dense = np.zeros((capacity, *frame_shape), frame_dtype)        # [C, *frame]

    def put(self, slots: np.ndarray, frames: np.ndarray) -> None:
        """Store frames [len(slots), *frame] into `slots`."""
        if not self.compression:
            self.dense[slots] = frames
            return
        for slot, frame in zip(slots.tolist(), frames):
            self.blobs[slot] = zlib.compress(np.ascontiguousarray(frame).tobytes(), self.compression)

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """Frames [*slots.shape, *frame] of `slots` (any shape)."""
        if not self.compression:
            return self.dense[slots]
        distinct, inverse = np.unique(slots, return_inverse=True)
        frames = np.empty((len(distinct), *self.frame_shape), self.frame_dtype)
        flat = frames.reshape(len(distinct), -1).view(np.uint8)
        for row, slot in enumerate(distinct.tolist()):
            flat[row] = np.frombuffer(zlib.decompress(self.blobs[slot]), np.uint8)
        return frames[inverse.reshape(slots.shape)]

    def nbytes(self) -> int:
        if not self.compression:
            return self.dense.nbytes
        return sum(len(blob) for blob in self.blobs if blob is not None)

    def save(self, folder: str) -> None:
        """frames.npy: the dense array, or the blobs concatenated with frame-offsets.npy [C+1]."""
        offsets_file = os.path.join(folder, "frame-offsets.npy")
        if not self.compression:
            np.save(os.path.join(folder, "frames.npy"), self.dense, allow_pickle=False)
            if os.path.exists(offsets_file):
                os.remove(offsets_file)
            return
        sizes = [len(blob) if blob is not None else 0 for blob in self.blobs]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        data = np.frombuffer(b"".join(blob for blob in self.blobs if blob is not None), np.uint8)
        np.save(os.path.join(folder, "frames.npy"), data, allow_pickle=False)
        np.save(offsets_file, offsets, allow_pickle=False)

    def load(self, folder: str) -> None:
        """Read what `save` wrote, in either format, into this ring's format."""
        data = np.load(os.path.join(folder, "frames.npy"), allow_pickle=False)
        offsets_file = os.path.join(folder, "frame-offsets.npy")
        if not os.path.exists(offsets_file):                                  # saved dense
            if data.shape != (self.capacity, *self.frame_shape):
                raise ValueError(f"replay buffer file frames.npy has shape {data.shape}")
            self.put(np.arange(self.capacity), data.astype(self.frame_dtype, copy=False))
            return
        offsets = np.load(offsets_file, allow_pickle=False).tolist()
        if len(offsets) != self.capacity + 1:
            raise ValueError(f"replay buffer file frame-offsets.npy has {len(offsets)} entries")
        data = data.tobytes()
        blobs = [data[a:b] if b > a else None for a, b in zip(offsets[:-1], offsets[1:])]
        if self.compression:
            self.blobs = blobs
            return
        for slot, blob in enumerate(blobs):
            if blob is not None:
                self.dense[slot] = np.frombuffer(zlib.decompress(blob), self.frame_dtype).reshape(
                    self.frame_shape)


_ARRAY_FIELDS = ("actions", "rewards", "root_values", "policies", "collected_at",
                 "episode_start", "episode_length", "episode_terminated")


class ReplayBuffer:
    """Ring of frame slots with per-slot transition data and a priority sum tree."""

    def __init__(self, config: Config, frame_shape: tuple, frame_dtype, num_actions: int,
                 num_envs: int):
        capacity = config.replay_capacity
        self.config, self.capacity, self.num_actions = config, capacity, num_actions
        self.frame_shape, self.frame_dtype, self.num_envs = tuple(frame_shape), frame_dtype, num_envs
        self.frames = _FrameRing(capacity, self.frame_shape, frame_dtype, config.frame_compression)
        self.actions = np.zeros(capacity, np.int32)
        self.rewards = np.zeros(capacity, np.float32)
        self.root_values = np.zeros(capacity, np.float32)
        self.policies = np.zeros((capacity, num_actions), np.float32)
        self.collected_at = np.zeros(capacity, np.int64)
        self.episode_start = np.zeros(capacity, np.int64)     # absolute ordinal of o_0
        self.episode_length = np.zeros(capacity, np.int64)    # T
        self.episode_terminated = np.zeros(capacity, bool)
        self.priorities = _SumTree(capacity)
        self.head = 0                    # absolute ordinal of the next slot to write
        self.num_added = 0               # transitions ever stored
        self.newest_env_step = 0
        self._episodes: list[tuple[int, int]] = []          # (start ordinal, T), oldest first
        self._stored = 0                                      # transitions in stored episodes
        self._staged: list[dict | None] = [None] * num_envs

    # --- writing -------------------------------------------------------------------------------------

    def begin_episodes(self, env_ids: np.ndarray, first_frames: np.ndarray) -> None:
        """Start new episodes in `env_ids`; an episode still open there is stored as truncated."""
        for env, frame in zip(np.asarray(env_ids).tolist(), first_frames):
            if self._staged[env] is not None and self._staged[env]["actions"]:
                self._commit(env, terminated=False)
            self._staged[env] = {"frames": [np.array(frame, self.frame_dtype)], "actions": [],
                                 "rewards": [], "root_values": [], "policies": [],
                                 "collected_at": []}

    def add_step(self, actions, rewards, next_frames, terminated, truncated, root_values, policies,
                 env_step: int) -> None:
        """One lockstep step of every env ([N] arrays; policies [N, A])."""
        for env in range(self.num_envs):
            staged = self._staged[env]
            staged["frames"].append(np.array(next_frames[env], self.frame_dtype))
            staged["actions"].append(int(actions[env]))
            staged["rewards"].append(float(rewards[env]))
            staged["root_values"].append(float(root_values[env]))
            staged["policies"].append(np.asarray(policies[env], np.float32))
            staged["collected_at"].append(env_step + env)
            self.newest_env_step = max(self.newest_env_step, env_step + env)
            if terminated[env] or truncated[env]:
                self._commit(env, terminated=bool(terminated[env]))
                self._staged[env] = None

    def _commit(self, env: int, terminated: bool) -> None:
        staged = self._staged[env]
        length = len(staged["actions"])
        if length + 1 > self.capacity:
            raise ValueError(f"an episode of {length} steps does not fit in replay_capacity="
                             f"{self.capacity}")
        start = self.head
        self._evict_before(start + length + 1 - self.capacity)
        slots = np.arange(start, start + length + 1) % self.capacity
        self.frames.put(slots, np.stack(staged["frames"]))
        moves = slots[:-1]
        self.actions[moves] = staged["actions"]
        self.rewards[moves] = staged["rewards"]
        self.root_values[moves] = staged["root_values"]
        self.policies[moves] = np.stack(staged["policies"])
        self.collected_at[moves] = staged["collected_at"]
        self.episode_start[slots] = start
        self.episode_length[slots] = length
        self.episode_terminated[slots] = terminated
        self.priorities.set(moves, np.full(length, self.max_priority()))
        self.priorities.set(slots[-1:], np.zeros(1))
        self._episodes.append((start, length))
        self._stored += length
        self.head = start + length + 1
        self.num_added += length

    def _evict_before(self, ordinal: int) -> None:
        """Remove whole episodes that have a slot below `ordinal` (about to be overwritten)."""
        while self._episodes and self._episodes[0][0] < ordinal:
            start, length = self._episodes.pop(0)
            self._stored -= length
            self.priorities.set(np.arange(start, start + length + 1) % self.capacity,
                                np.zeros(length + 1))

    def __len__(self) -> int:
        return self._stored

    def max_priority(self) -> float:
        """The largest priority^α now in the buffer, 1 when it is empty (what new transitions get)."""
        return float(self.priorities.max()) if self._stored else 1.0

    def nbytes(self) -> int:
        stored = self.frames.nbytes() + sum(getattr(self, name).nbytes for name in _ARRAY_FIELDS)
        staged = sum(sum(f.nbytes for f in s["frames"]) for s in self._staged if s is not None)
        return stored + self.priorities.nodes.nbytes + staged

    # --- sampling -------------------------------------------------------------------------------------

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        config = self.config
        K, n, S = config.unroll_steps, config.td_steps, config.frame_stack
        positions = K + n + 1
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if config.use_priority:
            slots = self.priorities.sample(batch_size, rng)
            probabilities = self.priorities.get(slots) / self.priorities.total
            weights = (len(self) * probabilities) ** (-config.priority_beta)
            weights = np.clip(weights / weights.max(), config.priority_weight_min, 1.0)
            weights = weights.astype(np.float32)
        else:
            valid = np.flatnonzero(self.priorities.get(np.arange(self.capacity)) > 0)
            slots = rng.choice(valid, batch_size)
            weights = np.ones(batch_size, np.float32)
        start = self.episode_start[slots]
        length = self.episode_length[slots]                                  # T
        ordinal = self.head - 1 - ((self.head - 1 - slots) % self.capacity)  # absolute of slot
        offset = ordinal - start                                             # t within the episode
        steps = offset[:, None] + np.arange(positions)                      # [B, P] t+k
        # Single frames t-S+1 .. t+K+n, clamped into [0, T]; stacking them into observations is left
        # to the network's graph (networks.stack_frames), a 3x smaller host copy than stacked arrays.
        frame_offsets = offset[:, None] + np.arange(-S + 1, positions)
        frame_slots = (start[:, None] + np.clip(frame_offsets, 0, length[:, None])) % self.capacity
        frames = self.frames.gather(frame_slots)                             # [B, S-1+P, *frame]
        inside = steps < length[:, None]                                     # [B, P]
        move_slots = (start[:, None] + np.minimum(steps, length[:, None] - 1)) % self.capacity
        rewards = np.where(inside, self.rewards[move_slots], 0.0)            # [B, P]
        actions = np.where(inside[:, :K], self.actions[move_slots[:, :K]],
                           rng.integers(0, self.num_actions, (batch_size, K)))
        stored_policies = np.where(inside[:, :K + 1, None], self.policies[move_slots[:, :K + 1]],
                                   np.float32(1.0 / self.num_actions))
        reward_targets = value_prefix_targets(rewards[:, :K], config)
        terminated = self.episode_terminated[slots]                          # [B]
        td = td_pieces(rewards, offset, length, terminated, config)
        value_masks = inside[:, :K + 1] | (terminated[:, None] & (steps[:, :K + 1] == length[:, None]))
        return Batch(frames=frames, actions=actions.astype(np.int32),
                     reward_targets=reward_targets,
                     transition_masks=inside[:, :K + 1].astype(np.float32),
                     value_masks=value_masks.astype(np.float32), importance_weights=weights,
                     indices=slots.astype(np.int64),
                     stored_policies=stored_policies.astype(np.float32),
                     td_rewards=td.rewards, bootstrap_positions=td.bootstrap_positions,
                     bootstrap_discounts=td.bootstrap_discounts,
                     collected_at=self.collected_at[slots], newest_env_step=self.newest_env_step)

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        if not self.config.use_priority:
            return
        values = np.asarray(priorities, np.float64) ** self.config.priority_alpha
        self.priorities.set(indices, values)

    # --- persistence (no pickle) ----------------------------------------------------------------------

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.frames.save(folder)
        for name in _ARRAY_FIELDS:
            np.save(os.path.join(folder, f"{name}.npy"), getattr(self, name), allow_pickle=False)
        np.save(os.path.join(folder, "priorities.npy"), self.priorities.nodes, allow_pickle=False)
        staged = []
        for env, episode in enumerate(self._staged):
            if episode is None:
                staged.append(None)
                continue
            np.save(os.path.join(folder, f"staged-{env}-frames.npy"), np.stack(episode["frames"]),
                    allow_pickle=False)
            np.save(os.path.join(folder, f"staged-{env}-policies.npy"),
                    np.asarray(episode["policies"], np.float32).reshape(-1, self.num_actions),
                    allow_pickle=False)
            staged.append({key: episode[key] for key in ("actions", "rewards", "root_values",
                                                         "collected_at")})
        meta = {"capacity": self.capacity, "num_actions": self.num_actions,
                "frame_shape": list(self.frame_shape), "frame_dtype": np.dtype(self.frame_dtype).str,
                "num_envs": self.num_envs, "head": self.head, "num_added": self.num_added,
                "newest_env_step": self.newest_env_step,
                "episodes": self._episodes, "staged": staged}
        with open(os.path.join(folder, "buffer.json"), "w") as file:
            json.dump(meta, file)

    @classmethod
    def load(cls, folder: str, config: Config) -> "ReplayBuffer":
        try:
            with open(os.path.join(folder, "buffer.json")) as file:
                meta = json.load(file)
            buffer = cls(config, tuple(meta["frame_shape"]), np.dtype(meta["frame_dtype"]).type,
                         meta["num_actions"], meta["num_envs"])
            if meta["capacity"] != buffer.capacity:
                raise ValueError(f"the saved buffer has capacity {meta['capacity']}, the config "
                                 f"{buffer.capacity}")
            for name in _ARRAY_FIELDS:
                array = np.load(os.path.join(folder, f"{name}.npy"), allow_pickle=False)
                if array.shape != getattr(buffer, name).shape:
                    raise ValueError(f"replay buffer file {name}.npy has shape {array.shape}")
                setattr(buffer, name, array)
            buffer.priorities.nodes = np.load(os.path.join(folder, "priorities.npy"),
                                              allow_pickle=False)
            buffer.frames.load(folder)
            buffer.head, buffer.num_added = meta["head"], meta["num_added"]
            buffer.newest_env_step = meta["newest_env_step"]
            buffer._episodes = [tuple(e) for e in meta["episodes"]]
            buffer._stored = sum(length for _, length in buffer._episodes)
            for env, episode in enumerate(meta["staged"]):
                if episode is None:
                    continue
                frames = np.load(os.path.join(folder, f"staged-{env}-frames.npy"),
                                 allow_pickle=False)
                policies = np.load(os.path.join(folder, f"staged-{env}-policies.npy"),
                                   allow_pickle=False)
                buffer._staged[env] = {**episode, "frames": list(frames), "policies": list(policies)}
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise ValueError(f"cannot load the replay buffer in '{folder}': {error}") from None
        return buffer
