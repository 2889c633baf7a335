"""Scale-out on Ray (ray_actors.py): the reanalysis actors compute what `targets.reanalyze`
computes, runs with them are reproducible and resume exactly with batches in flight, and every
failure stops the run with one clear error instead of a hang.

One local Ray instance serves the whole file (Ray's `local_mode` is gone, so it is a real one)."""

import dataclasses
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_train import assert_one_line_usage_error, run_script

import checkpoints
import config as cfg

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    from ray_actors import start_ray

    assert start_ray(num_cpus=6)
    yield
    ray.shutdown()


def _trainer(folder, **changes):
    """A classic trainer with 120 transitions in its buffer and W = 2 Ray reanalysis actors."""
    import train

    config = dataclasses.replace(cfg.classic(), **{
        "env_steps": 400, "start_transitions": 120, "batch_size": 16, "num_simulations": 4,
        "log_interval": 1000, "eval_interval": 10_000, "checkpoint_interval": 10_000,
        "target_update_interval": 2, "ray_reanalysis_actors": 2, **changes})
    trainer = train.Trainer(config, str(folder), None)
    trainer.start_games(list(range(config.num_envs)))
    while len(trainer.buffer) < config.start_transitions:
        trainer.selfplay_step()
    return trainer


def _same_weights(first, second):
    return all(np.array_equal(a, b) for a, b in zip(first, second))


def test_the_actors_reanalyse_as_this_process_does_across_a_target_refresh(tmp_path):
    """Batches sent before a refresh are reanalysed with the old weights, the ones after with the
    new, each with the stream keyed by its batch number: bit for bit `targets.reanalyze` here."""
    from networks import build_network
    from ray_actors import RayReanalysisPool, batch_rng
    from targets import reanalyze

    trainer = _trainer(tmp_path, ray_reanalysis_actors=0)
    config = dataclasses.replace(trainer.config, ray_reanalysis_actors=2)
    old = trainer.target_model.get_weights()
    new = [w + np.float32(0.01) for w in old]
    pool = RayReanalysisPool(config, trainer.spec, old)
    batches = [trainer.buffer.sample(config.batch_size, trainer.rng) for _ in range(4)]
    pending = [pool.submit(batches[0], 0), pool.submit(batches[1], 1)]
    pool.set_weights(new)
    pending += [pool.submit(batches[2], 2), pool.submit(batches[3], 3)]
    model = build_network(config, trainer.spec)
    for k, (batch, targets) in enumerate(zip(batches, pending)):
        model.set_weights(old if k < 2 else new)
        expected = reanalyze(batch, model, config=config, updates=k,
                             rng=batch_rng(config.seed, k))
        got = targets.result()
        np.testing.assert_array_equal(got.values, expected.values)
        np.testing.assert_array_equal(got.policies, expected.policies)
        assert (got.sve_fraction, got.diagnostics) == (expected.sve_fraction,
                                                       expected.diagnostics)
    pool.close()
    assert ray.is_initialized()          # the pool joined this instance and leaves it running
    trainer.close()


def test_selfplay_actors_play_as_lockstep_games_here_do_with_their_streams(tmp_path):
    """Three envs on two actors (envs 0-1 and 2): each game start, step and weight refresh gives
    what selfplay.LockstepGames gives in this process for the same envs, weights and streams
    `selfplay_rng(seed, actor, decision)`, bit for bit; a step plays with the weights sent before
    it."""
    import envs
    from networks import build_network
    from ray_actors import RaySelfPlay, selfplay_rng
    from selfplay import LockstepGames, SelfPlayStep, concatenate_steps

    config = dataclasses.replace(cfg.classic(), num_envs=3, num_simulations=4,
                                 ray_selfplay_actors=2)
    spec = envs.env_spec(config.env_id, config)
    model = build_network(config, spec)
    old = model.get_weights()
    new = [w + np.float32(0.05) for w in old]
    seeds = [7, 8, 9]
    copy = build_network(config, spec)                  # the trainer's copy of the actors' model
    copy.set_weights(old)
    actors = RaySelfPlay(config, spec, seeds, copy)
    here = [LockstepGames(config, spec, model, 0, seeds[:2],
                          lambda decision: selfplay_rng(config.seed, 0, decision)),
            LockstepGames(config, spec, model, 2, seeds[2:],
                          lambda decision: selfplay_rng(config.seed, 1, decision))]

    def start_here(indices, game_seeds):
        frames = {}
        for games in here:
            mine = [(i, seed) for i, seed in zip(indices, game_seeds)
                    if games.first_env <= i < games.first_env + len(games.envs)]
            if mine:
                started = games.start([i for i, _ in mine], [seed for _, seed in mine])
                frames.update({i: frame for (i, _), frame in zip(mine, started)})
        return np.stack([frames[i] for i in indices])

    np.testing.assert_array_equal(actors.start([2, 0, 1], [9, 7, 8]),
                                  start_here([2, 0, 1], [9, 7, 8]))
    games = 0
    for decision in range(40):
        if decision == 20:
            actors.set_weights(new)
            model.set_weights(new)
            assert _same_weights(copy.get_weights(), new)
        got = actors.step(decision)
        expected = concatenate_steps([games.step(decision) for games in here])
        for name in SelfPlayStep._fields[:7]:
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), name)
        assert got.ended == expected.ended
        ended = np.flatnonzero(got.terminated | got.truncated).tolist()
        if ended:
            restart_seeds = [100 + games + i for i in ended]
            games += len(ended)
            np.testing.assert_array_equal(actors.start(ended, restart_seeds),
                                          start_here(ended, restart_seeds))
    assert games >= 2                     # CartPole games of an untrained net end within 40 steps
    actors.close()


