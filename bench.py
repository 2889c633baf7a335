"""Benchmarks of the pieces whose speed bounds training, and the projected cost of a full run.

Usage: `python bench.py [all|search|buffer|update|selfplay|memory|projection|minatar|classic|
continuous|ray|atari_cpu] [--mixed-precision]`
prints a table per section and merges the results into `bench-results.json` (keyed by section, so
sections can be re-run one at a time). With `--mixed-precision` the networks compute as `train.py
--set mixed_precision=true` would on this machine (bfloat16 on a CPU, float16 on a GPU) and the
results are stored under `<section>-mixed`. Each section is a function in `SECTIONS` returning a
dict of results. The numbers below are the benchmark's own settings, not training configuration
(that lives in config.py); the sections from `buffer` to `projection` use the full `atari100k`
settings and network on Breakout, `minatar` and `classic` their presets.

search: batched Gumbel MuZero search (mcts.py) with a trivially cheap NumPy `recurrent_fn` that
hands back precomputed random rewards, values and logits, so the measured time is the tree work
(selection, expansion bookkeeping, backup) plus a negligible model call. Reported as simulations per
second, B · num_simulations / seconds per search, best of SEARCH_REPEATS.

buffer: a ReplayBuffer filled to 100,000 transitions of 96x96x3 Breakout frames (a pool of frames
from random play, zlib-compressed as `frame_compression` = 1 stores them) through its public API
(4 lockstep envs), then `sample(256)` (prioritized sampling and every target but the network ones),
median of BUFFER_REPEATS; and one reanalysis of such a batch with the full network, split into
network time and tree time.

update: seconds per training update, batch 256, K=5: bare (`Learner.update` on a fixed batch) and
full (sampling + reanalysis + update), medians of UPDATE_REPEATS, with the tree share of reanalysis
search.

selfplay: env steps per second of lockstep self-play on Breakout (4 envs, 16 simulations), and the
tree share of the acting search time.

memory: peak resident memory of a separate process holding a Trainer (three networks, optimiser)
with a full 100,000-transition buffer after one sample, reanalysis and update.

projection: wall-clock hours of the whole Breakout 100K run on this machine, from the measured
parts: 100K env steps at the self-play rate, plus 120K full updates, plus 12 evaluations.

minatar: the `minatar` preset on MinAtar Breakout: self-play env steps/s and updates/s, each split
into network calls, tree, sampling and the rest, the update with reanalysis pipelined, and the
projected minutes of a 100K-step run (self-play plus updates; evaluations excluded).

classic: the same for the `classic` preset on CartPole-v1 (20,000 env steps).

continuous: the tree work of the sampled search (mcts_sampled.py) at B = 4 to 256, then the same
split and projection for the `pendulum`, `dmc_cpu` and `dmc` presets (the last the official DMC
settings, projected on this machine).

ray: reanalysis on W = 0..4 Ray actors for the `classic` and `minatar` presets: full and bare
update and Ray's own cost per batch; `projection` then adds an atari100k run's hours on 2 to 32
cores without a GPU, reanalysis on Ray actors.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS_FILE = "bench-results.json"

SEARCH_BATCH_SIZES = (4, 8, 256, 1536)   # acting (4, 8 envs) and reanalysis (B·(K+1) = 256·6) sizes
SEARCH_NUM_ACTIONS = 4                   # A
SEARCH_NUM_SIMULATIONS = 16              # n (EfficientZero V2 Atari)
SEARCH_NUM_CONSIDERED = 4                # m
SEARCH_REPEATS = 5                       # best of this many timed searches per batch size
SEARCH_MIN_SECONDS = 0.2                 # each repeat runs searches until this much time has passed


def bench_search() -> dict:
    """Simulations per second of `mcts.gumbel_search` at each batch size in SEARCH_BATCH_SIZES,
    with the tree-wide Q range of every preset ("tree") and mctx's per-node one ("node")."""
    from mcts import gumbel_search

    results = {}
    num_actions, num_simulations = SEARCH_NUM_ACTIONS, SEARCH_NUM_SIMULATIONS
    for batch, q_normalization in itertools.product(SEARCH_BATCH_SIZES, ("tree", "node")):
        rng = np.random.default_rng(0)
        rewards = rng.normal(size=(num_simulations, batch)).astype(np.float32)
        values = rng.normal(size=(num_simulations, batch)).astype(np.float32)
        logits = rng.normal(size=(num_simulations, batch, num_actions)).astype(np.float32)
        root_logits = rng.normal(size=(batch, num_actions)).astype(np.float32)
        root_value = rng.normal(size=batch).astype(np.float32)
        root_state = rng.normal(size=(batch, 8)).astype(np.float32)
        gumbel = rng.gumbel(size=(batch, num_actions)).astype(np.float32)
        counter = [0]

        def recurrent_fn(state, actions, counter=counter, rewards=rewards, values=values,
                         logits=logits):
            i = counter[0] % num_simulations
            counter[0] += 1
            return state, rewards[i], values[i], logits[i]

        search = functools.partial(gumbel_search, root_logits, root_value, root_state, recurrent_fn,
                                   num_simulations=num_simulations,
                                   max_num_considered_actions=SEARCH_NUM_CONSIDERED, gumbel=gumbel,
                                   discount=0.997, q_normalization=q_normalization)

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
        results[f"B={batch}, {q_normalization}"] = {"seconds_per_search": best,
                                 "sims_per_second": batch * num_simulations / best}
    results["settings"] = {"num_actions": SEARCH_NUM_ACTIONS,
                           "num_simulations": SEARCH_NUM_SIMULATIONS,
                           "max_num_considered_actions": SEARCH_NUM_CONSIDERED,
                           "recurrent_fn": "precomputed arrays (time included, negligible)"}
    return results


