import argparse

import pytest

from agent.config import add_flags, from_dict, resolve
from agent.pretrain import PretrainConfig


def parse(argv, cls=PretrainConfig):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_flags(p, cls)
    return p.parse_args(argv)


def test_defaults_then_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 123\nbatch_size: 64\nbc:\n  head: deterministic\n  lr: 0.001\n")
    cfg = resolve(PretrainConfig, parse(["--batch-size", "32", "--bc.hidden-dims", "64,64"]), str(path))
    assert cfg.steps == 123 and cfg.batch_size == 32
    assert cfg.bc.head == "deterministic" and cfg.bc.lr == 0.001 and cfg.bc.hidden_dims == [64, 64]
    assert cfg.seed == 0


@pytest.mark.parametrize("data, message", [
    ({"bc": {"lr": True}}, "'bc.lr' must be a number"),
    ({"steps": 1.5}, "'steps' must be an integer"),
    ({"algo": "ppo"}, "'algo' must be one of"),
    ({"stepz": 3}, "unknown config field"),
    ({"bc": {"hidden_dims": 256}}, "must be a list"),
])
def test_wrong_types_are_refused_with_the_field_name(data, message):
    with pytest.raises(ValueError, match=message):
        from_dict(PretrainConfig, data)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        resolve(PretrainConfig, parse([]), str(path))
