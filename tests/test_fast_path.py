"""The fast forward path equals the straightforward per-branch one (outputs and gradients); the benchmark runs."""
import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT, subprocess_env
from d2csr.archs import D2CSR, register_branch_module

TOL = dict(atol=1e-5, rtol=1e-5)

# (depth, width, scale, extra options): trees of every shape the tests of the arch use, all scales,
# the three mean shifts, the ablation without deep residuals and the bicubic skip
CASES = [
    (1, 1, 2, {}),
    (1, 3, 3, dict(mean_shift='learnable')),
    (2, 2, 4, {}),
    (3, 2, 2, dict(mean_shift='none', img_range=255.0)),
    (2, 3, 8, dict(bicubic_skip=True)),
    (2, 2, 3, dict(deep_residual=False)),
    (2, 2, 2, dict(upsampler='bicubic_input', bicubic_skip=True, mean_shift='none')),  # D2C-VDSR's tails
    (1, 2, 4, dict(upsampler='pixelshuffledirect')),  # D2C-IMDN's tails
]


def tiny_net(depth, width, scale, **opts):
    torch.manual_seed(depth * 100 + width * 10 + scale)
    net = D2CSR(num_feat=8, num_group=2, num_block=2, squeeze_factor=4, upscale=scale, depth=depth, width=width,
                fusion_feat=8, **opts)
    with torch.no_grad():  # biases are zero-initialised nowhere, but make every parameter matter
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def reference_outputs(net, x):
    branches = net.reference_forward_branches(x)
    sr, weights = net.reference_fuse(branches)
    return branches, sr, weights


@pytest.mark.parametrize('depth,width,scale,opts', CASES)
def test_fast_inference_equals_reference(depth, width, scale, opts):
    net = tiny_net(depth, width, scale, **opts).eval()
    x = torch.rand(2, 3, 7, 6)
    with torch.no_grad():
        ref_branches, ref_sr, ref_weights = reference_outputs(net, x)
    for channels_last in (True, False):
        net.set_speed_options(channels_last=channels_last)
        with torch.inference_mode():
            branches = net.forward_branches(x)
            sr, weights = net.fuse(branches)
            forward_sr = net(x)
        assert len(branches) == len(ref_branches) == width**depth
        for fast, ref in zip(branches, ref_branches):
            assert fast.shape == ref.shape
            torch.testing.assert_close(fast, ref, **TOL)
        torch.testing.assert_close(sr, ref_sr, **TOL)
        torch.testing.assert_close(weights, ref_weights, **TOL)
        torch.testing.assert_close(forward_sr, ref_sr, **TOL)


def _grads(net, x, outputs_fn, seed=0):
    """Gradients of a random linear function of every branch and the fused output, for all parameters and x."""
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    branches, sr = outputs_fn(x)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((b * torch.randn(b.shape, generator=gen)).sum() for b in branches)
    loss = loss + (sr * torch.randn(sr.shape, generator=gen)).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    grads['input'] = x.grad.clone()
    return loss.detach(), grads


@pytest.mark.parametrize('depth,width,scale,opts', CASES)
def test_fast_gradients_equal_reference(depth, width, scale, opts):
    net = tiny_net(depth, width, scale, **opts).train()
    x = torch.rand(2, 3, 6, 5)

    def reference(inp):
        branches, sr, _ = reference_outputs(net, inp)
        return branches, sr

    def fast(inp):
        branches = net.forward_branches(inp)
        return branches, net.fuse(branches)[0]

    ref_loss, ref_grads = _grads(net, x, reference)
    loss, grads = _grads(net, x, fast)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        scale_ = ref_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5 * max(1.0, scale_), rtol=1e-5,
                                   msg=lambda m, n=name: f'gradient of {n}: {m}')


def test_converge_mode_trains_only_the_fusion_net_as_the_reference_does():
    net = tiny_net(2, 2, 2)
    x = torch.rand(1, 3, 6, 6)
    sr = net(x, mode='converge')
    (sr**2).mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None for n, g in grads.items() if n.startswith('fusion.'))
    assert all(g is None for n, g in grads.items() if not n.startswith('fusion.'))
    with torch.no_grad():
        ref_sr = net.reference_fuse(net.reference_forward_branches(x))[0]
    torch.testing.assert_close(sr.detach(), ref_sr, **TOL)


def test_speed_options_leave_the_checkpoint_layout_alone():
    net = tiny_net(2, 2, 4)
    keys = list(net.state_dict())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.set_speed_options(channels_last=False, autocast='bf16')
    with torch.no_grad():
        net(torch.rand(1, 3, 5, 5))
    assert list(net.state_dict()) == keys
    fresh = D2CSR(num_feat=8, num_group=2, num_block=2, squeeze_factor=4, upscale=4, fusion_feat=8)
    fresh.load_state_dict(net.state_dict(), strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])


