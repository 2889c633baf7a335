"""Does a CartPole checkpoint's value rank the cart's position, and is it pulled down by old games?

    python docs/probes/cartpole_value_by_position.py \
        --checkpoint runs/<run>/checkpoints/ckpt-00004875

Reads the replay buffer saved with a run's last checkpoint (only that one keeps it) and bins every
stored state o_t by when it was collected (quarters of the run) and by the cart's distance from the
centre |x|. For each bin it prints the network's value v(o_t) (initial inference, no search) beside
the discounted return the stored game actually earned from o_t on, Σ_{i≥t} γ^(i−t) u_i (cut at a
truncation). A value that grows with |x| would steer the cart off the track; a value far below the
return near the centre, where every game starts, is short-sighted there.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
from buffer import ReplayBuffer  # noqa: E402
from evaluate import load_model  # noqa: E402

DISTANCE_EDGES = (0.0, 0.25, 0.5, 1.0, 1.5, 2.4)     # |x| bins; CartPole fails beyond 2.4
PERIODS = 4                                           # collection-time bins (quarters of the run)
MIN_STATES = 20                                       # bins with fewer states are not printed
BATCH = 4096                                          # states per initial inference


def stored_states(buffer: ReplayBuffer, discount: float):
    """Every stored state of a game that has ended: observations [N, D], discounted return to its
    game's end [N], env step at which it was collected [N]."""
    observations, returns, collected = [], [], []
    for env in range(buffer.num_envs):
        ordinals = np.arange(max(0, buffer.heads[env] - buffer.region), buffer.heads[env])
        slots = buffer.slot_of(env, ordinals)
        game_end = buffer.episode_start[slots] + buffer.episode_length[slots]
        slots = slots[(buffer.episode_length[slots] >= 0) & (ordinals < game_end)]   # transitions
        to_go = np.zeros(len(slots))
        running = 0.0
        for i in range(len(slots) - 1, -1, -1):
            last_of_its_game = i == len(slots) - 1 or \
                buffer.episode_start[slots[i + 1]] != buffer.episode_start[slots[i]]
            running = buffer.rewards[slots[i]] + discount * (0.0 if last_of_its_game else running)
            to_go[i] = running
        observations.append(buffer.frames.gather(slots).reshape(len(slots), -1))
        returns.append(to_go)
        collected.append(buffer.collected_at[slots])
    return np.concatenate(observations), np.concatenate(returns), np.concatenate(collected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a run's last checkpoint folder (the one with a buffer/ folder)")
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(args.checkpoint)
    config = checkpoint.config
    model = load_model(checkpoint, config.env_id, config)
    buffer = ReplayBuffer.load(f"{checkpoint.path}/buffer", config)
    observations, returns, collected = stored_states(buffer, config.discount)
    values = np.concatenate([model.initial_inference(observations[i:i + BATCH]).value
                             for i in range(0, len(observations), BATCH)])
    distance = np.abs(observations[:, 0])
    bounds = np.linspace(0, config.env_steps, PERIODS + 1)
    print(f"{len(observations)} stored states; value v(o) vs the stored game's discounted return")
    for first, last in zip(bounds[:-1], bounds[1:]):
        period = (collected >= first) & (collected < last)
        print(f"collected at env steps {first:.0f}-{last:.0f}: {period.sum()} states")
        for low, high in zip(DISTANCE_EDGES[:-1], DISTANCE_EDGES[1:]):
            chosen = period & (distance >= low) & (distance < high)
            if chosen.sum() >= MIN_STATES:
                print(f"  |x| {low:.2f}-{high:.2f}: {chosen.sum():5d} states, value "
                      f"{values[chosen].mean():6.1f}, return {returns[chosen].mean():6.1f}")


if __name__ == "__main__":
    main()
