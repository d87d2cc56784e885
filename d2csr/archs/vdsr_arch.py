"""VDSR: Very Deep Super-Resolution (Kim et al., "Accurate Image Super-Resolution Using Very Deep
Convolutional Networks", CVPR 2016).

BasicSR has no VDSR, so it is written here from the paper (Sec. 3.1, Fig. 2): the LR image is first
bicubic-interpolated to the output size; ``d`` 3x3 conv layers follow (the first maps the image to ``F``
features, the last back to an image, ReLU after all but the last) and predict the residual that is added
to the interpolated image (global residual learning). The paper's model has ``d = 20`` and ``F = 64``
(0.67M parameters on RGB; the paper works on the Y channel only).

Shapes: :class:`ConvReLUStack` maps ``(N, F, H, W) -> (N, F, H, W)``; :class:`VDSR` maps
``(N, num_in_ch, h, w) -> (N, num_out_ch, s*h, s*w)``.
"""
from torch import nn
from torch.nn import functional as F
from d2csr.utils.registry import ARCH_REGISTRY  # d2csr's names, not BasicSR's table

from .arch_util import check_int


class ConvReLUStack(nn.Sequential):
    """VDSR's plain body: ``num_conv`` x (3x3 conv ``F -> F``, ReLU).

    Shapes: ``(N, F, H, W) -> (N, F, H, W)``.
    """

    def __init__(self, num_feat, num_conv):
        check_int('ConvReLUStack: num_conv', num_conv)
        layers = []
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.ReLU(inplace=True)]
        super().__init__(*layers)


@ARCH_REGISTRY.register()
class VDSR(nn.Module):
    """Very deep SR network on the bicubic-upsampled input, with global residual learning.

    Args:
        num_in_ch (int): input channels. Default: 3.
        num_out_ch (int): output channels; must equal ``num_in_ch`` (the residual is added to the input).
            Default: 3.
        num_feat (int): feature channels. Default: 64.
        num_conv (int): conv layers ``d`` in all, first and last included (>= 3). Default: 20.
        upscale (int): scale factor of the bicubic interpolation. Default: 4.

    Shapes: ``(N, num_in_ch, h, w) -> (N, num_out_ch, s*h, s*w)``.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=20, upscale=4):
        super().__init__()
        if num_in_ch != num_out_ch:
            raise ValueError(f'VDSR: num_in_ch ({num_in_ch}) must equal num_out_ch ({num_out_ch}): the network '
                             'predicts a residual on the interpolated input')
        check_int('VDSR: num_conv', num_conv, 3, ' (first, middle and last layer)')
        check_int('VDSR: upscale', upscale)
        self.upscale = upscale
        self.conv_first = nn.Sequential(nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.ReLU(inplace=True))
        self.body = ConvReLUStack(num_feat, num_conv - 2)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x):
        base = F.interpolate(x, scale_factor=self.upscale, mode='bicubic', align_corners=False)
        return self.conv_last(self.body(self.conv_first(base))) + base