def _metrics(run_dir) -> list[tuple]:
    """metrics.csv's rows as (updates, env_steps, key, value), wall times and timings left out,
    sorted (an evaluation actor's results are written when they arrive)."""
    with open(os.path.join(run_dir, "metrics.csv")) as file:
        rows = [line.strip().split(",") for line in file.readlines()[1:]]
    return sorted((u, e, key, value) for u, e, _, key, value in rows
                  if not key.startswith("perf/"))


def test_runs_with_actors_repeat_and_resume_exactly_with_batches_in_flight(tmp_path):
    """Two reanalysis actors with three batches in flight, the games on two self-play actors and
    an evaluation actor: two runs from the same seed log the same metrics and hold the same weights
    after the same steps and updates, and a run resumed from a checkpoint taken mid-way continues
    as the uninterrupted one does, to the last bit."""
    import train

    actors = {"ray_reanalysis_actors": 2, "ray_pipeline_depth": 3, "ray_selfplay_actors": 2,
              "ray_eval_actor": True, "eval_interval": 2, "eval_episodes": 2,
              "selfplay_update_interval": 1}

    def run(folder):
        trainer = _trainer(folder, **actors)
        for _ in range(3):
            trainer.selfplay_step()
            trainer.learn_once()
        assert len(trainer.pipeline.prepared) == 3
        checkpoint = checkpoints.load_checkpoint(trainer.save_checkpoint())
        assert not trainer.pipeline.prepared
        for _ in range(3):
            trainer.learn_once()
        trainer._record_evaluations(trainer.evaluator.drain())
        weights = trainer.online.get_weights(), trainer.target_model.get_weights()
        played = trainer.env_steps, trainer.games
        trainer.close()                                # frees its actors' CPUs
        return checkpoint, weights, played, _metrics(folder)

    checkpoint, (online, target), played, metrics = run(tmp_path / "first")
    _, (online_again, _), played_again, metrics_again = run(tmp_path / "second")
    assert [row[0] for row in metrics if row[2] == "eval/mean"] == ["2", "4", "6"]
    assert any(row[2] == "charts/episode_return" for row in metrics)
    assert metrics_again == metrics and played_again == played
    assert _same_weights(online_again, online)

    # Only updates follow, so the resumed run needs no self-play or evaluation actors.
    resumed = train.Trainer(dataclasses.replace(checkpoint.config, ray_selfplay_actors=0,
                                                ray_eval_actor=False),
                            str(tmp_path / "first"), checkpoint)
    assert resumed.updates == 3
    for _ in range(3):
        assert resumed.update_once()
    assert _same_weights(resumed.online.get_weights(), online)
    assert _same_weights(resumed.target_model.get_weights(), target)
    resumed.close()


def test_the_evaluation_actor_plays_as_this_process_and_a_checkpoint_keeps_it_in_flight(
        tmp_path):
    """An evaluation sent to the actor plays the games `evaluate.play_episodes` plays here, with
    the cap of an evaluation before the last (3 steps); the checkpoint taken at its update keeps
    it in flight, and the resumed run plays it again."""
    import train
    from evaluate import evaluation_config, play_episodes

    trainer = _trainer(tmp_path / "run", ray_reanalysis_actors=0, ray_eval_actor=True,
                       eval_episodes=2, interim_eval_max_episode_steps=3)
    assert trainer.update_once()
    trainer.evaluate()
    path = trainer.save_checkpoint()
    assert trainer.evaluator.pending == [(1, trainer.env_steps)]
    expected = play_episodes(trainer.online, evaluation_config(trainer.config, final=False),
                             trainer.config.env_id, 2,
                             seed=trainer.config.seed + train.EVAL_SEED_OFFSET)
    [evaluation] = trainer.evaluator.drain()
    assert evaluation.result == expected and evaluation.updates == 1
    assert evaluation.result.lengths == [3, 3]
    resumed = train.Trainer(trainer.config, str(tmp_path / "run"),
                            checkpoints.load_checkpoint(path))
    assert resumed.evaluator.pending == [(1, trainer.env_steps)]
    [again] = resumed.evaluator.drain()
    assert again.result == expected
    trainer.close()
    resumed.close()


