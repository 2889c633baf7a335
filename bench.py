"""Micro-benchmarks of the pieces whose speed bounds training throughput.

Usage: `python bench.py [all|search|...]` prints a table per section and merges the results into
`bench-results.json` (keyed by section, so sections can be re-run one at a time). Each section is a
function in `SECTIONS` returning a dict of results; other sections (buffer, update, selfplay, memory,
projection) register themselves there the same way. The numbers below are the benchmark's own
settings, not training configuration (that lives in config.py).

search: batched Gumbel MuZero search (mcts.py) with a trivially cheap NumPy `recurrent_fn` that hands
back precomputed random rewards, values and logits, so the measured time is the tree work (selection,
expansion bookkeeping, backup) plus a negligible model call. Reported as simulations per second,
B · num_simulations / seconds per search, best of SEARCH_REPEATS.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

RESULTS_FILE = "bench-results.json"

SEARCH_BATCH_SIZES = (4, 8, 256, 1536)   # acting (4, 8 envs) and reanalysis (B·(K+1) = 256·6) sizes
SEARCH_NUM_ACTIONS = 4                   # A
SEARCH_NUM_SIMULATIONS = 16              # n (EfficientZero V2 Atari)
SEARCH_NUM_CONSIDERED = 4                # m
SEARCH_REPEATS = 5                       # best of this many timed searches per batch size
SEARCH_MIN_SECONDS = 0.2                 # each repeat runs searches until this much time has passed


def bench_search() -> dict:
    """Simulations per second of `mcts.gumbel_search` at each batch size in SEARCH_BATCH_SIZES."""
    from mcts import gumbel_search

    results = {}
    for batch in SEARCH_BATCH_SIZES:
        rng = np.random.default_rng(0)
        num_actions, num_simulations = SEARCH_NUM_ACTIONS, SEARCH_NUM_SIMULATIONS
        rewards = rng.normal(size=(num_simulations, batch)).astype(np.float32)
        values = rng.normal(size=(num_simulations, batch)).astype(np.float32)
        logits = rng.normal(size=(num_simulations, batch, num_actions)).astype(np.float32)
        root_logits = rng.normal(size=(batch, num_actions)).astype(np.float32)
        root_value = rng.normal(size=batch).astype(np.float32)
        root_state = rng.normal(size=(batch, 8)).astype(np.float32)
        gumbel = rng.gumbel(size=(batch, num_actions)).astype(np.float32)
        counter = [0]

        def recurrent_fn(state, actions):
            i = counter[0] % num_simulations
            counter[0] += 1
            return state, rewards[i], values[i], logits[i]

        def search():
            return gumbel_search(root_logits, root_value, root_state, recurrent_fn,
                                 num_simulations=num_simulations,
                                 max_num_considered_actions=SEARCH_NUM_CONSIDERED, gumbel=gumbel,
                                 discount=0.997)

        search()                                                       # warm-up
        best = float("inf")
        for _ in range(SEARCH_REPEATS):
            count, start = 0, time.perf_counter()
            while True:
                search()
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= SEARCH_MIN_SECONDS:
                    break
            best = min(best, elapsed / count)
        results[f"B={batch}"] = {"seconds_per_search": best,
                                 "sims_per_second": batch * num_simulations / best}
    results["settings"] = {"num_actions": SEARCH_NUM_ACTIONS,
                           "num_simulations": SEARCH_NUM_SIMULATIONS,
                           "max_num_considered_actions": SEARCH_NUM_CONSIDERED,
                           "recurrent_fn": "precomputed arrays (time included, negligible)"}
    return results


SECTIONS = {"search": bench_search}


def _print_table(section: str, results: dict) -> None:
    print(f"== {section}")
    for key, value in results.items():
        if isinstance(value, dict):
            cells = ", ".join(f"{k}={v:,.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                              for k, v in value.items())
        else:
            cells = str(value)
        print(f"  {key:<12} {cells}")


def main(argv: list[str]) -> int:
    choice = argv[0] if argv else "all"
    if choice != "all" and choice not in SECTIONS:
        print(f"unknown section {choice!r}; choose one of: all, {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    names = list(SECTIONS) if choice == "all" else [choice]
    stored = {}
    if os.path.exists(RESULTS_FILE):
        with open(RESULTS_FILE) as f:
            stored = json.load(f)
    for name in names:
        stored[name] = SECTIONS[name]()
        _print_table(name, stored[name])
    with open(RESULTS_FILE, "w") as f:
        json.dump(stored, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
