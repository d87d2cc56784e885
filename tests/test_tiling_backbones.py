"""Exact tiled inference for every backbone x upsampler that D2CSR accepts (D2C-IMDN, D2C-VDSR, ...)."""
import pytest
import torch

from d2csr.archs import D2CSR
from d2csr.archs.branch_modules import branch_module_names
from d2csr.archs.d2csr_arch import UPSAMPLERS
from d2csr.tiling import feature_factor, receptive_radius, tiled_forward

TINY_BACKBONE_OPT = {  # the smallest node of each backbone: the check is about tiling, not capacity
    'rcan': dict(num_group=1, num_block=1, squeeze_factor=4),
    'edsr': dict(num_block=1),
    'srresnet': dict(num_block=1),
    'rrdbnet': dict(num_block=1, num_grow_ch=4),
    'rdn': dict(num_block=1, num_layer=2, num_grow_ch=4),
    'imdn': dict(num_block=1, distill_rate=0.5),  # 8 features * 0.5 = 4 distilled channels
    'vdsr': dict(num_conv=2),
}


def test_every_registered_backbone_is_covered():
    assert sorted(TINY_BACKBONE_OPT) == branch_module_names()


@pytest.mark.parametrize('upsampler', UPSAMPLERS)
@pytest.mark.parametrize('backbone', sorted(TINY_BACKBONE_OPT))
def test_tiled_equals_untiled_for_every_backbone_and_upsampler(backbone, upsampler):
    upscale = 3 if upsampler == 'pixelshuffle' else 2
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, upscale=upscale, depth=2, width=2, backbone=backbone,
                backbone_opt=TINY_BACKBONE_OPT[backbone], upsampler=upsampler, fusion_feat=8,
                bicubic_skip=upsampler == 'bicubic_input').eval()
    with torch.no_grad():  # a convergence net whose weights really vary over the image
        for p in net.fusion.parameters():
            p.mul_(4)
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        branches = net.forward_branches(x)
        sr, weights = net.fuse(branches)
    assert sr.shape == (1, 3, 11 * upscale, 9 * upscale)
    for tile in (0, 4):
        out = tiled_forward(net, x, tile=tile, return_branches=True, return_weights=True)
        assert out.sr.shape == sr.shape
        assert (out.sr - sr).abs().max() <= 1e-4, tile
        assert (out.weights - weights).abs().max() <= 1e-4, tile
        assert max((a - b).abs().max() for a, b in zip(out.branches, branches)) <= 1e-4, tile


def test_bicubic_input_features_are_at_the_output_size_and_the_radius_is_in_lr_pixels():
    net = D2CSR(num_feat=8, upscale=4, backbone='vdsr', backbone_opt=dict(num_conv=2), upsampler='bicubic_input',
                fusion_feat=8).eval()
    assert feature_factor(net) == 4
    # tail: one 3x3 conv at HR (1/4 LR pixel) + fusion: three 3x3 convs at HR (3/4) -> ceil(1.0) + 1
    assert receptive_radius(net) == 2
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert net.leaf_features(x)[0].shape[-2:] == (40, 40)
        assert (tiled_forward(net, x, tile=3).sr - net(x)).abs().max() <= 1e-4
