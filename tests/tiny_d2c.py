"""Tiny D2CSR networks of every backbone, for the tests that read networks back from their weights (d2csr's
loader, spandrel, ONNX export): small, with options away from the defaults and weights away from the
initialisation, so that a reader that falls back on a default or a layout that ignores a bias shows."""
import torch

from d2csr.archs import D2CSR

TINY_BACKBONE_OPT = {  # two blocks wherever a count is read off the weights; no value is the backbone's default
    'rcan': dict(num_group=2, num_block=2, squeeze_factor=4),
    'edsr': dict(num_block=2),
    'srresnet': dict(num_block=2),
    'rrdbnet': dict(num_block=2, num_grow_ch=4),
    'rdn': dict(num_block=2, num_layer=2, num_grow_ch=4),
    'imdn': dict(num_block=2, distill_rate=0.5),
    'vdsr': dict(num_conv=2),
}


def tiny_d2c(backbone='rcan', noise=0.02, **kwargs):
    """``(D2CSR in eval mode, its network_g options)``: 8 features, ``backbone`` with :data:`TINY_BACKBONE_OPT`
    (RCAN's at the top of network_g, the others' in ``backbone_opt``), ``kwargs`` on top; every parameter
    moved by ``noise`` x N(0, 1) (seeded)."""
    opts = dict(type='D2CSR', num_feat=8, fusion_feat=8, backbone=backbone)
    if backbone == 'rcan':
        opts.update(TINY_BACKBONE_OPT['rcan'])
    else:
        opts['backbone_opt'] = TINY_BACKBONE_OPT[backbone]
    opts.update(kwargs)
    torch.manual_seed(0)
    net = D2CSR(**{k: v for k, v in opts.items() if k != 'type'}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(noise * torch.randn_like(p))
    return net, opts
