"""RDN: Residual Dense Network (Zhang et al., "Residual Dense Network for Image Super-Resolution", CVPR 2018).

BasicSR has no RDN, so it is written here from the paper (Sec. 3, Fig. 2-3):

- shallow features ``F_-1 = SFE1(x)``, ``F_0 = SFE2(F_-1)`` (two 3x3 convs);
- ``D`` residual dense blocks (:class:`ResidualDenseBlock`, ``C`` densely connected conv+ReLU layers of
  growth rate ``G``, local feature fusion by a 1x1 conv, local residual);
- dense feature fusion :class:`RDNTrunk`: concat of the ``D`` block outputs -> 1x1 conv -> 3x3 conv (GFF),
  then global residual learning ``F_DF = F_GF + F_-1``;
- up-sampling net (ESPCN sub-pixel convs) and a 3x3 output conv. As in the authors' PyTorch release
  (EDSR-PyTorch ``rdn.py``), the up-sampling convs output ``G`` channels per sub-pixel.

The paper's full model (``D=16, C=8, G=64, G0=64``) has 22.3M parameters at x4. D2C-SR's Table 3 compares
with a 6.02M RDN without giving its configuration; ``options/train_RDN_x4.yml`` uses the authors' smaller
release configuration "A" (``D=20, C=6, G=32``: 5.58M at x4).

Shapes: :class:`ResidualDenseBlock` and :class:`RDNTrunk` map ``(N, G0, h, w) -> (N, G0, h, w)``;
:class:`RDN` maps ``(N, num_in_ch, h, w) -> (N, num_out_ch, s*h, s*w)``.
"""
import torch
from torch import nn
from d2csr.utils.registry import ARCH_REGISTRY  # d2csr's names, not BasicSR's table

from .arch_util import check_int


def _check_positive(owner, **values):
    for name, value in values.items():
        check_int(f'{owner}: {name}', value)


class ResidualDenseBlock(nn.Module):
    """RDN's residual dense block (RDB, paper Fig. 3).

    Layer ``c`` (0-based) is a 3x3 conv ``G0 + c*G -> G`` with ReLU on the concatenation of the block input
    and all previous layers' outputs; a 1x1 conv fuses ``G0 + C*G -> G0`` (local feature fusion) and the
    block input is added (local residual learning).

    Args:
        num_feat (int): ``G0``, channels in and out.
        num_grow_ch (int): growth rate ``G``. Default: 64.
        num_layer (int): conv layers ``C``. Default: 8.

    Shapes: ``(N, G0, h, w) -> (N, G0, h, w)``.
    """

    def __init__(self, num_feat, num_grow_ch=64, num_layer=8):
        super().__init__()
        _check_positive('ResidualDenseBlock', num_feat=num_feat, num_grow_ch=num_grow_ch, num_layer=num_layer)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(num_feat + c * num_grow_ch, num_grow_ch, 3, 1, 1), nn.ReLU(inplace=True))
            for c in range(num_layer))
        self.lff = nn.Conv2d(num_feat + num_layer * num_grow_ch, num_feat, 1)

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return self.lff(torch.cat(feats, dim=1)) + x


class RDNTrunk(nn.Module):
    """``D`` residual dense blocks and dense feature fusion (GFF: 1x1 conv over all block outputs, 3x3 conv).

    The global residual (``+ F_-1``) is left to the caller: :class:`RDN` adds its shallow feature, the D2C
    tree (backbone ``rdn``) its multi-branch deep residual structure.

    Args:
        num_feat (int): ``G0``.
        num_block (int): ``D`` blocks. Default: 16.
        num_grow_ch (int): ``G``. Default: 64.
        num_layer (int): ``C`` layers per block. Default: 8.

    Shapes: ``(N, G0, h, w) -> (N, G0, h, w)``.
    """

    def __init__(self, num_feat, num_block=16, num_grow_ch=64, num_layer=8):
        super().__init__()
        _check_positive('RDNTrunk', num_block=num_block)
        self.blocks = nn.ModuleList(
            ResidualDenseBlock(num_feat, num_grow_ch, num_layer) for _ in range(num_block))
        self.gff = nn.Sequential(
            nn.Conv2d(num_block * num_feat, num_feat, 1), nn.Conv2d(num_feat, num_feat, 3, 1, 1))

    def forward(self, x):
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return self.gff(torch.cat(outs, dim=1))


@ARCH_REGISTRY.register()
class RDN(nn.Module):
    """Residual Dense Network.

    Args:
        num_in_ch (int): input channels. Default: 3.
        num_out_ch (int): output channels. Default: 3.
        num_feat (int): ``G0``. Default: 64.
        num_block (int): residual dense blocks ``D``. Default: 16.
        num_layer (int): conv layers per block ``C``. Default: 8.
        num_grow_ch (int): growth rate ``G``. Default: 64.
        upscale (int): 2, 3 or 4. Default: 4.
        img_range (float): the network sees ``x * img_range``; the output is divided back. Default: 1.0.

    Shapes: ``(N, num_in_ch, h, w) -> (N, num_out_ch, s*h, s*w)``.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, num_layer=8, num_grow_ch=64, upscale=4,
                 img_range=1.0):
        super().__init__()
        _check_positive('RDN', num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat)
        if upscale not in (2, 3, 4):
            raise ValueError(f'RDN: upscale must be 2, 3 or 4, got {upscale!r}')
        self.img_range = img_range
        self.sfe1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.sfe2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.trunk = RDNTrunk(num_feat, num_block, num_grow_ch, num_layer)
        if upscale == 4:
            up = [nn.Conv2d(num_feat, num_grow_ch * 4, 3, 1, 1), nn.PixelShuffle(2),
                  nn.Conv2d(num_grow_ch, num_grow_ch * 4, 3, 1, 1), nn.PixelShuffle(2)]
        else:
            up = [nn.Conv2d(num_feat, num_grow_ch * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale)]
        self.upsample = nn.Sequential(*up)
        self.conv_last = nn.Conv2d(num_grow_ch, num_out_ch, 3, 1, 1)

    def forward(self, x):
        shallow = self.sfe1(x * self.img_range)
        feat = self.trunk(self.sfe2(shallow)) + shallow
        return self.conv_last(self.upsample(feat)) / self.img_range
