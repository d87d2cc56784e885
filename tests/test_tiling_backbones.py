"""Exact tiled inference for every backbone x upsampler that D2CSR accepts (D2C-IMDN, D2C-VDSR, ...): the LR half
in bands (the default) and in one piece, the HR half in tiles; the bounded mode where it is exact."""
import pytest
import torch

from d2csr.archs import D2CSR
from d2csr.archs.branch_modules import branch_module_names
from d2csr.archs.d2csr_arch import UPSAMPLERS
from d2csr.banded import BandRunner, banded_leaves
from d2csr.tiling import bounded_forward, feature_factor, network_radius, receptive_radius, tiled_forward

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
    # LR half in bands of 2 rows (6 bands: every channel attention pools over bands it never holds at once) or 100
    # (one band), or in one piece; HR half in one piece or in tiles
    for lr, band_rows, tile in (('banded', 2, 4), ('whole', None, 0)):
        case = (lr, band_rows, tile)
        out = tiled_forward(net, x, tile=tile, return_branches=True, return_weights=True, lr=lr, band_rows=band_rows)
        assert out.sr.shape == sr.shape
        assert (out.sr - sr).abs().max() <= 1e-4, case
        assert (out.weights - weights).abs().max() <= 1e-4, case
        assert max((a - b).abs().max() for a, b in zip(out.branches, branches)) <= 1e-4, case
    # without the branches, leaves whose feature is smaller than their prediction (x3) keep the feature
    assert (tiled_forward(net, x, tile=4, band_rows=3).sr - sr).abs().max() <= 1e-4
    # the bounded mode (tiles of the whole network widened by its radius): exact where the backbone has no
    # channel attention, close where its statistics come from the first pass (on tiles smaller than the image)
    x = torch.rand(1, 3, 40, 36)
    if 6 + 2 * network_radius(net) < 36 and (upsampler == 'pixelshuffledirect' or (backbone, upsampler) == (
            'rcan', 'bicubic_input')):  # (the suite's time: one upsampler each, and channel attention at HR)
        with torch.no_grad():
            sr = net(x)
        deviation = (bounded_forward(net, x, tile=6).sr - sr).abs().max()
        if backbone in ('rcan', 'imdn'):
            assert 0 < deviation < 0.1
        else:
            assert deviation <= 1e-4


@pytest.mark.parametrize('kwargs', [dict(depth=3, width=2), dict(depth=2, width=3, deep_residual=False),
                                    dict(depth=1, width=3), dict(depth=2, width=1)])
def test_banded_leaves_equal_leaf_features_for_other_trees(kwargs):
    """The walk frees or overwrites each map at its last use (the parent's last child folds its residual adds)."""
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, num_group=2, num_block=2, squeeze_factor=4, upscale=2, **kwargs).eval()
    x = torch.rand(1, 3, 13, 7)
    with torch.no_grad():
        expected = net.leaf_features(x)
    got = {}
    banded_leaves(net, x, got.__setitem__, BandRunner(rows=3))
    assert sorted(got) == list(range(net.num_branches))
    assert max((got[i] - e).abs().max() for i, e in enumerate(expected)) <= 1e-5


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
