import pytest
import yaml

from vlpbench.config import ConfigError, config_from_dict, config_to_yaml, load_config


def write(tmp_path, cfg, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def error_of(tmp_path, cfg, overrides=None):
    path = write(tmp_path, cfg)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value), str(path)


def test_valid_config_loads_with_defaults(tiny_config, tmp_path):
    cfg = load_config(write(tmp_path, tiny_config))
    assert cfg.method.name == "albef" and cfg.method.momentum == 0.995 and cfg.method.alpha == 0.4
    assert cfg.train.steps == 4 and cfg.data.on_bad_record == "error"


def test_unknown_key_names_file_and_path(tiny_config, tmp_path):
    tiny_config["train"]["stepz"] = 3
    message, path = error_of(tmp_path, tiny_config)
    assert path in message and "train.stepz" in message and "unknown key" in message and "steps" in message


def test_unknown_method_key_names_path(tiny_config, tmp_path):
    tiny_config["method"]["queue_sise"] = 3
    message, _ = error_of(tmp_path, tiny_config)
    assert "method.queue_sise: unknown key" in message and "queue_size" in message


def test_wrong_type_names_path(tiny_config, tmp_path):
    tiny_config["train"]["batch_size"] = "many"
    message, _ = error_of(tmp_path, tiny_config)
    assert "train.batch_size" in message and "integer" in message


def test_impossible_ratio_names_path(tiny_config, tmp_path):
    tiny_config["method"]["mlm_probability"] = 1.2
    message, _ = error_of(tmp_path, tiny_config)
    assert "method.mlm_probability" in message and "less than 1" in message and "1.2" in message


def test_queue_not_divisible_by_batch(tiny_config, tmp_path):
    tiny_config["method"]["queue_size"] = 18
    message, _ = error_of(tmp_path, tiny_config)
    assert "method.queue_size" in message and "train.batch_size" in message and "divisible" in message


def test_unknown_method_and_preset(tiny_config, tmp_path):
    tiny_config["method"]["name"] = "clip"
    message, _ = error_of(tmp_path, tiny_config)
    assert "method.name" in message and "albef" in message
    tiny_config["method"]["name"] = "albef"
    tiny_config["model"]["vision"]["preset"] = "vit_huge"
    message, _ = error_of(tmp_path, tiny_config)
    assert "model.vision.preset" in message and "vit_mini" in message


def test_inconsistent_ablation_switches(tiny_config, tmp_path):
    tiny_config["method"].update(itc=False, itm_hard_negatives=False, distill_itc=True)
    message, _ = error_of(tmp_path, tiny_config)
    assert "method.distill_itc" in message
    # without ITC there are no ITC candidates for ITM to re-rank
    tiny_config["method"]["distill_itc"] = False
    message, _ = error_of(tmp_path, tiny_config)
    assert "eval.retrieval.k_test: 4 takes ITM candidates from ITC similarities" in message
    tiny_config["eval"]["retrieval"]["k_test"] = "all"
    assert load_config(write(tmp_path, tiny_config)).eval.retrieval.k_test == "all"


def test_dotted_overrides(tiny_config, tmp_path):
    cfg = load_config(write(tmp_path, tiny_config), ["train.steps=50", "method.alpha=0.0", "data.augment.hflip=true"])
    assert cfg.train.steps == 50 and cfg.method.alpha == 0.0 and cfg.data.augment.hflip is True
    message, _ = error_of(tmp_path, tiny_config, ["train.steps"])
    assert "KEY.PATH=VALUE" in message
    message, _ = error_of(tmp_path, tiny_config, ["train.steps=-1"])
    assert "train.steps" in message


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_config(tmp_path / "absent.yaml")


def test_resolved_config_round_trips(tiny_config):
    cfg = config_from_dict(tiny_config)
    again = config_from_dict(yaml.safe_load(config_to_yaml(cfg)))
    assert again == cfg


def test_override_errors_blame_the_override_not_the_file(tiny_config, tmp_path):
    message, path = error_of(tmp_path, tiny_config, ["train.steps=-1"])
    assert message.startswith("override -o train.steps=-1: train.steps:") and path not in message
    message, _ = error_of(tmp_path, tiny_config, ["train={steps: 0, batch_size: 4}"])
    assert message.startswith("override -o train={steps: 0, batch_size: 4}: train.steps")
    message, _ = error_of(tmp_path, tiny_config, ["method.name=clip"])
    assert message.startswith("override -o method.name=clip: method.name: unknown method")
    # a problem across sections names the file and the overrides that took part
    message, path = error_of(tmp_path, tiny_config, ["train.batch_size=5"])
    assert message.startswith(f"{path} -o train.batch_size=5:") and "divisible" in message
    tiny_config["train"]["steps"] = 0  # the file's own mistake is still the file's
    message, path = error_of(tmp_path, tiny_config, ["train.lr=0.01"])
    assert message.startswith(f"{path}: train.steps")


def test_missing_base_names_the_file_that_refers_to_it(tiny_config, tmp_path):
    child = write(tmp_path, {"base": "parts/missing.yaml", "name": "child"}, name="child.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    message = str(info.value)
    assert message.startswith(f"{child}: base: 'parts/missing.yaml': no such experiment file")
    assert str(tmp_path / "parts" / "missing.yaml") in message


def test_command_line_arguments_are_validated_with_the_flag_named():
    from vlpbench.config import RetrievalEvalConfig, validate_arguments

    with pytest.raises(ConfigError) as info:
        validate_arguments(RetrievalEvalConfig, {"k_test": 0, "batch_size": 8}, {"k_test": "--k-test"})
    assert str(info.value) == "--k-test: expected an integer >= 1 or 'all' (got 0)"
