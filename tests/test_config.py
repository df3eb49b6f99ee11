import json

import pytest

from ppolab.config import (
    ConfigError, GenerationConfig, ModelConfig, PPOConfig, config_from_dict, config_to_dict, load_json, save_json,
)


@pytest.mark.parametrize("cls", [PPOConfig, ModelConfig, GenerationConfig])
def test_round_trip_through_json(cls, tmp_path):
    cfg = cls()
    save_json(cfg, tmp_path / "c.json")
    assert load_json(tmp_path / "c.json", cls) == cfg
    assert json.loads(json.dumps(config_to_dict(cfg))) == config_to_dict(cfg)


@pytest.mark.parametrize("cls,kwargs,field", [
    (PPOConfig, {"clip_eps": 0.0}, "clip_eps"),
    (PPOConfig, {"clip_eps": -1.0}, "clip_eps"),
    (PPOConfig, {"gamma": 1.5}, "gamma"),
    (PPOConfig, {"gamma": -0.1}, "gamma"),
    (PPOConfig, {"lam": 2.0}, "lam"),
    (PPOConfig, {"batch_size": 10, "minibatch_size": 4}, "batch_size"),
    (PPOConfig, {"minibatch_size": 4, "micro_batch_size": 3}, "minibatch_size"),
    (PPOConfig, {"kl_estimator": "k4"}, "kl_estimator"),
    (PPOConfig, {"lr": 0.0}, "lr"),
    (GenerationConfig, {"temperature": 0.0}, "temperature"),
    (GenerationConfig, {"top_p": 0.0}, "top_p"),
    (GenerationConfig, {"max_new_tokens": 0}, "max_new_tokens"),
    (ModelConfig, {"arch": "gpt9"}, "arch"),
    (ModelConfig, {"hidden_size": 30, "n_heads": 4}, "hidden_size"),
    (ModelConfig, {"load_in_4bit": True, "load_in_8bit": True}, "load_in_4bit"),
])
def test_validation_names_the_field(cls, kwargs, field):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field}"):
        cls(**kwargs).validate()


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="cliip_eps"):
        config_from_dict(PPOConfig, {"cliip_eps": 0.1})


def test_from_dict_validates():
    with pytest.raises(ConfigError, match="gamma"):
        config_from_dict(PPOConfig, {"gamma": 3})


def test_invalid_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n "lr": 1e-5,\n oops\n}')
    with pytest.raises(ConfigError, match=r"bad\.json:3"):
        load_json(p, PPOConfig)


def test_tuples_survive_round_trip():
    cfg = ModelConfig(lora_target_modules=("q_proj",))
    assert config_from_dict(ModelConfig, config_to_dict(cfg)).lora_target_modules == ("q_proj",)
