"""FLOP-matched training: ``train.flop_budget`` gives every method the steps that spend the same compute."""

import pytest
import yaml

import vlpbench
from vlpbench import budget, flops, launch
from vlpbench.budget import apply_flop_budget, steps_for_budget
from vlpbench.cli import main
from vlpbench.config import ConfigError, config_from_dict
from vlpbench.report import Cell, RunRecord
from vlpbench.report_writer import configuration_flops
from vlpbench.rundir import RunDir
from vlpbench.sweep import load_sweep

LIGHTVLP = {"name": "lightvlp", "embed_dim": 32, "queue_size": 16, "cross_layers": 2, "decoder_layers": 1,
            "decoder_width": 32, "decoder_heads": 2, "image_mask_ratio": 0.75, "text_mask_ratio": 0.5}


def test_each_method_gets_the_steps_its_per_sample_cost_allows(tiny_config):
    budget = 2e-4  # PFLOP
    albef = config_from_dict({**tiny_config, "train": {**tiny_config["train"], "flop_budget": budget}})
    lightvlp = config_from_dict({**tiny_config, "method": LIGHTVLP, "train": {**tiny_config["train"],
                                                                            "flop_budget": budget}})
    for cfg in (albef, lightvlp):
        steps, gflops = steps_for_budget(cfg)
        spent = steps * cfg.train.batch_size * gflops * 1e9 / 1e15
        assert spent == pytest.approx(budget, rel=0.5 / steps + 1e-6)  # within half a step of the budget
    albef_steps, albef_cost = steps_for_budget(albef)
    lightvlp_steps, lightvlp_cost = steps_for_budget(lightvlp)
    assert lightvlp_cost < albef_cost and lightvlp_steps > albef_steps  # cheaper steps: more of them
    assert apply_flop_budget(albef, log=lambda *a: None).train.steps == albef_steps


def test_without_a_budget_the_steps_stay(tiny_config):
    cfg = config_from_dict(tiny_config)
    assert apply_flop_budget(cfg, log=lambda *a: None) is cfg


def budgeted(tiny_config, budget: float = 2e-4) -> dict:
    train = {k: v for k, v in tiny_config["train"].items() if k != "steps"}  # steps: optional with a budget
    return {**tiny_config, "train": {**train, "flop_budget": budget}}


def test_steps_are_required_only_without_a_budget(tiny_config):
    no_steps = {**tiny_config, "train": {k: v for k, v in tiny_config["train"].items() if k != "steps"}}
    with pytest.raises(ConfigError, match="train.steps: required unless train.flop_budget is set"):
        config_from_dict(no_steps)
    assert config_from_dict(budgeted(tiny_config)).train.steps is None  # until the run is planned


def test_a_dry_run_and_a_library_run_get_the_budgets_steps_and_record_the_compute(tiny_config, tmp_path, capsys):
    cfg = config_from_dict(budgeted(tiny_config))
    steps, gflops = steps_for_budget(cfg)
    path = tmp_path / "budgeted.yaml"
    path.write_text(yaml.safe_dump(budgeted(tiny_config)))
    assert main(["run", str(path), "--dry-run"]) == 0
    assert f"one run (no sweep section) of {steps} steps" in capsys.readouterr().out

    loaded = vlpbench.run(budgeted(tiny_config), log=lambda _: None)
    compute = loaded.results["compute"]
    assert loaded.config.train.steps == steps == loaded.results["train"]["steps"]
    assert compute["gflops_per_sample"] == gflops and compute["samples_per_step"] == 4
    assert compute["train_pflop"] == pytest.approx(gflops * 4 * steps / 1e6) and compute["flop_budget"] == 2e-4


def test_a_started_sweep_run_keeps_its_recorded_steps_whatever_a_recount_gives(tiny_config, tmp_path, monkeypatch):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**budgeted(tiny_config), "sweep": {"seeds": [0]}}))
    (todo,), _, _ = launch.plan(load_sweep(path))
    counted = todo.config.train.steps
    RunDir.create(todo.config, run_id=todo.run_id)  # the run started: config.yaml records its steps
    monkeypatch.setattr(budget, "gflops_per_sample", lambda cfg: 1e9)  # a counter that now counts otherwise
    (again,), states, _ = launch.plan(load_sweep(path))  # no clash: the recorded steps are the run's
    assert again.config.train.steps == counted and states[again.run_id] == "new"
    assert budget.apply_flop_budget(todo.config, log=lambda _: None).train.steps == 1  # (what a recount gives)


def test_a_report_reads_the_recorded_flops_and_counts_nothing(tiny_config, tmp_path, monkeypatch):
    loaded = vlpbench.run(budgeted(tiny_config), log=lambda _: None)
    recorded = loaded.results["compute"]["gflops_per_sample"]
    monkeypatch.setattr(flops, "count_experiment", lambda *a, **k: pytest.fail("the report counted FLOPs"))
    record = RunRecord(loaded.path.name, loaded.path, {"method.name": "albef"}, 0, "done", loaded.results)
    assert configuration_flops([Cell({"method.name": "albef"}, [record])]) == {'{"method.name": "albef"}': recorded}
