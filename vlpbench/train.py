"""The pre-training loop shared by all methods.

Exact resume: the data order is a function of (seed, epoch), augmentation of (seed, step,
sample), and every step (every micro-batch) re-seeds torch's RNG from (seed, step), from which
each purpose's stream is derived (``vlpbench.streams``), so a run restarted from a checkpoint
draws the same masks, negatives and dropout as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from vlpbench import distributed
from vlpbench.checkpoint import load_weights
from vlpbench.config import ConfigError, ExperimentConfig, TrainConfig
from vlpbench.data.loading import LoaderPlan, training_batches
from vlpbench.io import append_jsonl
from vlpbench.method import Progress, VLPMethod
from vlpbench.rundir import RunDir
from vlpbench.runtime import compile_blocks, keep_freed_memory
from vlpbench.streams import derived_seed


_stop = threading.Event()


def request_stop() -> None:
    """Ask the running ``Trainer.fit`` to checkpoint at the end of its current step and return
    (safe from a signal handler: a scheduler's preemption or time-limit warning)."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


class StoppedBySignal(KeyboardInterrupt):
    """Training stopped on a signal after checkpointing its step; running it again resumes there."""


def clear_stop() -> None:
    """Forget an earlier stop request (a new command, or a new job, starts here)."""
    _stop.clear()


@contextlib.contextmanager
def checkpoint_on_signals(log=print):
    """While training: SIGINT (Ctrl-C) or SIGTERM asks ``fit`` to finish its step, checkpoint it
    and return, so a resume continues at that step; a second Ctrl-C aborts at once. Outside the
    main thread (signals go to the main thread only) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        if _stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _stop.set()
        log(f"\n{signal.Signals(signum).name}: stopping after this step, which is checkpointed "
            "(Ctrl-C again aborts without it)")

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def step_seed(seed: int, step: int) -> int:
    return (seed * 7_919 + step * 104_729 + 1) % (2**63)


class WeightAverage:
    """An exponential moving average of a model's trainable parameters (``eval.ema``), updated
    after every optimizer step with one fused ``torch._foreach_lerp_``."""

    def __init__(self, model: torch.nn.Module, decay: float):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names, self.params, self.decay = [n for n, _ in named], [p for _, p in named], decay
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        torch._foreach_copy_(self.params, self.average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.average))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        torch._foreach_copy_(self.average, [state[name] for name in self.names])


def build_optimizer(method: VLPMethod, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or Adafactor, LightVLP Sec. 4.1); biases, norms and other 1-d parameters (e.g. the
    temperature) get no weight decay; each group carries its ``lr_scale`` (``cfg.lr_scale``)."""
    groups = parameter_groups(method, cfg)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr, foreach=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)  # one pass over each tensor


