"""One forward: the modules' own forward (channels-last, in-place RCAN blocks, leaf-by-leaf HR tails) gives
the outputs and gradients of the former fast path (fixtures) in either memory format; the benchmark runs."""
import json
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ROOT, run_script
from d2csr.archs import D2CSR, register_branch_module

TOL = dict(atol=1e-5, rtol=1e-5)
FIXTURES = torch.load(Path(__file__).parent / 'data' / 'forward_fixtures.pt', weights_only=True)['cases']
CASE_IDS = [f"{i}-L{c['net_opts']['depth']}C{c['net_opts']['width']}x{c['net_opts']['upscale']}-"
            f"{c['net_opts'].get('backbone', 'rcan')}" for i, c in enumerate(FIXTURES)]


def fixture_net(case, memory_format=torch.channels_last):
    net = D2CSR(**case['net_opts'])
    net.load_state_dict(case['state_dict'], strict=True)
    return net.set_memory_format(memory_format)


def _grads(net, x, seed):
    """Gradients of the fixtures' random linear function of every branch and the fused output."""
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    branches = net.forward_branches(x)
    sr = net.fuse(branches)[0]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((b * torch.randn(b.shape, generator=gen)).sum() for b in branches)
    loss = loss + (sr * torch.randn(sr.shape, generator=gen)).sum()
    loss.backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    grads['input'] = x.grad
    return loss.detach(), grads


@pytest.mark.parametrize('case', FIXTURES, ids=CASE_IDS)
@pytest.mark.parametrize('memory_format', [torch.channels_last, torch.contiguous_format], ids=['nhwc', 'nchw'])
def test_inference_equals_the_former_fast_path(case, memory_format):
    net = fixture_net(case, memory_format).eval()
    for x in (case['x'], case['x'].contiguous(memory_format=torch.channels_last)):
        with torch.inference_mode():
            branches = net.forward_branches(x)
            sr, weights = net.fuse(branches)
            forward_sr = net(x)
        assert len(branches) == len(case['branches'])
        for got, ref in zip(branches, case['branches']):
            assert got.shape == ref.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, ref, **TOL)
        torch.testing.assert_close(sr, case['sr'], **TOL)
        torch.testing.assert_close(weights, case['weights'], **TOL)
        torch.testing.assert_close(forward_sr, case['sr'], **TOL)


@pytest.mark.parametrize('case', FIXTURES, ids=CASE_IDS)
@pytest.mark.parametrize('memory_format', [torch.channels_last, torch.contiguous_format], ids=['nhwc', 'nchw'])
def test_gradients_equal_the_former_fast_path(case, memory_format):
    net = fixture_net(case, memory_format).train()
    x = case['x'][:, :, :6, :5]
    loss, grads = _grads(net, x, case['grad_seed'])
    torch.testing.assert_close(loss, case['loss'], atol=1e-5 * max(1.0, case['loss'].abs().item()), rtol=1e-5)
    assert grads.keys() == case['grads'].keys()
    for name, ref in case['grads'].items():
        scale = ref.abs().max().item()
        torch.testing.assert_close(grads[name], ref, atol=1e-5 * max(1.0, scale), rtol=1e-5,
                                   msg=lambda m, n=name: f'gradient of {n}: {m}')


def test_weights_and_features_are_channels_last_and_checkpoints_unchanged():
    case = FIXTURES[2]
    net = fixture_net(case)
    assert net.memory_format == torch.channels_last
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    features = net.leaf_features(case['x'])  # an NCHW input is laid out NHWC inside
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features)
    # same parameter names as before; loads into either layout and back, values unchanged
    assert list(net.state_dict()) == list(case['state_dict'])
    nchw = D2CSR(**case['net_opts']).set_memory_format(torch.contiguous_format)
    nchw.load_state_dict(net.state_dict(), strict=True)
    assert nchw.head.weight.is_contiguous()
    for k, v in nchw.state_dict().items():
        assert torch.equal(v, case['state_dict'][k]), k
    with pytest.raises(ValueError, match='memory_format'):
        net.set_memory_format(torch.preserve_format)


