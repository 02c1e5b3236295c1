"""Batching of in-memory sets: the order, partial orders, resume offsets, drop_last."""

import torch

from bench.data.base import ImageSet
from bench.data.loader import epoch_permutation, iter_batches, num_batches


def _set(n: int) -> ImageSet:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageSet("toy", images, torch.arange(n) % 3, ["a", "b", "c"], (0.5,), (0.5,))


def test_batches_follow_the_order_and_carry_indices():
    data = _set(10)
    order = epoch_permutation(10, seed=1, epoch=2)
    got = list(iter_batches(data, 4, torch.device("cpu"), order=order))
    assert [b[0].shape[0] for b in got] == [4, 4, 2]
    index = torch.cat([b[2] for b in got])
    assert torch.equal(index, order)
    assert torch.equal(torch.cat([b[0][:, 0, 0, 0] for b in got]).long(), order)
    assert torch.equal(torch.cat([b[1] for b in got]), order % 3)


def test_partial_order_resume_offset_and_drop_last():
    data = _set(10)
    order = torch.tensor([9, 8, 7, 6, 5])
    assert [b[2].tolist() for b in iter_batches(data, 2, torch.device("cpu"), order=order, drop_last=True)] == [[9, 8], [7, 6]]
    assert [b[2].tolist() for b in iter_batches(data, 2, torch.device("cpu"), order=order, start=2)] == [[5]]
    assert num_batches(10, 4, drop_last=True) == 2 and num_batches(10, 4, drop_last=False) == 3


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    assert torch.equal(epoch_permutation(50, 3, 7), epoch_permutation(50, 3, 7))
    assert not torch.equal(epoch_permutation(50, 3, 7), epoch_permutation(50, 3, 8))
    assert sorted(epoch_permutation(50, 3, 7).tolist()) == list(range(50))
