"""IMDN: Information Multi-distillation Network (Hui et al., "Lightweight Image Super-Resolution with
Information Multi-distillation Network", ACM MM 2019).

BasicSR has no IMDN, so it is written here from the paper (Sec. 3, Fig. 2-3):

- a 3x3 conv extracts features;
- ``num_block`` information multi-distillation blocks (:class:`IMDB`): progressive refinement, where each of
  three 3x3 convs (LeakyReLU 0.05) splits its output into a distilled part (``distill_rate`` of the
  channels, kept) and a remaining part (refined further), a fourth 3x3 conv gives the last distilled part;
  the concatenated distilled parts go through contrast-aware channel attention (:class:`ContrastChannelAttention`)
  and a 1x1 conv, plus the block input;
- :class:`IMDNTrunk`: the blocks, then a 1x1 conv (LeakyReLU) over all block outputs and a 3x3 conv;
- a global residual from the first conv, and a one-step sub-pixel upsampler (3x3 conv to
  ``num_out_ch * s**2`` channels, pixel shuffle).

The paper's model (``num_feat=64``, 6 blocks) has 715K parameters at x4.

Shapes: :class:`IMDB` and :class:`IMDNTrunk` map ``(N, F, h, w) -> (N, F, h, w)``;
:class:`IMDN` maps ``(N, num_in_ch, h, w) -> (N, num_out_ch, s*h, s*w)``.
"""
import torch
from torch import nn
from d2csr.utils.registry import ARCH_REGISTRY  # d2csr's names, not BasicSR's table

from .arch_util import check_int


class ContrastChannelAttention(nn.Module):
    """Contrast-aware channel attention (CCA, IMDN paper Sec. 3.2).

    Per channel, the contrast (standard deviation over the spatial positions) plus the mean goes through
    ``1x1 conv C -> C // reduction``, ReLU, ``1x1 conv -> C``, sigmoid; the input is scaled by the result.

    Shapes: ``(N, C, h, w) -> (N, C, h, w)``.
    """

    def __init__(self, num_feat, reduction=16):
        super().__init__()
        if num_feat // reduction < 1:
            raise ValueError(f'ContrastChannelAttention: {num_feat} channels are too few for reduction {reduction}')
        self.attention = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // reduction, num_feat, 1), nn.Sigmoid())

    def scale(self, mean, var):
        """The attention ``(N, C, 1, 1)`` from the per-channel spatial ``mean`` and population variance ``var``
        (both ``(N, C, 1, 1)``); the floor keeps the gradient finite on constant feature maps."""
        return self.attention(var.clamp_min(1e-12).sqrt() + mean)

    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)
        return x * self.scale(mean, (x - mean).pow(2).mean(dim=(2, 3), keepdim=True))


class IMDB(nn.Module):
    """Information multi-distillation block.

    Args:
        num_feat (int): channels ``F`` in and out.
        distill_rate (float): fraction of channels distilled at each step; ``F * distill_rate`` must be a
            whole number ``d >= 1`` and ``4 * d >= 16`` (channel attention). Default: 0.25.

    Shapes: ``(N, F, h, w) -> (N, F, h, w)``.
    """

    def __init__(self, num_feat, distill_rate=0.25):
        super().__init__()
        distilled = num_feat * distill_rate
        if not (0 < distill_rate < 1) or distilled != int(distilled) or distilled < 1:
            raise ValueError(f'IMDB: num_feat * distill_rate must be a whole number of channels >= 1 with '
                             f'0 < distill_rate < 1, got num_feat={num_feat}, distill_rate={distill_rate!r}')
        self.distilled = int(distilled)
        self.remaining = num_feat - self.distilled
        if 4 * self.distilled < 16:
            raise ValueError(f'IMDB: 4 * num_feat * distill_rate = {4 * self.distilled} channels are too few for '
                             'the channel attention (needs >= 16): raise num_feat or distill_rate')
        self.c1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.c2 = nn.Conv2d(self.remaining, num_feat, 3, 1, 1)
        self.c3 = nn.Conv2d(self.remaining, num_feat, 3, 1, 1)
        self.c4 = nn.Conv2d(self.remaining, self.distilled, 3, 1, 1)
        self.act = nn.LeakyReLU(0.05, inplace=True)
        self.cca = ContrastChannelAttention(4 * self.distilled)
        self.c5 = nn.Conv2d(4 * self.distilled, num_feat, 1)

    def distill(self, x):
        """The concatenated distilled parts ``(N, 4d, h, w)`` (local: a chain of four 3x3 convs)."""
        split = (self.distilled, self.remaining)
        d1, r1 = torch.split(self.act(self.c1(x)), split, dim=1)
        d2, r2 = torch.split(self.act(self.c2(r1)), split, dim=1)
        d3, r3 = torch.split(self.act(self.c3(r2)), split, dim=1)
        d4 = self.c4(r3)
        return torch.cat((d1, d2, d3, d4), dim=1)

    def forward(self, x):
        return self.c5(self.cca(self.distill(x))) + x


class IMDNTrunk(nn.Module):
    """``num_block`` IMDBs, a 1x1 conv (LeakyReLU 0.05) over their concatenated outputs, then a 3x3 conv.

    The global residual is left to the caller (:class:`IMDN`, or the D2C tree's deep residual structure).

    Shapes: ``(N, F, h, w) -> (N, F, h, w)``.
    """

    def __init__(self, num_feat, num_block=6, distill_rate=0.25):
        super().__init__()
        check_int('IMDNTrunk: num_block', num_block)
        self.blocks = nn.ModuleList(IMDB(num_feat, distill_rate) for _ in range(num_block))
        self.fuse = nn.Sequential(nn.Conv2d(num_block * num_feat, num_feat, 1), nn.LeakyReLU(0.05, inplace=True))
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return self.conv(self.fuse(torch.cat(outs, dim=1)))


@ARCH_REGISTRY.register()
class IMDN(nn.Module):
    """Information Multi-distillation Network.

    Args:
        num_in_ch (int): input channels. Default: 3.
        num_out_ch (int): output channels. Default: 3.
        num_feat (int): feature channels. Default: 64.
        num_block (int): IMDBs. Default: 6.
        distill_rate (float): see :class:`IMDB`. Default: 0.25.
        upscale (int): 2, 3, 4 or 8 (one pixel-shuffle step). Default: 4.
        img_range (float): the network sees ``x * img_range``; the output is divided back. Default: 1.0.

    Shapes: ``(N, num_in_ch, h, w) -> (N, num_out_ch, s*h, s*w)``.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=6, distill_rate=0.25, upscale=4,
                 img_range=1.0):
        super().__init__()
        check_int('IMDN: upscale', upscale)
        self.img_range = img_range
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.trunk = IMDNTrunk(num_feat, num_block, distill_rate)
        self.upsample = nn.Sequential(nn.Conv2d(num_feat, num_out_ch * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale))

    def forward(self, x):
        feat = self.conv_first(x * self.img_range)
        return self.upsample(self.trunk(feat) + feat) / self.img_range
