"""Data-parallel training on CPU with gloo: 2 processes equal 1 process on the same global batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vlpbench import distributed
from vlpbench.config import config_from_dict
from vlpbench.data.loading import ResumableBatchSampler
from vlpbench.train import Trainer

GLOBAL_BATCH = torch.randn(8, 9, generator=torch.Generator().manual_seed(1))  # 8 samples: 8 inputs, 1 target


class PerSampleRegression(nn.Module):
    """A method without queues, sampling or dropout: a mean per-sample squared error, which averaged
    over equal shards is the global batch's mean."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))

    def forward(self, batch, progress):
        return {"loss": (self.net(batch[:, :8]).squeeze(-1) - batch[:, 8]).square().mean()}

    def after_optimizer_step(self):
        pass


def one_step(tiny_config: dict, batch: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = PerSampleRegression()
    cfg = config_from_dict({**tiny_config, "train": {**tiny_config["train"], "batch_size": 8}})
    trainer = Trainer.for_experiment(cfg, model, list(range(16)), None, None, torch.device("cpu"))
    logged = trainer.train_step(iter([batch]))
    return float(logged["loss"]), [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, world: int, init_file: str, tiny_config: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    share = GLOBAL_BATCH.shape[0] // world
    loss, params = one_step(tiny_config, GLOBAL_BATCH[rank * share:(rank + 1) * share])
    torch.save({"loss": loss, "params": params}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_train_like_one_on_the_same_global_batch(tiny_config, tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), tiny_config, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    single_loss, single_params = one_step(tiny_config, GLOBAL_BATCH)
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the logged loss is the mean over processes
    assert abs(ranks[0]["loss"] - single_loss) < 1e-6
    for p0, p1, p in zip(ranks[0]["params"], ranks[1]["params"], single_params):
        assert torch.equal(p0, p1)  # gradients were synchronised: identical weights on every process
        torch.testing.assert_close(p0, p, rtol=0, atol=1e-6)


def test_each_process_takes_its_share_of_the_same_global_batch():
    single = next(iter(ResumableBatchSampler(40, 8, seed=3)))
    shards = [next(iter(ResumableBatchSampler(40, 8, seed=3, rank=r, world_size=4))) for r in range(4)]
    assert [len(s) for s in shards] == [2, 2, 2, 2] and sum(shards, []) == single


def test_a_single_process_is_not_wrapped():
    model = PerSampleRegression()
    assert distributed.wrap(model) is model and distributed.world_size() == 1 and distributed.is_main()


SLURM_TASK_6_OF_8 = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8",
                     "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "4",
                     "SLURM_JOB_NODELIST": "gpu[07-10]"}


def test_a_slurm_task_finds_rank_world_size_and_the_first_node_through_submitit(monkeypatch, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path))
    for name, value in SLURM_TASK_6_OF_8.items():
        monkeypatch.setenv(name, value)
    # global rank 5 of 8, second task on its node; every task meets on gpu07, port 20000 + job id
    assert distributed.rendezvous_from_environment() == distributed.Rendezvous(5, 8, 1, "gpu07", 24242)
    monkeypatch.setenv("RANK", "3")  # torchrun's variables, where present, win
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    assert distributed.rendezvous_from_environment() == distributed.Rendezvous(3, 4, 0, "node-a", 29500)


class CollectiveRecorder:
    """Stands in for torch.distributed's collectives: records the device of every tensor each
    receives (the tensors are on the meta device, so nothing is computed)."""

    def __init__(self):
        self.devices: list[tuple[str, torch.device]] = []

    def record(self, name):
        def collective(tensor_or_list, *more, **kwargs):
            tensors = tensor_or_list if isinstance(tensor_or_list, list) else [tensor_or_list]
            tensors += [t for t in more if isinstance(t, torch.Tensor)]
            self.devices += [(name, t.device) for t in tensors]
        return collective


def test_every_collective_takes_its_tensors_on_the_training_device(monkeypatch):
    """Issue 20.6: any_process all-reduced a CPU tensor, which a NCCL group refuses. A process
    training on device D (here meta, which CPU-only CI has) must hand every collective tensors on D."""
    from vlpbench.momentum import gather_from_all_processes
    recorder = CollectiveRecorder()
    monkeypatch.setattr(distributed, "_device", torch.device("meta"))
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    for name in ("all_reduce", "all_gather", "broadcast", "reduce"):
        monkeypatch.setattr(dist, name, recorder.record(name))
    with pytest.raises((NotImplementedError, RuntimeError)):  # a meta tensor's value cannot be read back
        distributed.any_process(True)  # stop agreement: its all_reduce is recorded before that
    logged = {"loss": torch.ones((), device="meta"), "grad_norm": 0.5}  # loss averages, a float among them
    distributed.mean_across_processes(logged)
    gather_from_all_processes(torch.ones(4, 3, device="meta"))  # queue gathers
    assert {name for name, _ in recorder.devices} == {"all_reduce", "all_gather"}
    assert all(device.type == "meta" for _, device in recorder.devices), recorder.devices


def test_a_cuda_process_group_has_a_cpu_and_a_cuda_backend(monkeypatch):
    chosen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: chosen.update(index=index))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: chosen.update(backend=backend))
    monkeypatch.setattr(distributed, "_device", distributed._device)  # restored afterwards
    distributed.initialize(torch.device("cuda"))
    assert chosen == {"index": 0, "backend": "cpu:gloo,cuda:nccl"}
    assert distributed.device() == torch.device("cuda", 0)
