"""Data-parallel training on CPU with gloo: 2 processes equal 1 process on the same global batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vlpbench import distributed
from vlpbench.config import config_from_dict
from vlpbench.train import ResumableBatchSampler, Trainer

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
    trainer = Trainer(cfg, model, list(range(16)), None, None, torch.device("cpu"))
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