def test_inference_follows_weight_changes_and_input_sizes():
    """Whatever the fast path keeps between calls, it sees in-place updates (an optimizer step), updates
    through ``.data`` (BasicSR's EMA), a loaded state dict, a replaced parameter and other input sizes."""
    net = tiny_net(2, 2, 3).eval()
    x = torch.rand(2, 3, 7, 6)

    def check(inp):
        with torch.inference_mode():
            fast = net(inp)
        with torch.no_grad():
            ref = net.reference_fuse(net.reference_forward_branches(inp))[0]
        torch.testing.assert_close(fast, ref, **TOL)
        return fast

    before = check(x)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after_step = check(x)
    assert not torch.allclose(after_step, before)
    for p in net.parameters():  # bumps no version counter
        p.data.mul_(0.9).add_(0.01)
    assert not torch.allclose(check(x), after_step)
    net.load_state_dict(tiny_net(2, 2, 3).state_dict())
    check(x)
    net.head.weight = nn.Parameter(torch.randn_like(net.head.weight))
    check(x)
    check(torch.rand(1, 3, 9, 11))
    clone = copy.deepcopy(net)
    with torch.inference_mode():
        torch.testing.assert_close(clone(x), net(x), **TOL)


def test_bad_autocast_option_is_named():
    with pytest.raises(ValueError, match='autocast'):
        tiny_net(1, 2, 2).set_speed_options(autocast='int8')


def test_bf16_autocast_inference_is_close_and_returns_the_input_dtype():
    net = tiny_net(2, 2, 2).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        ref = net(x)
        net.set_speed_options(autocast='bf16')
        low = net(x)
        branches = net.forward_branches(x)
    assert low.dtype == torch.float32 and all(b.dtype == torch.float32 for b in branches)
    assert (low - ref).abs().max().item() < 0.05
    assert not torch.equal(low, ref)  # it did run in bf16


def test_other_backbones_fall_back_to_their_own_forward(monkeypatch):
    from d2csr.archs import branch_modules

    monkeypatch.setattr(branch_modules, '_BRANCH_MODULES', dict(branch_modules._BRANCH_MODULES))  # undone after
    """A backbone the fast path does not know (not RCAN) still gives the reference's outputs and gradients."""

    class Gate(nn.Module):  # neither nn.Sequential nor made of RCAN blocks
        def __init__(self, num_feat):
            super().__init__()
            self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

        def forward(self, x):
            return x + torch.tanh(self.conv(x))

    register_branch_module('test_gate')(lambda num_feat: Gate(num_feat))
    register_branch_module('test_seq')(lambda num_feat: nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 1, 1),
                                                                      nn.LeakyReLU(0.1), Gate(num_feat)))
    for backbone in ('test_gate', 'test_seq'):
        torch.manual_seed(0)
        net = D2CSR(num_feat=8, upscale=2, backbone=backbone, fusion_feat=8)
        x = torch.rand(1, 3, 5, 6)
        with torch.inference_mode():
            torch.testing.assert_close(net(x), net.reference_fuse(net.reference_forward_branches(x))[0], **TOL)
        ref_loss, ref_grads = _grads(net, x, lambda i: (net.reference_forward_branches(i), torch.zeros(())))
        loss, grads = _grads(net, x, lambda i: (net.forward_branches(i), torch.zeros(())))
        assert grads.keys() == ref_grads.keys() and len(grads) > 1
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], **TOL)


def test_benchmark_smoke_mode_reports_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_d2c.py'), '--smoke', '--json',
                           '--threads', '1'],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert set(res['rows']) == {'fast', 'reference', 'reference_cl', 'rcan'}
    assert res['conv_limit_gflops']['limit'] == max(res['conv_limit_gflops']['nchw'],
                                                    res['conv_limit_gflops']['channels_last']) > 0
    assert res['fast_vs_reference_max_abs_diff'] < 1e-5

    # the FLOPs are counted: they equal the sum over the smoke network's convs, read off forward hooks
    s = res['setting']
    net = D2CSR(num_feat=16, num_group=1, num_block=1, squeeze_factor=4, fusion_feat=16, upscale=s['scale'])
    flops = []

    def hook(m, inp, out):
        flops.append(2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net.reference_fuse(net.reference_forward_branches(torch.rand(1, 3, s['size'], s['size'])))
    d2c_rows = [res['rows'][k] for k in ('fast', 'reference', 'reference_cl')]
    for row in d2c_rows:
        assert row['infer_flops_per_image'] == sum(flops)
        assert row['params'] == sum(p.numel() for p in net.parameters())
        assert row['train_flops_per_step'] > 2 * s['train_batch'] * row['infer_flops_per_image']  # + backward
    rcan = res['rows']['rcan']
    assert abs(rcan['params'] - d2c_rows[0]['params']) < 0.05 * d2c_rows[0]['params']
    for row in res['rows'].values():
        for key in ('infer_s', 'infer_s_median', 'train_s', 'infer_gflops', 'train_gflops', 'infer_peak_bytes',
                    'train_peak_bytes'):
            assert row[key] > 0, key
        assert row['infer_of_limit'] == pytest.approx(row['infer_gflops'] / res['conv_limit_gflops']['limit'])
    assert res['ratios']['infer_speedup_vs_reference'] == pytest.approx(
        res['rows']['reference']['infer_s'] / res['rows']['fast']['infer_s'])