def test_a_failing_actor_gives_its_traceback_and_a_dead_or_silent_one_a_clear_error(tmp_path):
    from ray_actors import RayReanalysisPool, ScaleOutError

    trainer = _trainer(tmp_path, ray_reanalysis_actors=0)
    config = dataclasses.replace(trainer.config, ray_reanalysis_actors=1)
    weights = trainer.target_model.get_weights()
    batch = trainer.buffer.sample(config.batch_size, trainer.rng)
    pool = RayReanalysisPool(config, trainer.spec, weights)
    with pytest.raises(ScaleOutError, match=r"actor failed while reanalysing batch 0:(.|\n)*"
                                            r"targets.py\", line \d+, in reanalyze(.|\n)*"
                                            r"AttributeError"):
        pool.submit(None, 0).result()
    assert pool.submit(batch, 1).result().values.shape[0] == config.batch_size   # still serving
    ray.kill(pool.actors[0])
    with pytest.raises(ScaleOutError, match="actor died while reanalysing batch 2"):
        pool.submit(batch, 2).result()
    pool.close()

    silent = RayReanalysisPool(config, trainer.spec, weights)
    silent.wait([], "receiving the first weights")       # then only the batch can time out
    silent.config = dataclasses.replace(config, ray_timeout_seconds=1e-3)   # a batch takes longer
    with pytest.raises(ScaleOutError, match=r"no answer .* in 0.001 s while reanalysing batch 0 "
                                            r"\(ray_timeout_seconds\)"):
        silent.submit(batch, 0).result()
    silent.close()
    with pytest.raises(ScaleOutError, match=r"1000 reanalysis actors of 1 CPUs need 1000 CPUs; "
                                            r"the Ray cluster has [0-6] free of 6"):
        RayReanalysisPool(dataclasses.replace(config, ray_reanalysis_actors=1000), trainer.spec,
                          weights)
    trainer.close()


def test_missing_ray_and_bad_ray_settings_exit_with_one_line(tmp_path, monkeypatch):
    from ray_actors import ScaleOutError, import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ScaleOutError, match="need Ray: pip install -r requirements.txt"):
        import_ray()
    for setting, expected in (
            ("ray_reanalysis_actors=-1", "'ray_reanalysis_actors' must be >= 0"),
            ("ray_actor_cpus=0", "'ray_actor_cpus' must be > 0"),
            ("ray_reanalysis_actors=1 --set pipelined_reanalysis=false",
             "'pipelined_reanalysis' must be true with ray_reanalysis_actors")):
        line = assert_one_line_usage_error(run_script(
            "train.py", "--config", "smoke", "--run-dir", str(tmp_path / "run"),
            *[part for item in setting.split(" --set ") for part in ("--set", item)]))
        assert expected in line, line


def test_a_silent_cluster_address_is_an_error_within_seconds(tmp_path, monkeypatch):
    """Ray would retry a silent head for minutes; the run stops at once with one line."""
    from ray_actors import ScaleOutError, answering_head

    port = _free_port()                                  # nothing listens there
    with pytest.raises(ScaleOutError, match=f"no Ray cluster answers at '127.0.0.1:{port}'"):
        answering_head(f"127.0.0.1:{port}")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ScaleOutError, match="no Ray cluster answers"):
        answering_head("auto")
    line = assert_one_line_usage_error(run_script(
        "train.py", "--config", "smoke", "--run-dir", str(tmp_path / "run"),
        "--set", "ray_eval_actor=true", "--set", f"ray_address=127.0.0.1:{port}"))
    assert "no Ray cluster answers" in line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_run_joins_a_cluster_started_by_ray_start(tmp_path):
    """`ray start --head` (a cluster of one node), then `train.py --set ray_address=...`: the run
    sends its reanalysis and evaluation actors there and ends with every evaluation recorded, and
    the cluster keeps running after it."""
    port = _free_port()
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [*ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=3",
         "--include-dashboard=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
        start_new_session=True)
    try:
        run_dir = tmp_path / "run"
        # The smoke run cut to 120 env steps (56 online and 8 offline updates) and two evaluations
        result = run_script("train.py", "--config", "smoke", "--run-dir", str(run_dir),
                            "--set", "env_steps=120", "--set", "eval_interval=32",
                            "--set", "ray_reanalysis_actors=2", "--set", "ray_eval_actor=true",
                            "--set", f"ray_address=127.0.0.1:{port}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert sorted(os.listdir(run_dir / "eval")) == ["eval-00000032.json",
                                                         "eval-00000064.json"]
        assert head.poll() is None
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
