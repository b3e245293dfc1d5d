import json

import pytest
import yaml

from vlpbench.bench import benchmark
from vlpbench.cli import main
from vlpbench.config import config_from_dict


def test_benchmark_times_the_training_step_without_touching_a_run(tiny_config, tmp_path):
    row = benchmark(config_from_dict(tiny_config), steps=2, warmup=1)
    assert row["method"] == "albef" and row["batch_size"] == 4 and row["steps_timed"] == 2
    assert row["seconds_per_step"] > 0 and row["samples_per_s"] > 0 and row["peak_memory_mb"] > 0
    assert row["params_m"] > 0 and row["gflops_per_step"] > 0
    achieved = row["gflops_per_step"] / row["seconds_per_step"]
    assert row["achieved_gflops_per_s"] == pytest.approx(achieved, rel=0.01, abs=0.1)
    assert not (tmp_path / "runs").exists()


def test_bench_command_alternates_experiments_in_their_own_processes(tiny_config, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    tiny_config["name"], tiny_config["method"] = "tiny_vlmae", {"name": "vlmae", "embed_dim": 32, "queue_size": 16}
    other = tmp_path / "tiny_vlmae.yaml"
    other.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), str(other), "--steps", "3", "--rounds", "2", "--warmup", "0",
                 "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["experiment"] for r in rows] == ["tiny", "tiny_vlmae"] and all(r["steps_timed"] == 3 for r in rows)
    assert len({r["ceiling_gflops_per_s"] for r in rows}) == 1 and rows[0]["ceiling_gflops_per_s"] > 0
    assert all(r["fraction_of_ceiling"] == pytest.approx(r["achieved_gflops_per_s"] / r["ceiling_gflops_per_s"],
                                                         abs=0.002) for r in rows)
    assert "of ceiling" in capsys.readouterr().out
    assert main(["bench", str(path), "-o", "train.steps=0"]) == 2, "a bad override fails before any process starts"


def test_a_worker_that_cannot_build_its_method_is_a_clear_error(tiny_config, tmp_path, capsys):
    tiny_config["method"] = {"name": "epic", "base": {"name": "albef", "embed_dim": 32, "queue_size": 16},
                             "masking": "saliency", "saliency_teacher": str(tmp_path / "no_run_here"),
                             "replacement": "random"}
    path = tmp_path / "epic.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["bench", str(path), "--steps", "1", "--warmup", "0"]) == 2
    assert "failed in its worker" in capsys.readouterr().err