FULL_BUFFER_TRANSITIONS = 100_000     # a full Atari 100K buffer
FILL_EPISODE_LENGTH = 400             # env steps per synthetic episode when filling a buffer
FRAME_POOL = 256                      # distinct Breakout frames (random play) a full buffer reuses
BUFFER_BATCH_SIZE = 256
BUFFER_REPEATS = 10                   # timed samples (median reported)
UPDATE_FILL_TRANSITIONS = 4_000       # buffer content for the update benchmark
UPDATE_REPEATS = 3                    # timed updates per variant (median reported), after a warm-up
SELFPLAY_STEPS = 20                   # timed lockstep self-play steps (x 4 envs)
BREAKOUT_ENV_STEPS = 100_000          # the Atari 100K budget ...
BREAKOUT_UPDATES = 120_000            # ... 100K online + 20K offline updates
BREAKOUT_EVALUATIONS = 12             # every 10K updates and at the end
EVAL_GAME_STEPS = 2_000               # assumed env steps of one evaluation game, played 10 at once


MIXED_PRECISION_FLAG = "--mixed-precision"
mixed_precision = False               # set from the command line


def _atari_config():
    """The atari100k config, with the Keras dtype policy set as train.py would set it."""
    import dataclasses

    import config as config_module
    from learner import configure_tensorflow

    config = dataclasses.replace(config_module.atari100k(), mixed_precision=mixed_precision)
    configure_tensorflow(config)
    return config


def _section_key(name: str) -> str:
    return f"{name}-mixed" if mixed_precision else name


