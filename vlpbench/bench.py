"""Training-step speed and memory of experiments, measured alike for every method.

Each experiment runs in its own process (``python -m vlpbench.bench EXP``), so that peak memory is
that method's alone: on CUDA torch's peak allocation, on CPU the process's peak resident set.
The step is the trainer's own (forward, backward, optimizer, momentum update) on real batches of
the experiment's data, collated before timing starts so data loading is not measured; weights are
random (the uni-modal warm start changes no shapes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time

import torch

from vlpbench import pipeline
from vlpbench.config import ExperimentConfig, load_config
from vlpbench.data.datasets import SkipReport
from vlpbench.train import Trainer, peak_memory_mb


def fixed_batches(cfg: ExperimentConfig, count: int) -> tuple[list, object, object]:
    """``count`` collated batches of the experiment's pre-training data, its dataset and tokenizer."""
    skips = SkipReport()
    entries = pipeline.open_entries(pipeline.data_sources(cfg, log=lambda *_: None)["pretrain"], cfg, skips)
    dataset = pipeline.pretrain_dataset(entries, cfg, skips)
    tokenizer = pipeline.make_tokenizer(cfg, entries)
    collate = pipeline.Collate(tokenizer, cfg.data.max_text_len)
    size = cfg.train.batch_size
    batches = [collate([dataset[(b * size + i, i)] for i in range(size)]) for b in range(count)]
    return batches, dataset, tokenizer


def benchmark(cfg: ExperimentConfig, steps: int, warmup: int) -> dict:
    """Median seconds per optimizer step over ``steps`` steps after ``warmup`` untimed ones."""
    device = pipeline.runtime_device(cfg.train)
    batches, dataset, tokenizer = fixed_batches(cfg, min(4, cfg.train.grad_accum_steps * (steps + warmup)))
    torch.manual_seed(cfg.seed)
    method = pipeline.build_method(cfg, tokenizer).to(device)
    trainer = Trainer(cfg, method, dataset, None, None, device)
    stream = itertools.cycle(batches)
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        trainer.train_step(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - tic)
    per_step = statistics.median(times)
    samples = cfg.train.batch_size * cfg.train.grad_accum_steps
    return {"experiment": cfg.name, "method": cfg.method.name, "device": str(device), "batch_size": samples,
            "params_m": round(sum(p.numel() for p in method.parameters() if p.requires_grad) / 1e6, 2),
            "seconds_per_step": round(per_step, 4), "samples_per_s": round(samples / per_step, 1),
            "peak_memory_mb": peak_memory_mb(device), "steps_timed": steps}


def run_isolated(experiment: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """``benchmark`` in a fresh process (its peak memory is this experiment's only)."""
    command = [sys.executable, "-m", "vlpbench.bench", experiment, "--steps", str(steps), "--warmup", str(warmup)]
    for override in overrides:
        command += ["-o", override]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark of {experiment} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict]) -> str:
    lines = [f"{'experiment':<24} {'method':<10} {'params M':>8} {'batch':>5} {'s/step':>8} {'samples/s':>9} "
             f"{'peak MB':>9}"]
    lines += [f"{r['experiment']:<24} {r['method']:<10} {r['params_m']:>8.2f} {r['batch_size']:>5} "
              f"{r['seconds_per_step']:>8.3f} {r['samples_per_s']:>9.1f} {r['peak_memory_mb']:>9.1f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlpbench.bench")
    parser.add_argument("experiment")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.experiment, args.override)
    print(json.dumps(benchmark(cfg, args.steps, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
