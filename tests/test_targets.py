"""fewlabels.targets: each kind of target built once."""

from __future__ import annotations

import torch

from fewlabels import targets as T


def test_one_hot_smoothing_and_soft_smoothing_agree():
    y = torch.tensor([2, 0, 1])
    hard = T.one_hot(y, 4, 0.2)
    assert torch.allclose(hard.sum(1), torch.ones(3)) and abs(hard[0, 2].item() - (1 - 0.2 + 0.05)) < 1e-6
    assert torch.allclose(T.smooth(T.one_hot(y, 4), 0.2), hard)
    assert torch.equal(T.smooth(hard, 0.0), hard)


def test_from_logits_hard_soft_and_ensembles():
    a = torch.tensor([[2.0, 1.5, 0.0]])
    b = torch.tensor([[0.0, 4.0, 0.0]])
    assert T.from_logits(a).tolist() == [[1.0, 0.0, 0.0]]
    assert T.from_logits([a, b]).tolist() == [[0.0, 1.0, 0.0]]  # the mean softmax decides
    soft = T.from_logits([a, b], hard=False, temperature=2.0)
    assert torch.allclose(soft, ((a / 2).softmax(1) + (b / 2).softmax(1)) / 2)


def test_weighted_scales_rows_and_mix_is_convex():
    t = torch.eye(3)
    assert torch.allclose(T.weighted(t, torch.tensor([1.0, 0.5, 0.0]), 2.0), torch.diag(torch.tensor([1, 0.25, 0])))
    assert torch.equal(T.weighted(t, torch.tensor([0.1, 0.1, 0.1]), 0.0), t)
    m = T.mix(t, torch.tensor([1.0, 0.5, 0.25]))
    assert torch.allclose(m, torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.75, 0, 0.25]]))
    assert torch.allclose(m.sum(1), torch.ones(3))