def _breakout_frames(config, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` single frames [count, *frame] of Breakout under random play (as the buffer stores
    them, so that frame compression sees real frames rather than incompressible noise)."""
    from envs import make_env

    env = make_env(config.env_id, seed=0, training=True, config=config)
    frame, _ = env.reset(seed=0)
    frames = [frame]
    while len(frames) < count:
        frame, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        frames.append(frame)
        if terminated or truncated:
            frames.append(env.reset()[0])
    env.close()
    return np.stack(frames[:count])


def _fill(buffer, transitions: int, rng: np.random.Generator) -> None:
    """Store `transitions` steps of Breakout frames (a reused pool) through the public API, envs in
    lockstep, with random actions, rewards and policies."""
    envs, num_actions = buffer.num_envs, buffer.num_actions
    frames = _breakout_frames(buffer.config, FRAME_POOL, rng)
    buffer.begin_episodes(np.arange(envs), frames[:envs])
    policies = np.full((envs, num_actions), 1.0 / num_actions, np.float32)
    for step in range(transitions // envs):
        ended = np.full(envs, (step + 1) % FILL_EPISODE_LENGTH == 0)
        buffer.add_step(rng.integers(0, num_actions, envs), rng.choice([0.0, 1.0], envs),
                        frames[rng.integers(0, len(frames), envs)], ended, np.zeros(envs, bool),
                        rng.normal(size=envs), policies, step * envs)
        if ended[0]:
            buffer.begin_episodes(np.arange(envs), frames[:envs])


def _atari_trainer(run_dir: str):
    from train import Trainer

    return Trainer(_atari_config(), run_dir, None)


def bench_buffer() -> dict:
    """Sampling + target assembly from a full 100K Atari buffer; reanalysis network vs tree time."""
    from buffer import ReplayBuffer
    from envs import env_spec
    from networks import EfficientZeroNet
    from targets import reanalyze

    config = _atari_config()
    spec = env_spec(config.env_id, config)
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(config, spec.frame_shape, spec.frame_dtype, spec.num_actions,
                          config.num_envs)
    _fill(buffer, FULL_BUFFER_TRANSITIONS + FILL_EPISODE_LENGTH * config.num_envs, rng)
    buffer.sample(BUFFER_BATCH_SIZE, rng)                               # warm-up
    seconds = []
    for _ in range(BUFFER_REPEATS):
        start = time.perf_counter()
        batch = buffer.sample(BUFFER_BATCH_SIZE, rng)
        seconds.append(time.perf_counter() - start)
    model = EfficientZeroNet(config, spec.observation_shape, spec.num_actions)
    reanalyze(batch, model, config=config, updates=0, rng=rng)       # traces the graphs
    start = time.perf_counter()
    targets = reanalyze(batch, model, config=config, updates=0, rng=rng)
    total = time.perf_counter() - start
    return {"sample": {"transitions": len(buffer), "batch_size": BUFFER_BATCH_SIZE,
                       "median_ms": 1000 * float(np.median(seconds)),
                       "min_ms": 1000 * float(np.min(seconds)),
                       "bytes_per_transition": buffer.nbytes() / buffer.capacity},
            "reanalysis": {"roots": BUFFER_BATCH_SIZE * (config.unroll_steps + 1),
                           "total_s": total, "network_s": targets.network_seconds,
                           "tree_s": targets.tree_seconds,
                           "tree_share": targets.tree_seconds / total}}


def _timed_full_updates(trainer, repeats: int) -> dict[str, list[float]]:
    """`repeats` full updates (sample, reanalyse with the target model, update), each timed in
    seconds: sample, reanalysis (reanalysis_network + reanalysis_tree), learner and total."""
    from targets import reanalyze

    config = trainer.config
    parts = {name: [] for name in ("sample", "reanalysis", "reanalysis_network", "reanalysis_tree",
                                   "learner", "total")}
    for i in range(repeats):
        start = time.perf_counter()
        batch = trainer.buffer.sample(config.batch_size, trainer.rng)
        sampled = time.perf_counter()
        targets = reanalyze(batch, trainer.target_model, config=config, updates=i, rng=trainer.rng)
        reanalysed = time.perf_counter()
        trainer.learner.update(batch, targets, i)
        done = time.perf_counter()
        parts["sample"].append(sampled - start)
        parts["reanalysis"].append(reanalysed - sampled)
        parts["reanalysis_network"].append(targets.network_seconds)
        parts["reanalysis_tree"].append(targets.tree_seconds)
        parts["learner"].append(done - reanalysed)
        parts["total"].append(done - start)
    return parts


def bench_update() -> dict:
    """Seconds per update (batch 256, K=5): bare, and with prioritized sampling + reanalysis."""
    from targets import reanalyze

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = _atari_trainer(run_dir)
        config = trainer.config
        _fill(trainer.buffer, UPDATE_FILL_TRANSITIONS, trainer.rng)
        batch = trainer.buffer.sample(config.batch_size, trainer.rng)
        targets = reanalyze(batch, trainer.target_model, config=config, updates=0,
                            rng=trainer.rng)
        trainer.learner.update(batch, targets, 0)                       # traces the update
        bare = []
        for i in range(UPDATE_REPEATS):
            start = time.perf_counter()
            trainer.learner.update(batch, targets, i + 1)
            bare.append(time.perf_counter() - start)
        timed = _timed_full_updates(trainer, UPDATE_REPEATS)
        full, sample, reanalysis = timed["total"], timed["sample"], timed["reanalysis"]
        network, tree = timed["reanalysis_network"], timed["reanalysis_tree"]
    median = lambda values: float(np.median(values))  # noqa: E731
    return {"bare": {"seconds": median(bare)},
            "full": {"seconds": median(full), "over_bare": median(full) / median(bare),
                     "sample_s": median(sample), "reanalysis_s": median(reanalysis),
                     "reanalysis_network_s": median(network), "reanalysis_tree_s": median(tree),
                     "reanalysis_tree_share": median(tree) / median(reanalysis)}}


def bench_selfplay() -> dict:
    """Env steps/s of lockstep self-play (4 envs, 16 simulations) and the tree share of acting."""
    from mcts import TimedModel, search_actions

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = _atari_trainer(run_dir)
        config = trainer.config
        trainer.start_games(list(range(config.num_envs)))
        trainer.selfplay_step()                                         # traces the inference
        start = time.perf_counter()
        search_seconds = sum(trainer.selfplay_step() for _ in range(SELFPLAY_STEPS))
        seconds = time.perf_counter() - start
        timed = TimedModel(trainer.selfplay_model)
        observations = trainer.players.stacker.observations()
        start = time.perf_counter()
        for _ in range(SELFPLAY_STEPS):
            search_actions(timed, observations, config.search_options(), trainer.rng,
                           config.gumbel_scale)
        acting = time.perf_counter() - start
    return {"selfplay": {"env_steps_per_second": SELFPLAY_STEPS * config.num_envs / seconds,
                         "search_share": search_seconds / seconds,
                         "acting_search_ms": 1000 * acting / SELFPLAY_STEPS,
                         "acting_tree_share": 1.0 - timed.seconds / acting}}


def _memory_process() -> None:
    """Run in a child process: a Trainer with a full buffer, one full update; print peak RSS."""
    import resource

    from targets import reanalyze

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = _atari_trainer(run_dir)
        config = trainer.config
        _fill(trainer.buffer, FULL_BUFFER_TRANSITIONS + FILL_EPISODE_LENGTH * config.num_envs,
              trainer.rng)
        batch = trainer.buffer.sample(config.batch_size, trainer.rng)
        targets = reanalyze(batch, trainer.target_model, config=config, updates=0,
                            rng=trainer.rng)
        trainer.learner.update(batch, targets, 0)
        transitions, buffer_bytes = len(trainer.buffer), trainer.buffer.nbytes()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # KiB on Linux
    print(json.dumps({"transitions": transitions, "buffer_gb": buffer_bytes / 1e9,
                      "peak_rss_gb": peak_kib * 1024 / 1e9}))


def bench_memory() -> dict:
    """Peak RSS of a fresh process holding a full 100K buffer through one full update."""
    flags = [MIXED_PRECISION_FLAG] if mixed_precision else []
    output = subprocess.run([sys.executable, os.path.abspath(__file__), "_memory_process", *flags],
                            check=True, capture_output=True, text=True).stdout
    return {"memory": json.loads(output.strip().splitlines()[-1])}


def bench_projection() -> dict:
    """Hours of the full Breakout 100K run on this machine, from the stored update/selfplay
    results; with the `ray` section stored too, on C cores without a GPU with reanalysis on Ray
    actors: the learner keeps LEARNER_CORES, each actor ACTOR_CORES (at this machine's speed per
    core), and an update takes max(sample + bare, reanalysis / W) + Ray's cost per batch (measured
    on MinAtar batches)."""
    stored = _load_results()
    missing = [name for name in ("update", "selfplay") if _section_key(name) not in stored]
    if missing:
        flags = f" {MIXED_PRECISION_FLAG}" if mixed_precision else ""
        raise SystemExit(f"projection needs measured sections first: python bench.py "
                         f"{' '.join(missing)}{flags}")
    selfplay = stored[_section_key("selfplay")]["selfplay"]
    env_steps_per_second, acting_ms = selfplay["env_steps_per_second"], selfplay["acting_search_ms"]
    update_seconds = stored[_section_key("update")]["full"]["seconds"]
    selfplay_hours = BREAKOUT_ENV_STEPS / env_steps_per_second / 3600
    update_hours = BREAKOUT_UPDATES * update_seconds / 3600
    eval_hours = BREAKOUT_EVALUATIONS * EVAL_GAME_STEPS * acting_ms / 1000 / 3600
    results = {"projection": {"selfplay_hours": selfplay_hours, "update_hours": update_hours,
                              "eval_hours": eval_hours,
                              "total_hours": selfplay_hours + update_hours + eval_hours,
                              "total_days": (selfplay_hours + update_hours + eval_hours) / 24}}
    if "ray" in stored:
        full = stored[_section_key("update")]["full"]
        bare = stored[_section_key("update")]["bare"]["seconds"]
        ray_seconds = stored["ray"]["minatar W=1"]["ray_ms_per_batch"] / 1000
        for cores in (2, 4, 8, 16, 32):
            actors = max(0, (cores - LEARNER_CORES) // ACTOR_CORES)
            update = (update_seconds if actors == 0 else
                      max(full["sample_s"] + bare, full["reanalysis_s"] / actors) + ray_seconds)
            results[f"ray {cores} cores"] = {
                "actors": actors, "seconds_per_update": update, "full_over_bare": update / bare,
                "hours": selfplay_hours + BREAKOUT_UPDATES * update / 3600 + eval_hours}
    return results


MINATAR_ENV = "MinAtar/Breakout-v1"
PRESET_SELFPLAY_STEPS = 60            # timed lockstep self-play steps (x num_envs env steps)
PRESET_UPDATES = 10                   # timed sequential full updates (medians reported)
PRESET_RUN_STEPS = 40                 # timed lockstep steps of the online loop, with their updates


def _online_ms_per_update(trainer) -> float:
    """ms per update of `Trainer.play_and_learn` (self-play steps with their due updates) over
    PRESET_RUN_STEPS lockstep steps, after the updates due since `start_transitions`."""
    trainer.play_and_learn()
    start, first_update = time.perf_counter(), trainer.updates
    for _ in range(PRESET_RUN_STEPS):
        trainer.play_and_learn()
    return 1000 * (time.perf_counter() - start) / (trainer.updates - first_update)


def _bench_preset(config, online_loop: bool = True) -> dict:
    """Self-play and updates of a CPU preset, each split into where the time goes, and the
    projected minutes of the whole run (evaluations excluded).

    Self-play: ms per lockstep step of all envs = network calls (the search's initial and recurrent
    inference) + tree (the rest of the search) + envs and buffer (the rest of the step). Update: ms
    = sampling + reanalysis network calls + reanalysis tree + the learner's compiled update, one
    after the other (medians). Run: `Trainer.play_and_learn`, the loop of a run's online phase
    (self-play steps with their due updates, reanalysis pipelined when the preset pipelines), in ms
    per update, self-play included; the projection uses it. Without `online_loop` (a preset whose
    loop would take too long to time) the run's ms per update is the sequential full update plus
    its share of self-play. The buffer is filled by self-play to `start_transitions` first (an
    untrained network, so real frames and episode ends)."""
    import dataclasses

    from learner import configure_tensorflow
    from mcts import TimedModel
    from targets import reanalyze
    from train import Trainer

    configure_tensorflow(config)
    # No evaluation or checkpoint inside the timed loop.
    config = dataclasses.replace(config, eval_interval=10**9, checkpoint_interval=10**9)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir, None)
        trainer.start_games(list(range(config.num_envs)))
        trainer.selfplay_step()                                         # traces the inference
        timed = TimedModel(trainer.selfplay_model)
        trainer.players.model = timed
        search = 0.0
        start = time.perf_counter()
        for _ in range(PRESET_SELFPLAY_STEPS):
            search += trainer.selfplay_step()
        selfplay, network = time.perf_counter() - start, timed.seconds
        trainer.players.model = timed.model           # updates refresh its weights
        while len(trainer.buffer) < config.start_transitions:
            trainer.selfplay_step()
        batch = trainer.buffer.sample(config.batch_size, trainer.rng)
        targets = reanalyze(batch, trainer.target_model, config=config, updates=0,
                            rng=trainer.rng)
        trainer.learner.update(batch, targets, 0)                       # traces the update
        parts = _timed_full_updates(trainer, PRESET_UPDATES)
        del parts["reanalysis"]                       # reported as its network and tree parts
        run_ms = _online_ms_per_update(trainer) if online_loop else None
        trainer.close()
    steps = PRESET_SELFPLAY_STEPS
    step_ms = 1000 * selfplay / steps
    update_ms = {name: 1000 * float(np.median(values)) for name, values in parts.items()}
    if run_ms is None:
        run_ms = update_ms["total"] + step_ms / (config.num_envs * config.updates_per_env_step)
    selfplay_minutes = config.start_transitions / (steps * config.num_envs / selfplay) / 60
    update_minutes = config.total_updates * run_ms / 1000 / 60
    return {"selfplay": {"env_steps_per_second":
                         steps * config.num_envs * config.steps_per_transition / selfplay,
                         "step_ms": step_ms, "network_ms": 1000 * network / steps,
                         "tree_ms": 1000 * (search - network) / steps,
                         "envs_and_buffer_ms": 1000 * (selfplay - search) / steps},
            "update": {f"{name}_ms": value for name, value in update_ms.items()},
            "run": {"pipelined": config.pipelined_reanalysis and online_loop,
                    "ms_per_update": run_ms,
                    "updates_per_second": 1000 / run_ms},
            "projection": {"env_steps": config.env_steps, "updates": config.total_updates,
                           "first_selfplay_minutes": selfplay_minutes,
                           "online_minutes": update_minutes,
                           "total_minutes": selfplay_minutes + update_minutes}}


def _graph_flops(function, *signature) -> int:
    """Floating-point operations of one call of `function` traced for `signature` (static shapes),
    counted by TensorFlow's profiler."""
    import tensorflow as tf

    graph = tf.function(function).get_concrete_function(*signature).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def preset_flops(config) -> dict:
    """What one update of `config` costs in floating-point operations (discrete actions): an
    initial and a recurrent inference per state, the learner's update (forward and backward, one
    batch), and from them a full update: the reanalysis of a batch plus the update plus its share
    of self-play searches."""
    import tensorflow as tf

    import envs
    from learner import Learner
    from networks import EfficientZeroNet
    from targets import initial_inferences_per_sample, searched_samples

    spec = envs.env_spec(config.env_id, config)
    net = EfficientZeroNet(config, spec.observation_shape, spec.num_actions)
    obs_dtype = tf.uint8 if net.is_image else tf.float32
    initial = _graph_flops(net.initial_graph,
                           tf.TensorSpec([1, *spec.observation_shape], obs_dtype))
    state = net.initial_inference(np.zeros((1, *spec.observation_shape),
                                           obs_dtype.as_numpy_dtype)).state
    state_spec = [tf.TensorSpec([1, *s.shape[1:]], s.dtype) for s in state]
    recurrent = _graph_flops(lambda *state: net.recurrent_graph(state[:-1], state[-1]),
                             *state_spec, tf.TensorSpec([1], tf.int32))
    learner = Learner(config, net, spec.observation_shape, spec.num_actions)
    learner_flops = _graph_flops(learner.gradients.python_function,
                                 *learner.gradients.input_signature)
    K, B = config.unroll_steps, config.batch_size
    # Reanalysis infers the bootstraps and the roots of the reanalysed share of the samples, and
    # searches those roots; a search makes num_simulations recurrent steps per root.
    reanalysis = (B * initial_inferences_per_sample(config) * initial
                  + config.num_simulations * searched_samples(config, B) * (K + 1) * recurrent)
    selfplay = (initial + config.num_simulations * recurrent) / config.updates_per_env_step
    return {"initial_mflop_per_state": initial / 1e6,
            "recurrent_mflop_per_state": recurrent / 1e6,
            "learner_gflop_per_update": learner_flops / 1e9,
            "reanalysis_gflop_per_update": reanalysis / 1e9,
            "selfplay_gflop_per_update": selfplay / 1e9,
            "total_gflop_per_update": (reanalysis + learner_flops + selfplay) / 1e9}


# One GPU, projected (docs/performance.md, "What the full Breakout 100K run costs"): a T4-class
# GPU sustains about 4 TFLOP/s in float32 on these small convolutions (40-60% of its 8.1 peak), and
# each network call costs about 1 ms of launch latency whatever its size; the tree, the sampling,
# the envs and the buffer stay on the host at this machine's speed.
GPU_FLOPS_PER_SECOND = 4e12
GPU_CALL_SECONDS = 1e-3


def _gpu_projection(config, measured: dict, flops: dict) -> dict:
    """Minutes of `config`'s whole run on one GPU: its FLOPs at GPU_FLOPS_PER_SECOND, a launch
    latency per network call, and the host's share measured here (`measured`: `_bench_preset`'s
    result): the trees, the sampling, the envs and the buffer."""
    from targets import initial_inference_calls

    updates = config.total_updates
    decisions = config.env_steps / (config.num_envs * config.steps_per_transition)
    calls = (decisions * (1 + config.num_simulations)              # self-play searches
             + updates * (initial_inference_calls(config)          # reanalysis
                          + config.num_simulations + 1))           # ... and the update
    network = (updates * flops["total_gflop_per_update"] * 1e9 / GPU_FLOPS_PER_SECOND
               + calls * GPU_CALL_SECONDS)
    selfplay, update = measured["selfplay"], measured["update"]
    host = (decisions * (selfplay["tree_ms"] + selfplay["envs_and_buffer_ms"])
            + updates * (update["sample_ms"] + update["reanalysis_tree_ms"])) / 1000
    return {"network_minutes": network / 60, "host_minutes": host / 60,
            "total_minutes": (network + host) / 60}


def bench_atari_cpu() -> dict:
    """Breakout 100K: the `atari_cpu` preset (`_bench_preset`) and the full `atari100k` settings
    (its split from sequential updates: its online loop alone would take half an hour), each
    projected on this CPU and on one GPU (`_gpu_projection`), with the FLOPs of an update
    (`preset_flops`). Both compute in bfloat16 where the preset says so (atari_cpu) or
    `--mixed-precision` asks."""
    import dataclasses

    import config as config_module

    results = {}
    for name, preset, online_loop in (
            ("atari_cpu", config_module.atari_cpu(), True),
            ("atari100k", dataclasses.replace(config_module.atari100k(),
                                              mixed_precision=mixed_precision), False)):
        measured = _bench_preset(preset, online_loop)
        flops = preset_flops(preset)
        parts = {**measured, "flops": flops,
                 "gpu_projection": _gpu_projection(preset, measured, flops)}
        results.update({f"{name} {part}": values for part, values in parts.items()})
    return results


def bench_minatar() -> dict:
    """The `minatar` preset on MinAtar Breakout (`_bench_preset`)."""
    import dataclasses

    import config as config_module

    return _bench_preset(dataclasses.replace(config_module.minatar(), env_id=MINATAR_ENV,
                                             mixed_precision=mixed_precision))


def bench_classic() -> dict:
    """The `classic` preset on CartPole-v1 (`_bench_preset`)."""
    import dataclasses

    import config as config_module

    return _bench_preset(dataclasses.replace(config_module.classic(),
                                             mixed_precision=mixed_precision))


SAMPLED_SEARCH_BATCH_SIZES = (4, 16, 64, 256)    # acting (4 envs) to reanalysis (dmc_cpu: 64·6)
SAMPLED_SEARCH_ACTION_DIMS = 6                   # walker's A
SAMPLED_SEARCH_SIMULATIONS = 32                  # the official DMC search: 32 simulations ...
SAMPLED_SEARCH_CANDIDATES = 16                   # ... over 4 + 12 candidates


def bench_continuous() -> dict:
    """The continuous path: simulations per second of `mcts_sampled.sampled_search`'s tree work
    (a precomputed NumPy `recurrent_fn`, as `search`), then `_bench_preset` of the `pendulum`,
    `dmc_cpu` (ball_in_cup-catch) and `dmc` (hopper-hop, the official settings) presets: self-play
    and update split, bare (learner) and full update, and each run's projected minutes."""
    import dataclasses

    import config as config_module
    from mcts_sampled import sampled_search

    results = {}
    n, K, A = SAMPLED_SEARCH_SIMULATIONS, SAMPLED_SEARCH_CANDIDATES, SAMPLED_SEARCH_ACTION_DIMS
    for batch in SAMPLED_SEARCH_BATCH_SIZES:
        rng = np.random.default_rng(0)
        rewards = rng.normal(size=(n, batch)).astype(np.float32)
        values = rng.normal(size=(n, batch)).astype(np.float32)
        children = rng.uniform(-1, 1, (n, batch, 2, A)).astype(np.float32)
        candidates = rng.uniform(-1, 1, (batch, K, A)).astype(np.float32)
        counter = [0]

        def recurrent_fn(state, actions, counter=counter, rewards=rewards, values=values,
                         children=children):
            i = counter[0] % n
            counter[0] += 1
            return state, rewards[i], values[i], children[i], None

        search = functools.partial(sampled_search, rng.normal(size=batch).astype(np.float32),
                                   rng.normal(size=(batch, 8)).astype(np.float32), candidates,
                                   recurrent_fn, num_simulations=n, discount=0.994009)
        search()                                                       # warm-up
        best = float("inf")
        for _ in range(SEARCH_REPEATS):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < SEARCH_MIN_SECONDS:
                search()
                count += 1
            best = min(best, (time.perf_counter() - start) / count)
        results[f"tree B={batch}"] = {"seconds_per_search": best,
                                      "sims_per_second": batch * n / best}
    for name in ("pendulum", "dmc_cpu", "dmc"):
        preset = dataclasses.replace(config_module.get_config(name),
                                     mixed_precision=mixed_precision)
        for part, values in _bench_preset(preset).items():
            results[f"{name} {part}"] = values
    return results


RAY_ACTOR_COUNTS = (0, 1, 2, 3, 4)     # W of `bench.py ray`
RAY_ROUND_TRIPS = 5                    # batches sent one at a time to time Ray's own cost
RAY_SELFPLAY_STEPS = 50                # timed lockstep decisions of `bench.py ray`'s self-play
LEARNER_CORES = 2                      # the projection's learner keeps this many cores...
ACTOR_CORES = 2                        # ...and gives each reanalysis actor this many


def _ray_round_trip_ms(config, trainer) -> float:
    """Ray's own cost per batch: the median time from `submit` to the targets in hand, minus the
    actor's time inside `targets.reanalyze`, for batches sent one at a time (W = 1)."""
    import dataclasses

    from ray_actors import RayReanalysisPool

    pool = RayReanalysisPool(dataclasses.replace(config, ray_reanalysis_actors=1), trainer.spec,
                             trainer.target_model.get_weights())
    overheads = []
    for k in range(RAY_ROUND_TRIPS + 1):                       # the first traces the actor's graphs
        batch = trainer.buffer.sample(config.batch_size, trainer.rng)
        start = time.perf_counter()
        targets = pool.submit(batch, k).result()
        overheads.append(time.perf_counter() - start - targets.network_seconds
                         - targets.tree_seconds)
    pool.close()
    return 1000 * float(np.median(overheads[1:]))


def _selfplay_env_steps_per_second(config, spec, weights: list) -> float:
    """Env steps/s of lockstep self-play (selfplay.py) over RAY_SELFPLAY_STEPS decisions, games
    restarted as they end: in this process, or on `ray_selfplay_actors` Ray actors."""
    from networks import build_network
    from ray_actors import RaySelfPlay
    from selfplay import LockstepGames

    seeds = list(range(config.num_envs))
    model = build_network(config, spec)
    model.set_weights(weights)
    if config.ray_selfplay_actors:
        players = RaySelfPlay(config, spec, seeds, model)
    else:
        rng = np.random.default_rng(0)
        players = LockstepGames(config, spec, model, 0, seeds, lambda decision: rng)
    players.start(seeds, seeds)
    start = 0.0
    for decision in range(RAY_SELFPLAY_STEPS + 1):
        if decision == 1:                      # the first step traces the search's networks
            start = time.perf_counter()
        step = players.step(decision)
        ended = np.flatnonzero(step.terminated | step.truncated).tolist()
        if ended:
            players.start(ended, [decision * config.num_envs + i for i in ended])
    seconds = time.perf_counter() - start
    players.close()
    return RAY_SELFPLAY_STEPS * config.num_envs * config.steps_per_transition / seconds


def bench_ray() -> dict:
    """Reanalysis on W Ray actors (`ray_reanalysis_actors`, ray_actors.py) for the `classic`
    (CartPole) and `minatar` (Breakout) presets: the full update (ms per update of the online loop,
    self-play included, as `_bench_preset`'s run) against the bare one (the learner alone) for
    W = 0 (the preset's own thread or process) to 4, and Ray's own cost per batch; and self-play's
    env steps/s on A = 0 (this process) to 4 self-play actors (`ray_selfplay_actors`)."""
    import dataclasses

    import config as config_module
    from learner import configure_tensorflow
    from ray_actors import import_ray, start_ray
    from targets import reanalyze
    from train import Trainer

    start_ray(num_cpus=max(os.cpu_count(), max(RAY_ACTOR_COUNTS)))
    results = {"machine": {"cores": os.cpu_count()}}
    presets = {"classic": dataclasses.replace(config_module.classic(), env_id="CartPole-v1"),
               "minatar": dataclasses.replace(config_module.minatar(), env_id=MINATAR_ENV)}
    for name, preset in presets.items():
        preset = dataclasses.replace(preset, mixed_precision=mixed_precision,
                                     eval_interval=10**9, checkpoint_interval=10**9)
        configure_tensorflow(preset)
        for actors in RAY_ACTOR_COUNTS:
            config = dataclasses.replace(preset, ray_reanalysis_actors=actors)
            with tempfile.TemporaryDirectory() as run_dir:
                trainer = Trainer(config, run_dir, None)
                trainer.start_games(list(range(config.num_envs)))
                while len(trainer.buffer) < config.start_transitions:
                    trainer.selfplay_step()
                batch = trainer.buffer.sample(config.batch_size, trainer.rng)
                trainer.learner.update(batch, reanalyze(batch, trainer.target_model,
                                                        config=config, updates=0, rng=trainer.rng),
                                       0)                                   # traces the update
                parts = _timed_full_updates(trainer, PRESET_UPDATES)   # bare: the learner part
                full_ms = _online_ms_per_update(trainer)
                bare_ms = 1000 * float(np.median(parts["learner"]))
                entry = {"full_ms": full_ms, "bare_ms": bare_ms,
                         "full_over_bare": full_ms / bare_ms}
                if actors == 1:
                    entry["ray_ms_per_batch"] = _ray_round_trip_ms(config, trainer)
                results[f"{name} W={actors}"] = entry
                weights = trainer.selfplay_model.get_weights()
                trainer.close()
        for actors in RAY_ACTOR_COUNTS:
            results[f"{name} A={actors}"] = {"env_steps_per_second": _selfplay_env_steps_per_second(
                dataclasses.replace(preset, ray_selfplay_actors=actors), trainer.spec, weights)}
    import_ray().shutdown()
    return results


SECTIONS = {"search": bench_search, "buffer": bench_buffer, "update": bench_update,
            "selfplay": bench_selfplay, "memory": bench_memory, "projection": bench_projection,
            "minatar": bench_minatar, "classic": bench_classic, "continuous": bench_continuous,
            "ray": bench_ray, "atari_cpu": bench_atari_cpu}


def _load_results() -> dict:
    if not os.path.exists(RESULTS_FILE):
        return {}
    with open(RESULTS_FILE) as f:
        return json.load(f)


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
    global mixed_precision
    mixed_precision = MIXED_PRECISION_FLAG in argv
    argv = [a for a in argv if a != MIXED_PRECISION_FLAG]
    if argv == ["_memory_process"]:
        _memory_process()
        return 0
    choices = argv or ["all"]
    unknown = [c for c in choices if c != "all" and c not in SECTIONS]
    if unknown:
        print(f"unknown section {unknown[0]!r}; choose from: all, {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    names = list(SECTIONS) if "all" in choices else choices
    for name in names:
        results = SECTIONS[name]()
        stored = _load_results()
        stored[_section_key(name)] = results
        with open(RESULTS_FILE, "w") as f:           # after each section: nothing lost on a crash
            json.dump(stored, f, indent=2, sort_keys=True)
        _print_table(_section_key(name), results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
