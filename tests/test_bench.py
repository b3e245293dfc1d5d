import json

import yaml

from vlpbench.bench import benchmark
from vlpbench.cli import main
from vlpbench.config import config_from_dict


def test_benchmark_times_the_training_step_without_touching_a_run(tiny_config, tmp_path):
    row = benchmark(config_from_dict(tiny_config), steps=2, warmup=1)
    assert row["method"] == "albef" and row["batch_size"] == 4 and row["steps_timed"] == 2
    assert row["seconds_per_step"] > 0 and row["samples_per_s"] > 0 and row["peak_memory_mb"] > 0
    assert row["params_m"] > 0
    assert not (tmp_path / "runs").exists()


def test_bench_command_runs_each_experiment_in_its_own_process(tiny_config, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), "--steps", "1", "--warmup", "0", "--output", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["experiment"] == "tiny" and "s/step" in capsys.readouterr().out
    assert main(["bench", str(path), "-o", "train.steps=0"]) == 2, "a bad override fails before any process starts"
