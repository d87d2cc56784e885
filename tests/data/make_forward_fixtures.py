"""Writes ``forward_fixtures.pt``: outputs and gradients of small D2CSR networks, as computed before the
fast path (``d2csr/archs/fast_tree.py``) was folded into the modules (commit dd9a263).

Each case holds the configuration, the weights, an input, the ``P`` branches, the fused output and the
convergence weights (inference), and the gradients of a fixed random linear function of the branches and
the fused output for every parameter and the input (training mode). ``tests/test_fast_path.py`` checks the
current forward against them to 1e-5 (fp32). Run from the repository root:
``PYTHONPATH=. python tests/data/make_forward_fixtures.py``.
"""
from pathlib import Path

import torch

import d2csr  # noqa: F401
from d2csr.archs import D2CSR

OUT = Path(__file__).with_name('forward_fixtures.pt')
TINY = dict(num_feat=4, num_group=1, num_block=1, squeeze_factor=2, fusion_feat=4)

# (depth, width, scale, options): every tree shape, scale, mean shift, tail and backbone
CASES = [
    (1, 1, 2, {}),
    (1, 3, 3, dict(mean_shift='learnable')),
    (2, 2, 4, {}),
    (3, 2, 2, dict(mean_shift='none', img_range=255.0)),
    (2, 3, 8, dict(bicubic_skip=True)),
    (2, 2, 3, dict(deep_residual=False)),
    (2, 2, 2, dict(upsampler='bicubic_input', bicubic_skip=True, mean_shift='none')),
    (1, 2, 4, dict(upsampler='pixelshuffledirect')),
    (1, 2, 2, dict(backbone='edsr', backbone_opt=dict(num_block=1, res_scale=0.5))),
    (1, 2, 2, dict(backbone='srresnet', backbone_opt=dict(num_block=1))),
    (1, 2, 2, dict(backbone='rrdbnet', backbone_opt=dict(num_block=1, num_grow_ch=4))),
    (1, 2, 3, dict(backbone='rdn', backbone_opt=dict(num_block=1, num_layer=2, num_grow_ch=4))),
    (1, 2, 4, dict(backbone='imdn', backbone_opt=dict(num_block=1, distill_rate=0.5))),
    (1, 2, 2, dict(backbone='vdsr', backbone_opt=dict(num_conv=2), upsampler='bicubic_input', bicubic_skip=True)),
]


def build(depth, width, scale, opts, seed):
    torch.manual_seed(seed)
    net_opts = dict(TINY, upscale=scale, depth=depth, width=width)
    net_opts.update(opts)
    if net_opts.get('backbone', 'rcan') != 'rcan':
        for key in ('num_group', 'num_block', 'squeeze_factor'):
            net_opts.pop(key)
        net_opts.update(num_feat=8)
    net = D2CSR(**net_opts)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net, net_opts


def gradients(net, x, seed):
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    branches = net.forward_branches(x)
    sr = net.fuse(branches)[0]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((b * torch.randn(b.shape, generator=gen)).sum() for b in branches)
    loss = loss + (sr * torch.randn(sr.shape, generator=gen)).sum()
    loss.backward()
    grads = {name: p.grad.clone(memory_format=torch.contiguous_format) for name, p in net.named_parameters() if p.grad is not None}
    grads['input'] = x.grad.clone()
    return loss.detach(), grads


def main():
    cases = []
    for i, (depth, width, scale, opts) in enumerate(CASES):
        net, net_opts = build(depth, width, scale, opts, seed=i)
        gen = torch.Generator().manual_seed(100 + i)
        x = torch.rand(1 if scale == 8 else 2, 3, 7, 6, generator=gen)
        net.eval()
        with torch.no_grad():
            branches = net.forward_branches(x)
            sr, weights = net.fuse(branches)
            if hasattr(net, 'reference_fuse'):  # at dd9a263: the fast path against the plain per-branch walk
                ref = net.reference_fuse(net.reference_forward_branches(x))[0]
                assert (sr - ref).abs().max() < 1e-5
        net.train()
        loss, grads = gradients(net, x[:, :, :6, :5], seed=200 + i)
        cases.append(dict(net_opts=net_opts, state_dict={k: v.clone() for k, v in net.state_dict().items()},
                          x=x, branches=[b.clone(memory_format=torch.contiguous_format) for b in branches],
                          sr=sr.clone(memory_format=torch.contiguous_format),
                          weights=weights.clone(memory_format=torch.contiguous_format), grad_seed=200 + i, loss=loss, grads=grads))
        print(i, net_opts, f'{sum(p.numel() for p in net.parameters())} params')
    torch.save(dict(made_at='dd9a263 (fast_tree.forward_branches / fuse, fp32, CPU)', cases=cases), OUT)
    print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
    main()
