import argparse
import dataclasses
import typing

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


# -- declared ranges ---------------------------------------------------------------------
def _config_classes():
    """Every config dataclass the CLI reads, with the sections nested in it, by name."""
    from agent.cli import build_parser
    from agent.config import CONFIG_CLASS

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    todo = [p.get_default(CONFIG_CLASS) for p in commands.values() if p.get_default(CONFIG_CLASS)]
    seen: dict[str, type] = {}
    while todo:
        cls = todo.pop()
        seen[cls.__qualname__] = cls
        todo += [t for t in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(t) and t.__qualname__ not in seen]
    return seen


def test_every_numeric_field_the_cli_reads_declares_a_range():
    classes = _config_classes()
    assert {"PretrainConfig", "FinetuneConfig", "CollectConfig", "EvalConfig", "AugmentConfig", "BCConfig",
            "WSRLConfig", "H2OConfig"} <= set(classes)
    numeric = {int, float}
    missing = []
    for name, cls in classes.items():
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            inner = set(typing.get_args(tp)) or {tp}  # int | None, list[float], plain int
            if inner & numeric and "range" not in f.metadata:
                missing.append(f"{name}.{f.name}")
            if f.name == "device" and "pattern" not in f.metadata:
                missing.append(f"{name}.{f.name} (no pattern)")
    assert not missing, f"declare a range (or unbounded=True) on: {', '.join(missing)}"


@pytest.mark.parametrize("data, message", [
    ({"batch_size": 0}, "config field 'batch_size' must be at least 1, got 0."),
    ({"steps": -5}, "config field 'steps' must be at least 1, got -5."),
    ({"log_every": 0}, "config field 'log_every' must be at least 1, got 0."),
    ({"eval_episodes": -1}, "config field 'eval_episodes' must be at least 0, got -1."),
    ({"iql": {"gamma": 5}}, r"config field 'iql.gamma' must be in \[0, 1\], got 5.0."),
    ({"iql": {"tau": 0.0}}, r"config field 'iql.tau' must be in \(0, 1\], got 0.0."),
    ({"iql": {"expectile": 1}}, r"config field 'iql.expectile' must be in \(0, 1\), got 1.0."),
    ({"bc": {"lr": float("nan")}}, "config field 'bc.lr' must be above 0, got nan."),
    ({"bc": {"lr": float("inf")}}, "config field 'bc.lr' must be above 0, got inf."),
    ({"cql": {"hidden_dims": [256, 0]}}, r"config field 'cql.hidden_dims\[1\]' must be at least 1, got 0."),
    ({"device": "tpu"}, "config field 'device' must be auto, cpu, mps, cuda or cuda:N, got 'tpu'."),
    ({"device": "cuda:x"}, "config field 'device' must be auto, cpu, mps, cuda or cuda:N"),
])
def test_values_outside_the_declared_range_are_refused_in_one_sentence(data, message):
    with pytest.raises(ValueError, match=f"^{message}") as info:
        from_dict(PretrainConfig, data)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_spellings_are_accepted(device):
    assert from_dict(PretrainConfig, {"device": device}).device == device


def test_bounds_are_inclusive_or_open_as_declared():
    assert from_dict(PretrainConfig, {"eval_episodes": 0, "iql": {"gamma": 1, "tau": 1}}).iql.gamma == 1.0
    from agent.collect import CollectConfig

    assert from_dict(CollectConfig, {"epsilon": 1, "epsilon_end": None, "mix_epsilons": [0, 1]}).epsilon == 1.0
    with pytest.raises(ValueError, match=r"'mix_epsilons\[1\]' must be in \[0, 1\], got 1.5"):
        from_dict(CollectConfig, {"mix_epsilons": [0.5, 1.5]})


def test_ranges_are_listed_in_the_flag_help():
    text = argparse.ArgumentParser()
    add_flags(text, PretrainConfig)
    help_text = text.format_help()
    assert "(default: 256; at least 1)" in help_text and "auto, cpu, mps, cuda or cuda:N" in help_text


def test_a_config_built_in_python_is_checked_by_pretrain(tmp_path):
    from agent.pretrain import pretrain

    with pytest.raises(ValueError, match="'batch_size' must be at least 1, got 0"):
        pretrain(PretrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), batch_size=0))
    assert not (tmp_path / "r").exists()


def test_a_config_built_in_python_is_checked_by_collect_and_finetune(tmp_path):
    from agent.collect import CollectConfig, collect
    from agent.finetune import FinetuneConfig, finetune

    with pytest.raises(ValueError, match="'episodes' must be at least 1, got 0"):
        collect(CollectConfig(env="sims/ArmReach-v0", out=str(tmp_path / "s.zarr"), episodes=0), progress=False)
    with pytest.raises(ValueError, match="'steps' must be at least 1, got -5"):
        finetune(FinetuneConfig(env="sims/ArmReach-v0", algo="sac", out=str(tmp_path / "r"), steps=-5), progress=False)
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "r").exists()