def parameter_groups(method: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by (lr scale, weight decay): the unscaled groups first, in
    the order [decay, no decay], then one pair per pattern of ``cfg.lr_scale``, in its order."""
    patterns = list(cfg.lr_scale)
    members: dict[tuple[int, bool], list[torch.nn.Parameter]] = defaultdict(list)
    for name, param in method.named_parameters():
        if param.requires_grad:
            scale_index = next((i + 1 for i, pattern in enumerate(patterns) if fnmatchcase(name, pattern)), 0)
            members[scale_index, param.ndim < 2].append(param)
    unmatched = [p for i, p in enumerate(patterns) if not any(members[i + 1, d] for d in (False, True))]
    if unmatched:
        raise ConfigError(f"train.lr_scale: {unmatched} match no trainable parameter name of "
                          f"{type(method).__name__} (glob patterns over names such as 'itm_head.weight')")
    scales = [1.0] + [cfg.lr_scale[p] for p in patterns]
    return [{"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr_scale": scales[i]}
            for (i, no_decay), params in sorted(members.items()) if params]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA for ``auto`` and ``bf16``; fp32 elsewhere (``pipeline.runtime_device``
    has already refused bf16 off CUDA)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainable(Protocol):
    """What the trainer trains: a method, or a downstream task's model around one."""

    def __call__(self, batch, progress: Progress) -> dict[str, torch.Tensor]:
        """Losses of one micro-batch: ``loss`` (the total to minimise) plus named parts to log."""

    def after_optimizer_step(self) -> None:
        """State that follows the weights (momentum teachers)."""


@dataclass(frozen=True)
class TrainingSetup:
    """What the trainer reads besides the train config: an experiment's (``of``), or a task's."""
    name: str                        # the progress bar's label
    seed: int                        # the data order's and each step's draws
    record: dict                     # the config saved with every checkpoint: what the weights are
    num_workers: int = 0             # data-loader processes
    ema: float | None = None         # keep an EMA of the weights, copied into the model at the last step
    every_steps: int | None = None   # learning-curve interval (``fit``'s ``curve``)

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> "TrainingSetup":
        return cls(cfg.name, cfg.seed, cfg.model_dump(mode="json"), cfg.data.num_workers, cfg.eval.ema,
                   cfg.eval.every_steps)


class Trainer:
    def __init__(self, train: TrainConfig, setup: TrainingSetup, method: Trainable, dataset, collate,
                 run: RunDir | None, device: torch.device):
        self.train, self.setup = train, setup
        self.method, self.dataset, self.collate, self.run, self.device = method, dataset, collate, run, device
        t = train
        self.steps_per_epoch = len(dataset) // (t.batch_size * t.grad_accum_steps)
        if self.steps_per_epoch == 0:
            raise ValueError(f"train.batch_size x train.grad_accum_steps = {t.batch_size * t.grad_accum_steps} "
                             f"exceeds the {len(dataset)} pre-training pairs")
        if t.batch_size % distributed.world_size():
            raise ConfigError(f"train.batch_size ({t.batch_size}) is the global batch: it must divide among the "
                              f"{distributed.world_size()} processes")
        self.model = distributed.wrap(method)
        self.optimizer = build_optimizer(method, t)
        # from this config, not from a checkpoint's saved groups (which load_state_dict restores)
        self.lr_scales = [group["lr_scale"] for group in self.optimizer.param_groups]
        self.step = 0  # optimizer steps done
        self.skipped: list[str] = []  # this session's training samples whose image failed to load
        self.average = WeightAverage(method, setup.ema) if setup.ema is not None else None
        self.freed_memory_kept = t.keep_freed_memory and device.type == "cpu" and keep_freed_memory()
        self.compiled_blocks = compile_blocks(method) if t.compile == "blocks" else 0

    @classmethod
    def for_experiment(cls, cfg: ExperimentConfig, method: Trainable, dataset, collate, run: RunDir | None,
                       device: torch.device) -> "Trainer":
        return cls(cfg.train, TrainingSetup.of(cfg), method, dataset, collate, run, device)

    def save_checkpoint(self, tokenizer_json: str) -> None:
        self.run.save_checkpoint(self.step, self.train.keep_checkpoints, model=self.method.state_dict(),
                                 optimizer=self.optimizer.state_dict(), config=self.setup.record,
                                 tokenizer_json=tokenizer_json,
                                 weight_average=self.average.state_dict() if self.average else None)

    def load_checkpoint(self, state: dict) -> None:
        load_weights(self.method, state["model"], state["file"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        if self.average is not None and self.step < self.train.steps:
            self.average.load_state_dict(state["weight_average"])

    def batches(self) -> Iterator:
        t = self.train
        plan = LoaderPlan(t.batch_size, self.setup.seed, start_batch=self.step * t.grad_accum_steps,
                          rank=distributed.rank(), world_size=distributed.world_size(),
                          num_workers=self.setup.num_workers, pin_memory=self.device.type == "cuda")
        return training_batches(self.dataset, self.collate, plan)

    def _count_skipped(self, messages: tuple[str, ...]) -> None:
        for message in messages:
            if len(self.skipped) < 10:
                tqdm.write(f"skipped a training sample: {message}")
            self.skipped.append(message)

    def train_step(self, batches: Iterator) -> dict[str, torch.Tensor | float]:
        """One optimizer step. Logged values stay tensors on the device, so the step never waits
        for the accelerator; they become floats only when a log line is written."""
        t, step = self.train, self.step
        base = step_seed(self.setup.seed, step) + distributed.rank()  # other masks per process
        for group, scale in zip(self.optimizer.param_groups, self.lr_scales):
            group["lr"] = lr_at(step, t) * scale
        progress = Progress(step, self.steps_per_epoch)
        logged = defaultdict(float)  # a float 0 becomes a tensor on the first addition
        for micro in range(t.grad_accum_steps):
            # each micro-batch its own draws; each purpose a stream of this seed (vlpbench.streams)
            torch.manual_seed(base if micro == 0 else derived_seed(base, "micro-batch", micro))
            batch = next(batches)
            self._count_skipped(getattr(batch, "skipped", ()))  # fine-tuning batches carry none
            batch = batch.to(self.device)
            with autocast_context(self.device, t.precision):
                out = self.model(batch, progress)
            (out["loss"] / t.grad_accum_steps).backward()
            for key, value in out.items():
                logged[key] += value.detach() / t.grad_accum_steps
        if t.grad_clip:
            logged["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.method.parameters(), t.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step()
        if self.average is not None:
            self.average.update()
        self.step += 1
        logged = distributed.mean_across_processes(logged)
        logged["lr"] = lr_at(step, t)
        return logged

    def fit(self, tokenizer_json: str, stop_at: int | None = None,
            curve: Callable[[VLPMethod], dict[str, float]] | None = None) -> dict:
        """Train to ``train.steps``, or only to ``stop_at`` (checkpointed there, to be resumed), or
        until ``request_stop`` (checkpointed at the step it ends).

        ``curve`` (a cheap evaluation) runs every ``eval.every_steps`` steps and at the last step;
        its metrics go to ``metrics.jsonl`` and its time is not counted as training throughput.
        """
        t = self.train
        if stop_at is not None and not self.step < stop_at <= t.steps:
            raise ConfigError(f"--stop-at {stop_at}: expected a step after the checkpoint's step {self.step} "
                              f"and at most train.steps ({t.steps})")
        last = t.steps if stop_at is None else stop_at
        with checkpoint_on_signals():
            return self._fit(tokenizer_json, last, curve)

    def _fit(self, tokenizer_json: str, last: int, curve) -> dict:
        t = self.train
        self.method.train()
        batches = self.batches()
        samples_per_step = t.batch_size * t.grad_accum_steps
        window, window_start, window_steps = defaultdict(float), time.perf_counter(), 0
        start, first_step, curve_seconds = time.perf_counter(), self.step, 0.0
        every = self.setup.every_steps
        bar = tqdm(total=t.steps, initial=self.step, desc=self.setup.name, dynamic_ncols=True, mininterval=1.0)
        writer = tensorboard_writer(self.run.path / "tensorboard") if distributed.is_main() else None
        while self.step < last:
            logged = self.train_step(batches)
            window_steps += 1
            for key, value in logged.items():
                window[key] += value
            bar.update(1)
            step, stopping = self.step, distributed.any_process(_stop.is_set())
            if step % t.log_every == 0 or step == last or stopping:  # window means, also where a session stops
                elapsed = time.perf_counter() - window_start
                record = {"step": step, **{k: float(v) / window_steps for k, v in window.items()},
                          "samples_per_s": window_steps * samples_per_step / elapsed, "epoch": step / self.steps_per_epoch}
                if distributed.is_main():
                    log_record(self.run.metrics_file, writer, record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{record['samples_per_s']:.0f}")
                window, window_start, window_steps = defaultdict(float), time.perf_counter(), 0
            if self.average is not None and step == t.steps:  # evaluated, saved and fine-tuned from now on
                self.average.copy_to_model()
            if curve is not None and every and (step % every == 0 or step == t.steps) and distributed.is_main():
                tic = time.perf_counter()
                log_record(self.run.metrics_file, writer, {"step": step, **curve(self.method)})
                window_start += time.perf_counter() - tic
                curve_seconds += time.perf_counter() - tic
            if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == last or stopping:
                if distributed.is_main():
                    self.save_checkpoint(tokenizer_json)
                distributed.barrier()
            if stopping:
                break
        bar.close()
        if writer is not None:
            writer.close()
        seconds = time.perf_counter() - start
        steps_run = self.step - first_step
        return {"steps": self.step, "steps_this_session": steps_run, "seconds": round(seconds, 1),
                "curve_seconds": round(curve_seconds, 1), "steps_per_epoch": self.steps_per_epoch,
                "samples_per_s": round(steps_run * samples_per_step / max(seconds - curve_seconds, 1e-9), 1),
                "seconds_per_step": round((seconds - curve_seconds) / max(steps_run, 1), 3),
                "peak_memory_mb": peak_memory_mb(self.device),
                "skipped_samples": {"count": len(self.skipped), "examples": self.skipped[:10]}}


def tensorboard_writer(folder):
    """A TensorBoard ``SummaryWriter`` logging to ``folder`` when the optional ``tensorboard``
    package is installed (live curves while a sweep runs), else None: nothing changes without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def log_record(metrics_file, writer, record: dict) -> None:
    """One line of ``metrics.jsonl`` and, with TensorBoard, each number as a scalar at its step."""
    append_jsonl(metrics_file, record)
    if writer is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["step"])
        writer.flush()


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated by torch, or on CPU the process's peak resident set
    (which includes the interpreter and data loading)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB
