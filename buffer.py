"""Prioritized replay: storage, sampling and what the targets need (EfficientZero V2,
arXiv 2403.00564; the targets themselves are built in targets.py).

Storage. Self-play runs `num_envs` envs in lockstep. The ring of `replay_capacity` frame slots is
split into one region of capacity // num_envs slots per env, and each env writes its games into its
own region while they are played: a game of T transitions takes T + 1 consecutive slots (modulo the
region) for its observations o_0..o_T, each a single frame stored once (zlib-compressed when
`frame_compression` > 0; o_T is not a transition start). The envs step in lockstep, so the regions
fill at one rate and each env's oldest data go first: writing a slot removes the position stored
there and the next S-1 positions of its game, whose stacked observations include that frame. A game
longer than its region therefore loses its oldest positions while it runs, never the ones still due.

Learning while games run (`replay_open_games`; the official code pushes trajectory blocks of 400
steps on Atari and 100 on DMC, each padded with the start of the next, for the same purpose). A
position t of a running game becomes sampleable as soon as every step its targets need is stored:
the K unroll steps, the n TD steps and the value prefix (within the K) up to o_{t+K+n}, and one more
transition, which shows that o_{t+K+n} is not the game's last observation. No end of the game can
then fall within t..t+K+n, so the position's targets, masks and priority are the ones it has after
the game ends. The game's other positions become sampleable when it ends. With `replay_open_games`
false a game's positions wait for its end, as whole-episode stores do.

Sampling. A sum tree over slots holds priority^α, 0 for a slot that is not (or no longer) a
sampleable position; a position that becomes sampleable gets the largest priority currently in the
buffer (1 when it is empty), as the official `ez/data/replay_buffer.py`. Importance weights
(N·P(i))^-β are normalised by the batch maximum and clipped to [`priority_weight_min`, 1]. For a
sampled position t the batch carries the single frames t-S+1..t+K+n (S = frame_stack, K =
unroll_steps, n = td_steps): frames before the game's start repeat its first frame, past its end its
final frame. The network stacks them, S frames along the last axis, oldest first, as
envs.FrameStacker does (networks.stack_frames, inside the graph). The batch also carries what the
targets need, with the official code's episode-end semantics (no loss of any kind after the last
real action):
- transition_masks[k] = 1 while t+k < T: position t+k has an action, a reward and an acting policy.
  The policy loss at k uses transition_masks[k]; unroll step k (which predicts o_{t+k} from
  a_{t+k-1}) is real while t+k-1 < T, so its value-prefix and consistency losses use
  transition_masks[k-1], and the step that predicts o_T is trained. Past the end actions are uniform
  random and rewards 0, all masked.
- value_masks[k] = 1 while t+k < T, and at t+k = T when the episode terminated: a terminal o_T is
  absorbing and its value target is 0; a truncated episode's o_T is an ordinary state that is never
  trained toward 0 (the TD targets before it bootstrap from v(o_T)).
- reward targets (targets.value_prefix_targets): with `value_prefix`, running sums of clipped
  rewards from t, restarting every `lstm_horizon_len`; without it, the per-step rewards;
- TD pieces (targets.td_pieces): z = Σ_{i<n} γ^i u_{t+k+i} + γ^n v(o_{t+k+n}); no bootstrap past a
  terminal; past a truncation the bootstrap is v(o_T) with γ^(T-t-k).
A running game's T is not known yet; its sampleable positions read nothing past t+K+n, so they are
assembled as if it had no end.
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
    actions: np.ndarray                 # [B, K] int32 actions at t..t+K-1, or [B, K, A] float32
                                        # continuous ones
    reward_targets: np.ndarray          # [B, K] value-prefix (or reward) targets of steps 1..K
    transition_masks: np.ndarray        # [B, K+1] 1 where t+k < T (an action, a reward, a policy)
    value_masks: np.ndarray             # [B, K+1] 1 where t+k < T, or t+k = T of a terminal game
    importance_weights: np.ndarray      # [B] float32, max 1
    indices: np.ndarray                 # [B] int64 slots, for update_priorities
    stored_policies: np.ndarray         # [B, K+1, A] the acting search's policies (uniform past
                                        # end); [B, K+1, 0] for continuous actions
    td_rewards: np.ndarray              # [B, K+1] Σ_{i<n} γ^i u_{t+k+i} (0 past the end)
    bootstrap_positions: np.ndarray     # [B, K+1] int index into the K+n+1 positions
    bootstrap_discounts: np.ndarray     # [B, K+1] γ^steps, 0 where there is no bootstrap
    collected_at: np.ndarray            # [B] env step at which position t was collected (unique: it
                                        # also tells update_priorities the position is still there)
    newest_env_step: int                # env step of the newest stored transition


class _SumTree:
    """Binary sum tree over `size` leaves with vectorised updates and stratified sampling."""

    def __init__(self, size: int):
        self.leaves = 1 << max(1, (size - 1).bit_length())
        self.nodes = np.zeros(2 * self.leaves, np.float64)

    def set(self, indices: np.ndarray, values: np.ndarray) -> None:
        positions = np.asarray(indices, np.int64) + self.leaves
        if positions.size == 0:
            return
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
        # Rounding can land on an empty leaf at a segment border: take the nearest non-empty one.
        empty = self.nodes[positions] <= 0
        if empty.any():
            valid = np.flatnonzero(self.nodes[self.leaves:] > 0)
            nearest = np.searchsorted(valid, leaves[empty]).clip(0, len(valid) - 1)
            leaves[empty] = valid[nearest]
        return leaves


class _FrameRing:
    """The ring's frames, one per slot: a dense [C, *frame] array, or with `frame_compression` > 0
    one zlib blob per slot, decoded when gathered (each distinct slot once). Lossless either way."""

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
            self.blobs[slot] = zlib.compress(np.ascontiguousarray(frame).tobytes(),
                                             self.compression)

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
_RUNNING = -1                                  # episode_length of a game still being played
_NO_END = np.iinfo(np.int64).max // 4          # the length a running game's positions are read with


class ReplayBuffer:
    """One ring region per env, per-slot transition data and a priority sum tree over all slots.

    Positions are addressed by slot; within an env's region, by ordinal (the count of frames the env
    wrote before it), slot = env * region + ordinal % region.

    Continuous actions (`action_dims` A > 0) are stored as [A] float32 vectors, and no acting
    policy: the search's improved policy is over candidates that are not stored, so every sample
    is reanalysed (as in the official code); past a game's end actions are zeros (as there)."""

    def __init__(self, config: Config, frame_shape: tuple, frame_dtype, num_actions: int,
                 num_envs: int, action_dims: int = 0):
        capacity = config.replay_capacity
        region = capacity // num_envs
        needed = config.frame_stack + config.unroll_steps + config.td_steps + 1
        if region < needed:
            raise ValueError(f"replay_capacity={capacity} gives each of the {num_envs} envs "
                             f"{region} slots; a position needs {needed} (frame_stack + "
                             f"unroll_steps + td_steps + 1)")
        self.config, self.capacity, self.region = config, capacity, region
        self.num_actions, self.num_envs, self.action_dims = num_actions, num_envs, action_dims
        self.frame_shape, self.frame_dtype = tuple(frame_shape), frame_dtype
        self.frames = _FrameRing(capacity, self.frame_shape, frame_dtype, config.frame_compression)
        self.actions = (np.zeros((capacity, action_dims), np.float32) if action_dims
                        else np.zeros(capacity, np.int32))
        self.rewards = np.zeros(capacity, np.float32)
        self.root_values = np.zeros(capacity, np.float32)
        self.policies = np.zeros((capacity, 0 if action_dims else num_actions), np.float32)
        self.collected_at = np.zeros(capacity, np.int64)
        self.episode_start = np.zeros(capacity, np.int64)     # ordinal of the game's o_0
        self.episode_length = np.zeros(capacity, np.int64)    # T, or _RUNNING
        self.episode_terminated = np.zeros(capacity, bool)
        self.priorities = _SumTree(capacity)
        self.heads = np.zeros(num_envs, np.int64)             # [N] ordinal of the next frame
        self.game_start = np.full(num_envs, -1, np.int64)     # [N] running game's o_0; -1: none
        self.next_position = np.zeros(num_envs, np.int64)     # [N] first ordinal not yet
                                                              # sampleable
        self.num_added = 0               # transitions ever stored
        self.newest_env_step = 0
        self._sampleable = 0

    def slot_of(self, env_ids: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
        return env_ids * self.region + ordinals % self.region

    # --- writing ----------------------------------------------------------------------------------

    def begin_episodes(self, env_ids: np.ndarray, first_frames: np.ndarray) -> None:
        """Start games in `env_ids` [M] from their first frames [M, *frame]. A game still running
        there ends as truncated (a resumed run restarts its envs); one without a step is
        replaced."""
        env_ids = np.asarray(env_ids, np.int64)
        for env in env_ids.tolist():
            if self.game_start[env] < 0:
                continue
            if self.heads[env] - 1 > self.game_start[env]:
                self._end_games(np.array([env]), np.array([False]))
            else:
                self.heads[env] -= 1
                self.game_start[env] = -1
        ordinals = self.heads[env_ids].copy()
        slots = self._write_frames(env_ids, first_frames)
        self._open_slots(slots, ordinals)
        self.game_start[env_ids] = ordinals
        self.next_position[env_ids] = ordinals

    def add_step(self, actions, rewards, next_frames, terminated, truncated, root_values, policies,
                 env_step: int) -> None:
        """One lockstep step of every env ([N] arrays; actions [N, A] if continuous; policies
        [N, A], [N, 0] if continuous; next_frames [N, *frame]): the transition from each env's
        newest observation and the observation it led to."""
        if (self.game_start < 0).any():
            raise ValueError("add_step for an env whose game has not begun (begin_episodes)")
        every = np.arange(self.num_envs)
        moves = self.slot_of(every, self.heads - 1)
        self.actions[moves] = actions
        self.rewards[moves] = rewards
        self.root_values[moves] = root_values
        self.policies[moves] = policies
        self.collected_at[moves] = env_step + every
        self.newest_env_step = max(self.newest_env_step, env_step + self.num_envs - 1)
        self.num_added += self.num_envs
        slots = self._write_frames(every, next_frames)
        self._open_slots(slots, self.game_start)
        ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        if ended.any():
            self._end_games(np.flatnonzero(ended), np.asarray(terminated, bool)[ended])
        if self.config.replay_open_games:
            running = np.flatnonzero(~ended)
            # Position p is due once its game has a transition past o_{p+K+n}:
            # p + K + n < heads - 1.
            horizon = self.config.unroll_steps + self.config.td_steps
            self._enable(running, self.heads[running] - 1 - horizon)

    def _open_slots(self, slots: np.ndarray, game_starts: np.ndarray) -> None:
        self.episode_start[slots] = game_starts
        self.episode_length[slots] = _RUNNING
        self.episode_terminated[slots] = False

    def _write_frames(self, env_ids: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Write one frame per env at its head, after removing the positions that need the frame
        it overwrites; returns the slots written."""
        self._forget(env_ids, self.heads[env_ids] - self.region)
        slots = self.slot_of(env_ids, self.heads[env_ids])
        self.frames.put(slots, np.asarray(frames, self.frame_dtype))
        self.heads[env_ids] += 1
        return slots

    def _forget(self, env_ids: np.ndarray, overwritten: np.ndarray) -> None:
        """Positions whose frames include ordinal `overwritten` of their env leave: that one and
        the next S-1 of its game (the earlier ones left when their own frames were overwritten)."""
        written = overwritten >= 0
        env_ids, overwritten = env_ids[written], overwritten[written]
        if len(env_ids) == 0:
            return
        slots = self.slot_of(env_ids[:, None], overwritten[:, None] +
                            np.arange(self.config.frame_stack))                     # [M, S]
        same_game = self.episode_start[slots] == self.episode_start[slots[:, :1]]
        self._disable(slots[same_game])

    def _disable(self, slots: np.ndarray) -> None:
        self._sampleable -= int(np.count_nonzero(self.priorities.get(slots) > 0))
        self.priorities.set(slots, np.zeros(len(slots)))

    def _enable(self, env_ids: np.ndarray, stops: np.ndarray) -> None:
        """Positions next_position..stop-1 of each env's game become sampleable, at the current
        largest priority, but for any whose oldest frame has already been overwritten."""
        first = self.next_position[env_ids]
        counts = np.maximum(stops - first, 0)
        if counts.sum() == 0:
            return
        envs = np.repeat(env_ids, counts)
        ordinals = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        oldest_frame = np.maximum(ordinals - self.config.frame_stack + 1, self.game_start[envs])
        intact = oldest_frame >= self.heads[envs] - self.region
        slots = self.slot_of(envs[intact], ordinals[intact])
        self.priorities.set(slots, np.full(len(slots), self.max_priority()))
        self._sampleable += len(slots)
        self.next_position[env_ids] = np.maximum(first, stops)

    def _end_games(self, env_ids: np.ndarray, terminated: np.ndarray) -> None:
        """The running games of `env_ids` [M] end (`terminated` [M], else truncated): their length
        is recorded on every slot still stored and their remaining positions become sampleable."""
        starts = self.game_start[env_ids]
        lengths = self.heads[env_ids] - 1 - starts                                   # T
        for env, start, length, ended_by_terminal in zip(env_ids.tolist(), starts.tolist(),
                                                         lengths.tolist(), terminated.tolist()):
            oldest = max(start, int(self.heads[env]) - self.region)
            slots = self.slot_of(env, np.arange(oldest, start + length + 1))
            self.episode_length[slots] = length
            self.episode_terminated[slots] = ended_by_terminal
        self._enable(env_ids, starts + lengths)
        self.game_start[env_ids] = -1

    def __len__(self) -> int:
        """The number of sampleable positions."""
        return self._sampleable

    def max_priority(self) -> float:
        """The largest priority^α now in the buffer, 1 when it is empty (what new positions get)."""
        return float(self.priorities.max()) if self._sampleable else 1.0

    def nbytes(self) -> int:
        arrays = sum(getattr(self, name).nbytes for name in _ARRAY_FIELDS)
        return self.frames.nbytes() + arrays + self.priorities.nodes.nbytes

    # --- sampling ---------------------------------------------------------------------------------

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        config = self.config
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
        return self.batch_at(slots, weights, rng)

    def batch_at(self, slots: np.ndarray, importance_weights: np.ndarray,
                 rng: np.random.Generator) -> Batch:
        """The batch of the sampleable positions in `slots` [B] with their importance weights [B];
        `rng` draws the uniform random actions that stand past a game's end."""
        config = self.config
        K, n, S = config.unroll_steps, config.td_steps, config.frame_stack
        positions = K + n + 1
        batch_size = len(slots)
        env = slots // self.region
        start = self.episode_start[slots]
        length = self.episode_length[slots]                                  # T
        length = np.where(length == _RUNNING, _NO_END, length)
        newest = self.heads[env] - 1
        ordinal = newest - (newest - slots) % self.region                    # of the slot
        offset = ordinal - start                                             # t within the game
        steps = offset[:, None] + np.arange(positions)                      # [B, P] t+k
        # Single frames t-S+1 .. t+K+n, clamped into [0, T]; stacking them into observations is left
        # to the network's graph (networks.stack_frames): a host copy 3x smaller than stacked ones.
        frame_offsets = offset[:, None] + np.arange(-S + 1, positions)
        frame_slots = self.slot_of(env[:, None],
                                  start[:, None] + np.clip(frame_offsets, 0, length[:, None]))
        frames = self.frames.gather(frame_slots)                             # [B, S-1+P, *frame]
        inside = steps < length[:, None]                                     # [B, P]
        move_slots = self.slot_of(env[:, None],
                                 start[:, None] + np.minimum(steps, length[:, None] - 1))
        rewards = np.where(inside, self.rewards[move_slots], 0.0)            # [B, P]
        if self.action_dims:
            actions = np.where(inside[:, :K, None], self.actions[move_slots[:, :K]], 0.0)
            stored_policies = self.policies[move_slots[:, :K + 1]]          # [B, K+1, 0]
        else:
            actions = np.where(inside[:, :K], self.actions[move_slots[:, :K]],
                               rng.integers(0, self.num_actions, (batch_size, K)))
            stored_policies = np.where(inside[:, :K + 1, None],
                                       self.policies[move_slots[:, :K + 1]],
                                       np.float32(1.0 / self.num_actions))
        reward_targets = value_prefix_targets(rewards[:, :K], config)
        terminated = self.episode_terminated[slots]                          # [B]
        td = td_pieces(rewards, offset, length, terminated, config)
        value_masks = (inside[:, :K + 1]
                       | (terminated[:, None] & (steps[:, :K + 1] == length[:, None])))
        return Batch(frames=frames, actions=actions.astype(self.actions.dtype),
                     reward_targets=reward_targets,
                     transition_masks=inside[:, :K + 1].astype(np.float32),
                     value_masks=value_masks.astype(np.float32),
                     importance_weights=np.asarray(importance_weights, np.float32),
                     indices=np.asarray(slots, np.int64),
                     stored_policies=stored_policies.astype(np.float32),
                     td_rewards=td.rewards, bootstrap_positions=td.bootstrap_positions,
                     bootstrap_discounts=td.bootstrap_discounts,
                     collected_at=self.collected_at[slots], newest_env_step=self.newest_env_step)

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray,
                          collected_at: np.ndarray) -> None:
        """New priorities [B] for the positions of a batch (`indices` and `collected_at` as the
        batch carries them), but for those that left the buffer since the batch was drawn."""
        if not self.config.use_priority:
            return
        indices = np.asarray(indices, np.int64)
        still_there = ((self.collected_at[indices] == collected_at)
                       & (self.priorities.get(indices) > 0))
        values = np.asarray(priorities, np.float64) ** self.config.priority_alpha
        self.priorities.set(indices[still_there], values[still_there])

    # --- persistence (no pickle) ------------------------------------------------------------------

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.frames.save(folder)
        for name in _ARRAY_FIELDS + ("heads", "game_start", "next_position"):
            np.save(os.path.join(folder, f"{name}.npy"), getattr(self, name), allow_pickle=False)
        np.save(os.path.join(folder, "priorities.npy"), self.priorities.nodes, allow_pickle=False)
        meta = {"capacity": self.capacity, "num_actions": self.num_actions,
                "action_dims": self.action_dims,
                "frame_shape": list(self.frame_shape),
                "frame_dtype": np.dtype(self.frame_dtype).str,
                "num_envs": self.num_envs, "num_added": self.num_added,
                "newest_env_step": self.newest_env_step}
        with open(os.path.join(folder, "buffer.json"), "w") as file:
            json.dump(meta, file)

    @classmethod
    def load(cls, folder: str, config: Config) -> "ReplayBuffer":
        try:
            with open(os.path.join(folder, "buffer.json")) as file:
                meta = json.load(file)
            if "staged" in meta:
                raise ValueError("it was saved by a version that stored whole games only, whose "
                                 "layout this version cannot read")
            buffer = cls(config, tuple(meta["frame_shape"]), np.dtype(meta["frame_dtype"]).type,
                         meta["num_actions"], meta["num_envs"], meta.get("action_dims", 0))
            if meta["capacity"] != buffer.capacity:
                raise ValueError(f"the saved buffer has capacity {meta['capacity']}, the config "
                                 f"{buffer.capacity}")
            for name in _ARRAY_FIELDS + ("heads", "game_start", "next_position"):
                array = np.load(os.path.join(folder, f"{name}.npy"), allow_pickle=False)
                if array.shape != getattr(buffer, name).shape:
                    raise ValueError(f"replay buffer file {name}.npy has shape {array.shape}")
                setattr(buffer, name, array)
            buffer.priorities.nodes = np.load(os.path.join(folder, "priorities.npy"),
                                              allow_pickle=False)
            buffer.frames.load(folder)
            buffer.num_added, buffer.newest_env_step = meta["num_added"], meta["newest_env_step"]
            buffer._sampleable = int(np.count_nonzero(buffer.priorities.get(
                np.arange(buffer.capacity)) > 0))
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise ValueError(f"cannot load the replay buffer in '{folder}': {error}") from None
        return buffer
