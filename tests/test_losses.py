"""Divergence / convergence losses against the authors' numbers, gradients and the alpha schedule."""
import json

import numpy as np
import pytest
import torch

from conftest import OFFICIAL_FIXTURE
from d2csr.losses import ConvergenceLoss, DivergenceLoss, DivergenceWeightSchedule
from d2csr.losses.d2csr_losses import tree_pair_depths


def load_fixture():
    branches = torch.from_numpy(np.load(OFFICIAL_FIXTURE / 'branches.npy'))
    target = torch.from_numpy(np.load(OFFICIAL_FIXTURE / 'target.npy'))
    config = json.loads((OFFICIAL_FIXTURE / 'config.json').read_text())
    return list(branches), target, config


def test_reproduces_the_authors_loss_values():
    branches, target, config = load_fixture()
    official = config['official_triplet_loss']
    loss = DivergenceLoss(alpha=1.0, margins=[official['margin_diff'], official['margin_same']],
                          theta=official['decay_rate'], gray='mean', norm='batch')
    terms = loss.terms(branches, target)
    assert terms['l_branch'].item() == pytest.approx(config['official_l2_sum_of_branch_mse'], rel=1e-4)
    assert terms['l_triplet'].item() == pytest.approx(official['value'], rel=1e-4)
    expected_total = config['official_l2_sum_of_branch_mse'] + official['value']
    assert loss(branches, target).item() == pytest.approx(expected_total, rel=1e-4)


