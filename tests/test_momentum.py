import torch
from torch import nn

from vlpbench.momentum import FeatureQueue, ema_update, momentum_copy


def test_queue_is_fifo_with_wrap_around():
    q = FeatureQueue(size=5, dim=2)
    rows = lambda *v: torch.tensor([[x, -x] for x in v], dtype=torch.float)
    q.enqueue(rows(1, 2, 3))
    assert q.ptr.item() == 3
    q.enqueue(rows(4, 5, 6))  # 4, 5 fill the end; 6 wraps to the front and replaces the oldest (1)
    assert q.ptr.item() == 1
    assert q.features[:, 0].tolist() == [6, 2, 3, 4, 5]
    q.enqueue(rows(7, 8))  # replaces 2 and 3, the oldest remaining
    assert q.features[:, 0].tolist() == [6, 7, 8, 4, 5]
    assert q.ptr.item() == 3


def test_queue_starts_with_unit_vectors_and_is_saved_in_state_dict():
    q = FeatureQueue(size=8, dim=4)
    torch.testing.assert_close(q.features.norm(dim=1), torch.ones(8))
    assert set(q.state_dict()) == {"features", "ptr"}


def test_ema_update_matches_hand_computation():
    student = nn.Linear(2, 1)
    teacher = momentum_copy(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
    ema_update([student], [teacher], momentum=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 0.1))
    ema_update([student], [teacher], momentum=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 0.19))
