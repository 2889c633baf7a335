"""Config presets, JSON round trip, and one clear ValueError for each kind of bad input."""

import dataclasses

import pytest

import config as cfg


@pytest.mark.parametrize("name", sorted(cfg.PRESETS))
def test_presets_round_trip_through_json(name):
    config = cfg.get_config(name)
    assert cfg.Config.from_json(config.to_json()) == config


def test_atari100k_is_the_full_design():
    config = cfg.atari100k()
    assert (config.batch_size, config.num_simulations, config.unroll_steps, config.td_steps) == \
        (256, 16, 5, 5)
    assert config.value_prefix and config.use_priority and config.use_search_value
    assert not config.grayscale and config.normalization == "batch"
    assert config.total_updates == 98_000 + 20_000


def test_every_field_has_a_doc():
    for field in dataclasses.fields(cfg.Config):
        assert field.metadata["doc"], field.name


def test_overrides_are_parsed_by_type():
    config = cfg.apply_overrides(cfg.smoke(), ["batch_size=32", "discount=0.99",
                                               "value_prefix=false", "head_hidden_sizes=16,8",
                                               "env_id=Pong"])
    assert (config.batch_size, config.discount, config.value_prefix, config.head_hidden_sizes,
            config.env_id) == (32, 0.99, False, (16, 8), "Pong")


@pytest.mark.parametrize("override, message", [
    ("num_simulations=0", "'num_simulations' must be > 0"),
    ("learning_rate=-0.1", "'learning_rate' must be > 0"),
    ("discount=0", "'discount' must be in (0, 1]"),
    ("discount=1.01", "'discount' must be in (0, 1]"),
    ("batch_size=2.5", "'batch_size' must be an integer"),
    ("value_prefix=maybe", "'value_prefix' must be true or false"),
    ("learning_rate=fast", "'learning_rate' must be a number"),
    ("learning_rate=nan", "'learning_rate' must be of type float"),
    ("no_such_key=1", "unknown config key 'no_such_key'"),
    ("network=transformer", "'network' must be 'conv' or 'mlp'"),
    ("batch_size", "must look like key=value"),
])
def test_bad_overrides_raise_one_line_value_errors(override, message):
    with pytest.raises(ValueError) as error:
        cfg.apply_overrides(cfg.atari100k(), [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError,
                       match="unknown config preset .tiny.*atari100k, atari_cpu, smoke, classic"):
        cfg.get_config("tiny")


def test_json_with_unknown_key_or_wrong_type_is_refused():
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        cfg.Config.from_json('{"bogus": 1}')
    with pytest.raises(ValueError, match="'seed' must be of type int"):
        cfg.Config.from_json('{"seed": "zero"}')


def test_every_preset_computes_what_its_recorded_settings_say():
    """tests/presets.json holds every preset's settings: a change to a preset is a deliberate edit
    of both (recorded when the presets became deltas of atari100k, unchanged by that rewrite)."""
    import json
    import os

    with open(os.path.join(os.path.dirname(__file__), "presets.json")) as file:
        recorded = json.load(file)
    assert sorted(recorded) == sorted(cfg.PRESETS)
    for name, make in cfg.PRESETS.items():
        assert json.loads(make().to_json()) == recorded[name], name


def test_no_preset_keyword_restates_its_base():
    """Each preset is `dataclasses.replace(base(), key=value, ...)`: every value differs from the
    base's, so each line of a preset is a change."""
    import ast
    import inspect

    for name in list(cfg.PRESETS) + ["_vector_task", "_continuous_task"]:
        function = getattr(cfg, name)
        calls = [node for node in ast.walk(ast.parse(inspect.getsource(function)))
                 if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "replace"]
        if name == "atari100k":
            assert not calls
            continue
        (call,) = calls
        base = getattr(cfg, call.args[0].func.id)()
        for keyword in call.keywords:
            value = ast.literal_eval(keyword.value)
            assert value != getattr(base, keyword.arg), f"{name} restates {keyword.arg}={value!r}"


def test_fields_are_labelled_and_a_preset_lists_its_differences_from_the_paper():
    kinds = {f.name: f.metadata["kind"] for f in dataclasses.fields(cfg.Config)}
    assert set(kinds.values()) == {cfg.PAPER, cfg.SWITCH, cfg.SPEED}
    assert kinds["unroll_steps"] == cfg.PAPER and kinds["q_normalization"] == cfg.SWITCH
    assert kinds["xla_inference"] == cfg.SPEED
    assert cfg.differences_from_paper(cfg.atari100k()) == {}
    assert cfg.differences_from_paper(dataclasses.replace(cfg.atari100k(), seed=3,
                                                          td_steps=7)) == {"td_steps": 7}
    assert cfg.differences_from_paper(cfg.acrobot())["pipelined_reanalysis"] is False


def test_the_continuous_only_settings_are_fields_no_discrete_preset_changes():
    fields = {f.name: f.default for f in dataclasses.fields(cfg.Config)}
    assert set(cfg.CONTINUOUS_ONLY) <= set(fields)
    for make in cfg.PRESETS.values():
        preset = make()
        if preset.preset in cfg.CONTINUOUS_PRESETS:
            continue
        assert all(getattr(preset, name) == fields[name] for name in cfg.CONTINUOUS_ONLY)