def naive_triplet(branches, target, margins, theta, gray, norm, depth=2, width=2):
    """Eq. 3-5 written out pair by pair, as a second implementation."""
    def g(img):
        if gray == 'y':
            img = (img * torch.tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255).sum(1, keepdim=True)
        else:
            img = img.mean(1, keepdim=True)
        dims = (1, 2, 3) if norm == 'image' else (0, 1, 2, 3)
        return (img - img.mean(dims, keepdim=True)) / img.std(dims, keepdim=True, unbiased=False)

    res = [(g(b) - g(target)).abs() for b in branches]
    num, total = len(res), 0.0
    for i in range(num):
        for j in range(num):
            if i == j:
                continue
            level = 1 + sum(int(i // width**(depth - l) == j // width**(depth - l)) for l in range(1, depth))
            d_ap = (res[i]**2).mean()
            d_an = ((res[i] - res[j])**2).mean()
            total = total + theta**(level - 1) * torch.clamp(d_ap - d_an + margins[level - 1], min=0)
    return total / (num * (num - 1))


@pytest.mark.parametrize('gray,norm', [('y', 'image'), ('mean', 'batch'), ('y', 'batch')])
@pytest.mark.parametrize('depth,width', [(2, 2), (1, 3), (3, 2)])
def test_triplet_matches_the_equations(gray, norm, depth, width):
    torch.manual_seed(0)
    target = torch.rand(2, 3, 12, 12)
    branches = [target + 0.1 * torch.randn_like(target) for _ in range(width**depth)]
    margins = [0.05 * (k + 1) for k in range(depth)]
    loss = DivergenceLoss(alpha=1.0, margins=margins, theta=0.7, gray=gray, norm=norm, depth=depth, width=width)
    expected = naive_triplet(branches, target, margins, 0.7, gray, norm, depth, width)
    torch.testing.assert_close(loss.triplet(branches, target), expected, rtol=1e-4, atol=1e-6)


def test_triplet_term_carries_gradient():
    """The authors' loop detaches it (.item()); here it must push every branch."""
    torch.manual_seed(0)
    target = torch.rand(1, 3, 16, 16)
    branches = [(target + 0.05 * torch.randn_like(target)).requires_grad_() for _ in range(4)]
    loss = DivergenceLoss(alpha=1.0, margins=[0.5, 0.5])
    loss.triplet(branches, target).backward()
    for b in branches:
        assert b.grad is not None and b.grad.abs().sum() > 0


def test_margins_change_no_gradient_while_every_hinge_is_on():
    """What the evidence's margins run rests on: with every pair's hinge on, the authors' margins and 1000x them
    give the same gradient to the bit (the loss differs by a constant); where a hinge is off for the small
    margins and on for the large ones, the gradients differ."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 16, 16)
    shift = 0.3 * torch.rand(2, 3, 1, 1)
    on = [target + shift + 0.01 * torch.randn_like(target) for _ in range(4)]  # close to each other, far from HR
    authors, large = [5e-5, 2e-5], [5e-2, 2e-2]

    def grads(branches, margins):
        leaves = [b.clone().requires_grad_() for b in branches]
        loss = DivergenceLoss(alpha=1.0, margins=margins)
        value = loss.triplet(leaves, target)
        value.backward()
        return value.detach(), [b.grad for b in leaves], float(loss.active_share(leaves, target))

    v_small, g_small, active_small = grads(on, authors)
    v_large, g_large, _ = grads(on, large)
    assert active_small == 1.0 and v_large > v_small
    assert all(torch.equal(a, b) for a, b in zip(g_small, g_large))
    # residuals in separate places (each branch is noise in its own quadrant, right elsewhere): every hinge is off
    # at the authors' margins (no gradient) and on at margins above the largest gap (a gradient): there the
    # margins do matter
    off = []
    for k in range(4):
        branch = target.clone()
        branch[..., 8 * (k // 2):8 * (k // 2) + 8, 8 * (k % 2):8 * (k % 2) + 8] = torch.rand(2, 3, 8, 8)
        off.append(branch)
    gaps = DivergenceLoss(alpha=1.0, margins=[0.0, 0.0]).pair_hinges(torch.stack(off), target)
    wide = float(-gaps[~torch.eye(4, dtype=torch.bool)].min()) + 0.01
    _, g_small, active_small = grads(off, authors)
    _, g_wide, active_wide = grads(off, [wide, wide])
    assert active_small == 0.0 and active_wide == 1.0
    assert all(not g.any() for g in g_small) and all(g.abs().sum() > 0 for g in g_wide)


def test_alpha_zero_gives_plain_sum_of_mse():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 8, 8)
    branches = [torch.rand(1, 3, 8, 8) for _ in range(4)]
    loss = DivergenceLoss(alpha=0.0)
    expected = sum(torch.nn.functional.mse_loss(b, target) for b in branches)
    torch.testing.assert_close(loss(branches, target), expected)


def test_pair_depths():
    common = tree_pair_depths(2, 2)
    assert common.tolist() == [[2, 2, 1, 1], [2, 2, 1, 1], [1, 1, 2, 2], [1, 1, 2, 2]]


def authors_adjust_diver(step, steps_per_epoch, diver_w=2e-5, start=200, every=1000, epochs=200, decay_epoch=2000,
                         rate=0.5):
    """The authors' ``train.py``: ``adjust_diver(step // steps_per_epoch, ...)`` for their steps 0, 1, ... (numpy)."""
    epoch = step // steps_per_epoch
    return np.where((epoch > start) & (epoch % every < epochs), diver_w * rate**(epoch // decay_epoch), 0.0)


def test_schedule_in_epochs_is_the_authors_adjust_diver_iteration_for_iteration():
    """The whole x4 schedule (20000 epochs of 459 // 4 = 114 steps): BasicSR's iteration ``i`` is the authors'
    step ``i - 1``; every one of the 2,280,000 values is theirs. The first window is epochs 1000-1199."""
    sched = DivergenceWeightSchedule(2e-5, iters_per_epoch=114, start_epoch=200, every_epochs=1000, on_epochs=200,
                                     decay_epochs=2000, decay_factor=0.5)
    total = 20000 * 114
    ours = np.array([sched(it) for it in range(1, total + 1)])
    theirs = authors_adjust_diver(np.arange(total), 114)
    assert np.array_equal(ours, theirs)
    first = int(np.argmax(ours > 0)) + 1
    assert first == 1000 * 114 + 1 and sched(first - 1) == 0.0  # iteration 114001: step 114000, epoch 1000
    assert sched(1200 * 114) > 0 and sched(1200 * 114 + 1) == 0.0  # last iteration of epoch 1199, then off
    assert sched(2000 * 114 + 1) == pytest.approx(1e-5)  # halved from epoch 2000
    # the iteration form (d2csr's own): off while current_iter <= start_iter, on for on_iters of every period
    it_sched = DivergenceWeightSchedule(1.0, start_iter=5, period=10, on_iters=3, decay_every=20)
    assert [it_sched(i) for i in range(1, 24)] == [0.0] * 9 + [1, 1, 1] + [0.0] * 7 + [0.5, 0.5, 0.5, 0.0]
    loss = DivergenceLoss(alpha=1.0, alpha_schedule=dict(start_iter=5))
    assert loss.terms([torch.rand(1, 3, 4, 4)] * 4, torch.rand(1, 3, 4, 4), current_iter=3)['alpha'] == 0.0
    with pytest.raises(ValueError, match='not both'):
        DivergenceWeightSchedule(1.0, start_iter=5, iters_per_epoch=10, start_epoch=2)
    with pytest.raises(ValueError, match='iters_per_epoch'):
        DivergenceWeightSchedule(1.0, start_epoch=2)


def test_convergence_loss_is_mse():
    a, b = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(ConvergenceLoss(loss_weight=2.0)(a, b), 2 * torch.nn.functional.mse_loss(a, b))


@pytest.mark.parametrize('kwargs', [dict(gray='rgb'), dict(norm='pixel'), dict(margins=[1.0, 2.0, 3.0])])
def test_invalid_loss_options(kwargs):
    with pytest.raises(ValueError):
        DivergenceLoss(**kwargs)
