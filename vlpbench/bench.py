"""Training-step speed, memory and FLOP efficiency of experiments, measured alike for every method.

Each experiment lives in a worker process of its own (``python -m vlpbench.bench EXP``), so that
peak memory is that method's alone: on CUDA torch's peak allocation, on CPU the process's peak
resident set. The parent builds every worker first, then times them in alternation (``rounds``
turns of ``steps / rounds`` steps each, the order rotating), so drift on a shared machine hits all
alike, and measures the machine's dense-matmul throughput (the ceiling) between turns.

The step is the trainer's own (forward, backward, optimizer, momentum update) on real batches of
the experiment's data, collated before timing starts so data loading is not measured; weights are
random (the uni-modal warm start changes no shapes). FLOPs per step are counted by
``vlpbench.flops`` on those batches: model FLOPs, forward + backward, attention included (what
MFU divides by); the optimizer's element-wise work is time but not FLOPs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from vlpbench import pipeline
from vlpbench.config import ExperimentConfig, load_config
from vlpbench.data.datasets import SkipReport
from vlpbench.data.loading import LoaderPlan, training_batches
from vlpbench.errors import UserError
from vlpbench.flops import Convention, count_step
from vlpbench.method import Progress
from vlpbench.runtime import release_free_memory
from vlpbench.train import Trainer, peak_memory_mb


def fixed_batches(cfg: ExperimentConfig, count: int) -> tuple[list, object, object]:
    """``count`` collated batches of the experiment's pre-training data, its dataset and tokenizer."""
    data = pipeline.open_pretrain(cfg, SkipReport(), log=lambda *_: None)
    tokenizer = pipeline.make_tokenizer(cfg, data.captions())
    collate = pipeline.Collate(tokenizer, cfg.data.max_text_len)
    batches = list(itertools.islice(training_batches(data.dataset, collate, LoaderPlan(cfg.train.batch_size, cfg.seed)),
                                    count))
    return batches, data.dataset, tokenizer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """One experiment's training step, built and ready to be timed."""

    def __init__(self, cfg: ExperimentConfig, num_batches: int = 4):
        self.cfg, self.device = cfg, pipeline.runtime_device(cfg.train)
        batches, dataset, tokenizer = fixed_batches(cfg, num_batches)
        torch.manual_seed(cfg.seed)
        self.method = pipeline.build_method(cfg, tokenizer).to(self.device)
        self.flops_per_step = self._count_flops(batches)
        self.trainer = Trainer.for_experiment(cfg, self.method, dataset, None, None, self.device)
        self.stream = itertools.cycle(batches)
        self.times: list[float] = []

    def _count_flops(self, batches: list) -> float:
        """Model FLOPs of one optimizer step: the mean over the fixed batches, times accumulation."""
        progress = Progress(0, 1)
        per_batch = [count_step(self.method, b.to(self.device), progress, cross_check=False,
                                seed=self.cfg.seed).per_sample(Convention()) * len(b) for b in batches]
        return statistics.mean(per_batch) * self.cfg.train.grad_accum_steps

    def run(self, steps: int, timed: bool = True) -> None:
        for _ in range(steps):
            synchronize(self.device)
            tic = time.perf_counter()
            self.trainer.train_step(self.stream)
            synchronize(self.device)
            if timed:
                self.times.append(time.perf_counter() - tic)

    def row(self) -> dict:
        per_step = statistics.median(self.times)
        quartiles = statistics.quantiles(self.times, n=4) if len(self.times) > 1 else [per_step] * 3
        samples = self.cfg.train.batch_size * self.cfg.train.grad_accum_steps
        return {"experiment": self.cfg.name, "method": self.cfg.method.name, "device": str(self.device),
                "batch_size": samples, "precision": self.cfg.train.precision,
                "params_m": round(sum(p.numel() for p in self.method.parameters() if p.requires_grad) / 1e6, 2),
                "seconds_per_step": round(per_step, 4), "seconds_per_step_iqr": [round(quartiles[0], 4), round(quartiles[2], 4)],
                "samples_per_s": round(samples / per_step, 1),
                "peak_memory_mb": peak_memory_mb(self.device), "steps_timed": len(self.times),
                "gflops_per_step": round(self.flops_per_step / 1e9, 2),
                "achieved_gflops_per_s": round(self.flops_per_step / per_step / 1e9, 1)}


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """This machine's dense matmul throughput now (FLOP/s, median of ``repeats`` size^3 products)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - tic)
    return 2 * size ** 3 / statistics.median(times)


def benchmark(cfg: ExperimentConfig, steps: int, warmup: int) -> dict:
    """In this process: median seconds per optimizer step over ``steps`` steps after ``warmup``."""
    timer = StepTimer(cfg)
    timer.run(warmup, timed=False)
    timer.run(steps)
    return timer.row()


class BenchmarkError(UserError, RuntimeError):
    """A worker could not build or run its experiment (the message is the worker's last error line)."""


class Worker:
    """A ``StepTimer`` in a child process, driven over its stdin/stdout one JSON line at a time."""

    def __init__(self, experiment: str, overrides: list[str]):
        command = [sys.executable, "-m", "vlpbench.bench", experiment]
        for override in overrides:
            command += ["-o", override]
        self.experiment = experiment
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty worker never blocks
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True)
        self.reply()  # built and counted

    def reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.stderr.seek(0)
            lines = self.stderr.read().strip().splitlines() or ["(no message)"]
            raise BenchmarkError(f"benchmark of {self.experiment} failed in its worker: {lines[-1]}")
        return json.loads(line)

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.reply()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stderr.close()