def test_only_one_leafs_hr_features_are_alive_at_a_time():
    """Each tail's upsampled (HR, ``num_feat``-channel) features are freed before the next tail starts."""
    net = fixture_net(FIXTURES[2]).eval()
    alive = []

    def pre_hook(module, inputs):
        assert all(ref() is None for ref in alive), 'an earlier leaf\'s HR features are still alive'

    def hook(module, inputs, output):
        alive.append(weakref.ref(output))

    for tail in net.tails:
        tail.register_forward_pre_hook(pre_hook)
        tail[0].register_forward_hook(hook)  # the upsampler: HR features
    with torch.inference_mode():
        net(FIXTURES[2]['x'])
    assert len(alive) == net.num_branches


def test_converge_mode_trains_only_the_fusion_net():
    case = FIXTURES[2]
    net = fixture_net(case)
    sr = net(case['x'], mode='converge')
    (sr**2).mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None for n, g in grads.items() if n.startswith('fusion.'))
    assert all(g is None for n, g in grads.items() if not n.startswith('fusion.'))
    torch.testing.assert_close(sr.detach(), case['sr'], **TOL)


def test_bf16_autocast_inference_is_close_and_returns_fp32():
    case = FIXTURES[2]
    net = fixture_net(case).eval()
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        branches = net.forward_branches(case['x'])
        sr, weights = net.fuse(branches)
    assert sr.dtype == weights.dtype == torch.float32 and all(b.dtype == torch.float32 for b in branches)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the weights stay fp32
    assert (sr - case['sr']).abs().max().item() < 0.05
    assert not torch.equal(sr, case['sr'])  # it did run in bf16


def test_a_registered_backbone_runs_in_both_layouts(monkeypatch):
    from d2csr.archs import branch_modules

    monkeypatch.setattr(branch_modules, '_BRANCH_MODULES', dict(branch_modules._BRANCH_MODULES))  # undone after

    class Gate(nn.Module):  # any module: the tree calls it as it is
        def __init__(self, num_feat):
            super().__init__()
            self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

        def forward(self, x):
            return x + torch.tanh(self.conv(x))

    register_branch_module('test_gate')(lambda num_feat: Gate(num_feat))
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, upscale=2, backbone='test_gate', fusion_feat=8)
    nchw = D2CSR(num_feat=8, upscale=2, backbone='test_gate', fusion_feat=8).set_memory_format(torch.contiguous_format)
    nchw.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 5, 6)
    _, grads = _grads(net, x, 0)
    _, ref_grads = _grads(nchw, x, 0)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), nchw(x), **TOL)


def test_benchmark_smoke_mode_reports_every_figure():
    proc = run_script(ROOT / 'benchmarks' / 'bench_d2c.py', '--smoke', '--json', '--threads', '1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert set(res['rows']) == {'channels_last', 'nchw', 'rcan'}
    assert res['conv_limit_gflops']['limit'] == max(res['conv_limit_gflops']['nchw'],
                                                    res['conv_limit_gflops']['channels_last']) > 0
    assert res['nchw_vs_channels_last_max_abs_diff'] < 1e-5

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
        net(torch.rand(1, 3, s['size'], s['size']))
    from basicsr.archs.rcan_arch import ChannelAttention
    for ca in (m for m in net.modules() if isinstance(m, ChannelAttention)):  # its 1x1 convs run as matmuls
        flops.extend(2 * m.in_channels * m.out_channels for m in ca.modules() if isinstance(m, nn.Conv2d))
    d2c_rows = [res['rows'][k] for k in ('channels_last', 'nchw')]
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
    assert res['ratios']['infer_speedup_vs_nchw'] == pytest.approx(
        res['rows']['nchw']['infer_s'] / res['rows']['channels_last']['infer_s'])

