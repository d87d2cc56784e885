"""One table for branches and fusions (d2csr/evaluation.py): the mean-of-branches row, the weights' deviation
from uniform, one bicubic baseline, and the convergence net's optional last ReLU."""
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr
from basicsr.utils import tensor2img
from basicsr.utils.matlab_functions import imresize

from d2csr.archs import D2CSR
from d2csr.evaluation import (BICUBIC_LABEL, MEAN_LABEL, bicubic_upsample, format_table, fusion_metrics, mean_fusion,
                              weight_mad)


def _gt(seed=0, size=32):
    torch.manual_seed(seed)
    return torch.rand(1, 3, size, size) * 0.6 + 0.2


def test_equal_branches_mean_equals_each_branch():
    gt = _gt()
    branch = (gt + 0.05 * torch.randn_like(gt)).clamp(0, 1)
    branches = [branch.clone() for _ in range(4)]
    rows = fusion_metrics(branches, branch, gt, scale=2, ssim=True)
    assert list(rows) == ['branch1', 'branch2', 'branch3', 'branch4', 'mean', 'fused', 'oracle']
    expected = calculate_psnr(tensor2img([branch]), tensor2img([gt]), 2, test_y_channel=True)
    for row in ('branch1', 'branch4', 'mean', 'fused', 'oracle'):
        assert rows[row]['psnr'] == pytest.approx(expected)
        assert rows[row]['ssim'] == pytest.approx(rows['branch1']['ssim'])
    torch.testing.assert_close(mean_fusion(branches), branch)


def test_opposite_errors_mean_is_better_than_each_branch():
    gt = _gt(1)
    noise = 0.08 * torch.randn_like(gt)
    branches = [gt + noise, gt - noise, gt + 0.5 * noise, gt - 0.5 * noise]  # errors cancel in the mean
    rows = fusion_metrics(branches, branches[0], gt, scale=2, test_y_channel=False)
    best = max(rows[f'branch{i}']['psnr'] for i in range(1, 5))
    assert rows['mean']['psnr'] > best + 10  # the mean is gt up to 8-bit rounding
    assert rows['fused']['psnr'] == pytest.approx(rows['branch1']['psnr'])
    # the oracle takes, per pixel, the branch closest to HR: as good as the best branch (up to 8-bit rounding)
    assert rows['oracle']['psnr'] >= best - 0.05


def test_weight_mad_uniform_one_hot_and_bounds():
    uniform = torch.full((2, 4, 5, 6), 0.25)
    assert weight_mad(uniform) == 0.0
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 5, 6)), 4).permute(0, 3, 1, 2).float()
    assert weight_mad(one_hot) == pytest.approx(2 * 3 / 16)  # 2 (P - 1) / P^2
    soft = torch.softmax(torch.randn(2, 4, 5, 6), dim=1)
    assert 0 < weight_mad(soft) < 2 * 3 / 16


def test_untrained_convergence_net_is_close_to_the_mean():
    """What the issue measured: with small logits the softmax is near uniform, so fused ~ mean of branches."""
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8).eval()
    lq = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        branches = net.forward_branches(lq)
        fused, weights = net.fuse(branches)
    assert weight_mad(weights) < 0.02
    torch.testing.assert_close(fused, mean_fusion(branches), atol=0.02, rtol=0)


def test_bicubic_row_is_matlab_imresize_everywhere():
    torch.manual_seed(2)
    lq = torch.rand(1, 3, 10, 12)
    up = bicubic_upsample(lq, 4)
    expected = np.clip(imresize(lq[0].permute(1, 2, 0).numpy(), 4), 0, 1)
    np.testing.assert_allclose(up[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert not torch.allclose(up, torch.nn.functional.interpolate(lq, scale_factor=4, mode='bicubic').clamp(0, 1),
                              atol=1e-3)  # not PyTorch's bicubic kernel
    gt = _gt(3, 48)[..., :40, :48]
    branches = [up.clone(), up.clone()]
    rows = fusion_metrics(branches, up, gt, scale=4, lq=lq)
    assert list(rows)[0] == 'bicubic' and rows['bicubic']['psnr'] == pytest.approx(rows['branch1']['psnr'])
    # a known value is taken as it is (the validation caches it per image)
    assert fusion_metrics(branches, up, gt, scale=4, bicubic=12.5)['bicubic'] == {'psnr': 12.5}


def test_format_table_names_rows_and_weight_deviation():
    rows = fusion_metrics([_gt(4), _gt(5)], _gt(4), _gt(6), scale=2, lq=_gt(7, 16), ssim=True)
    rows['fused']['weight_mad'] = 0.0123
    table = format_table(rows, title='t')
    assert f'| {BICUBIC_LABEL} | {rows["bicubic"]["psnr"]:.2f} |' in table
    assert f'| {MEAN_LABEL} | {rows["mean"]["psnr"]:.2f} |' in table
    assert 'mean |W - 1/P| = 0.0123' in table and '0.500: one branch per pixel' in table  # P = 2


def test_fusion_last_relu_option_keeps_parameters_and_allows_negative_logits():
    torch.manual_seed(0)
    faithful = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8)
    variant = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8,
                    fusion_last_relu=False)
    variant.load_state_dict(faithful.state_dict())  # same parameter names: a stage-1 checkpoint loads
    assert isinstance(faithful.fusion.fusion[-1], torch.nn.ReLU)
    assert isinstance(variant.fusion.fusion[-1], torch.nn.Conv2d)
    lq = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        branches = variant.forward_branches(lq)
        logits = variant.fusion.fusion(torch.cat(branches, 1))
        sr, weights = variant.fuse(branches)
    assert (logits < 0).any()
    torch.testing.assert_close(weights, torch.softmax(logits, 1))
    ref_sr = sum(weights[:, i:i + 1] * b for i, b in enumerate(branches))  # eq. 8
    torch.testing.assert_close(sr, ref_sr, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='fusion_last_relu'):
        D2CSR(num_feat=8, squeeze_factor=4, fusion_last_relu='no')