def compare(experiments: list[str], overrides: list[str], steps: int, warmup: int, rounds: int) -> list[dict]:
    """Every experiment in its own worker, timed in alternation, with the matmul ceiling measured
    between turns; a row per experiment with its fraction of that ceiling."""
    workers = []
    try:
        for experiment in experiments:
            workers.append(Worker(experiment, overrides))
        cfg = load_config(experiments[0], overrides)
        device = pipeline.runtime_device(cfg.train)
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        for worker in workers:
            worker.ask({"steps": warmup, "timed": False})
        ceilings = [matmul_ceiling(device, dtype)]
        per_round = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
        for r, count in enumerate(per_round):
            for worker in workers[r % len(workers):] + workers[:r % len(workers)]:
                worker.ask({"steps": count, "timed": True})
                ceilings.append(matmul_ceiling(device, dtype))
        ceiling = statistics.median(ceilings)
        rows = [worker.ask({"report": True}) for worker in workers]
    finally:
        for worker in workers:
            worker.close()
    for row in rows:
        row["ceiling_dtype"] = str(dtype).removeprefix("torch.")
        row["ceiling_gflops_per_s"] = round(ceiling / 1e9, 1)
        row["ceiling_gflops_per_s_range"] = [round(min(ceilings) / 1e9, 1), round(max(ceilings) / 1e9, 1)]
        row["fraction_of_ceiling"] = round(row["achieved_gflops_per_s"] * 1e9 / ceiling, 3)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'experiment':<24} {'method':<9} {'params M':>8} {'batch':>5} {'s/step':>8} {'(IQR)':>15} "
             f"{'samples/s':>9} {'peak MB':>9} {'GFLOP/step':>10} {'GFLOP/s':>8} {'of ceiling':>10}"]
    lines += [f"{r['experiment']:<24} {r['method']:<9} {r['params_m']:>8.2f} {r['batch_size']:>5} "
              f"{r['seconds_per_step']:>8.3f} {'{:.3f}-{:.3f}'.format(*r['seconds_per_step_iqr']):>15} "
              f"{r['samples_per_s']:>9.1f} {r['peak_memory_mb']:>9.1f} "
              f"{r['gflops_per_step']:>10.1f} {r['achieved_gflops_per_s']:>8.1f} {r['fraction_of_ceiling']:>10.1%}"
              for r in rows]
    if rows:
        lines.append(f"ceiling: dense {rows[0]['ceiling_dtype']} 2048^3 matmul on {rows[0]['device']}, "
                     f"{rows[0]['ceiling_gflops_per_s']:.1f} GFLOP/s (median over the run; range "
                     "{:.1f}-{:.1f})".format(*rows[0]["ceiling_gflops_per_s_range"]))
    return "\n".join(lines)


def serve(cfg: ExperimentConfig) -> None:
    """The worker loop: build, then answer {"steps", "timed"} and {"report"} requests; a timed
    turn starts with one untimed step."""
    timer = StepTimer(cfg)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("report"):
            print(json.dumps(timer.row()), flush=True)
            return
        if request["timed"]:
            timer.run(1, timed=False)  # the turn's first step faults the memory released after the last turn
        timer.run(request["steps"], request["timed"])
        release_free_memory()  # an idle worker holds only its live tensors, not its peak
        print(json.dumps({"done": request["steps"]}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlpbench.bench")
    parser.add_argument("experiment")
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args(argv)
    serve(load_config(args.experiment, args.override))
    return 0


if __name__ == "__main__":
    sys.exit(main())
