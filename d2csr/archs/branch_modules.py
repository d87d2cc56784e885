"""Basic branch modules: what every node of the D2C tree is made of.

A branch module maps a feature map to a feature map of the same shape, ``(N, F, h, w) -> (N, F, h, w)``.
The paper's module (Sec. 3.2) is RCAN's: ``G`` residual groups of ``B`` RCAB blocks, then a 3x3 conv.
The other backbones of paper Table 3 use the trunk of their own network (everything between its first
conv and its upsampler, without the global skip, which the tree's multi-branch deep residual structure
provides). ``network_g: backbone`` picks one, ``network_g: backbone_opt`` holds its options:

- ``rcan`` (paper default): ``num_group`` x ResidualGroup(``num_block`` x RCAB) + 3x3 conv (BasicSR's
  ``rcan_arch`` blocks, with the in-place forwards of :class:`RCABlock` / :class:`RCANGroup`). Options:
  ``num_group``, ``num_block``, ``squeeze_factor`` (network_g's own keys), ``res_scale``.
- ``edsr``: ``num_block`` x ResidualBlockNoBN + 3x3 conv (EDSR). Options: ``num_block``, ``res_scale``.
- ``srresnet``: ``num_block`` x ResidualBlockNoBN (MSRResNet). Options: ``num_block``.
- ``rrdbnet``: ``num_block`` x RRDB + 3x3 conv (ESRGAN's RRDBNet). Options: ``num_block``, ``num_grow_ch``.
- ``rdn``: ``num_block`` residual dense blocks + dense feature fusion (RDN). Options: ``num_block``,
  ``num_layer``, ``num_grow_ch``.
- ``imdn``: ``num_block`` IMDBs + 1x1 fusion conv + 3x3 conv (IMDN). Options: ``num_block``, ``distill_rate``.
- ``vdsr``: ``num_conv`` x (3x3 conv, ReLU) (VDSR). Options: ``num_conv``.

Each builder's signature holds the defaults; :func:`branch_module_options` lists them. Further backbones
register here with :func:`register_branch_module`.
"""
import inspect

import torch
from torch import nn
from torch.nn import functional as F
from basicsr.archs.arch_util import ResidualBlockNoBN, make_layer
from basicsr.archs.rcan_arch import RCAB, ResidualGroup
from basicsr.archs.rrdbnet_arch import RRDB

from .arch_util import check_int
from .imdn_arch import IMDNTrunk
from .rdn_arch import RDNTrunk
from .vdsr_arch import ConvReLUStack

_BRANCH_MODULES = {}


def register_branch_module(name):
    """Decorator: make ``fn(num_feat, **opts) -> nn.Module`` available as backbone ``name``."""

    def wrap(fn):
        _BRANCH_MODULES[name] = fn
        return fn

    return wrap


def branch_module_names():
    return sorted(_BRANCH_MODULES)


def branch_module_options(backbone):
    """Names and defaults of the options that backbone ``backbone``'s branch module takes (besides ``num_feat``)."""
    if backbone not in _BRANCH_MODULES:
        raise ValueError(f'network_g:backbone {backbone!r} is unknown; valid choices: {branch_module_names()}')
    params = list(inspect.signature(_BRANCH_MODULES[backbone]).parameters.values())[1:]
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _takes_any_option(backbone):
    params = inspect.signature(_BRANCH_MODULES[backbone]).parameters.values()
    return any(p.kind == p.VAR_KEYWORD for p in params)


def build_branch_module(backbone, num_feat, **opts):
    """Build one tree node of the given backbone; options are the backbone's own (see each builder).

    Raises ``ValueError`` for an unknown backbone (listing the valid ones) and for options the backbone does
    not take (listing the ones it does).
    """
    valid = branch_module_options(backbone)
    unknown = sorted(set(opts) - set(valid))
    if unknown and not _takes_any_option(backbone):
        raise ValueError(f'network_g:backbone_opt {unknown} do not fit backbone {backbone!r}; its valid options '
                         f'(with defaults) are {valid}')
    return _BRANCH_MODULES[backbone](num_feat, **opts)


def _check_int(name, value, minimum=1):
    check_int(f'network_g:backbone_opt:{name}', value, minimum)


class RCABlock(RCAB):
    """BasicSR's ``RCAB`` (same modules, parameter names and initialisation) with a leaner forward.

    ``x + res_scale * CA(y) * y`` with ``y = conv(relu(conv(x)))`` is one ``addcmul`` instead of three passes
    over the feature map (``x * s``, ``* res_scale``, ``+ x``), written into ``y`` when no gradient is
    recorded; channel attention's 1x1 convs on the pooled ``(N, F)`` vector run as two small matmuls. Traced
    (``torch.jit.trace``, ONNX export) it is the plain ``x + y * s * res_scale``, which exports in any precision.
    The two parts are also methods (:meth:`residual`, :meth:`attention_scale`), so that the exact banded
    inference of :mod:`d2csr.banded` can pool ``y`` over a whole image it never holds at once.
    Shapes: ``(N, F, h, w) -> (N, F, h, w)``, in the input's memory format.
    """

    def residual(self, x):
        """``y = conv(relu(conv(x)))``: ``(N, F, h, w) -> (N, F, h, w)`` (local: two 3x3 convs)."""
        conv1, act, conv2, _ = self.rcab
        return conv2(act(conv1(x)))

    def attention_scale(self, pooled):
        """Channel attention's scale ``(N, F, 1, 1)`` from ``y``'s spatial mean ``pooled`` ``(N, F)``."""
        _, down, _, up, _ = self.rcab[3].attention  # pool, 1x1 conv, ReLU, 1x1 conv, sigmoid on (N, F)
        s = F.linear(pooled, down.weight.flatten(1), down.bias).relu_()
        return torch.sigmoid(F.linear(s, up.weight.flatten(1), up.bias))[:, :, None, None]

    def forward(self, x):
        y = self.residual(x)
        scale = self.attention_scale(y.mean((2, 3)))
        if torch.jit.is_tracing():  # ONNX export: its addcmul computes fp16 inputs in fp32; out= does not export
            return x + y * scale * self.res_scale
        if torch.is_grad_enabled():
            return torch.addcmul(x, y, scale, value=self.res_scale)
        return torch.addcmul(x, y, scale, value=self.res_scale, out=y)


class RCANGroup(ResidualGroup):
    """BasicSR's ``ResidualGroup`` (same modules, parameter names and initialisation order) of
    :class:`RCABlock`, whose skip is added in place to the conv's output. ``(N, F, h, w) -> (N, F, h, w)``."""

    def __init__(self, num_feat, num_block, squeeze_factor=16, res_scale=1):
        nn.Module.__init__(self)
        self.residual_group = make_layer(
            RCABlock, num_block, num_feat=num_feat, squeeze_factor=squeeze_factor, res_scale=res_scale)
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        return self.conv(self.residual_group(x)).add_(x)


@register_branch_module('rcan')
def rcan_branch(num_feat, num_group=2, num_block=4, squeeze_factor=16, res_scale=1.0):
    """RCAN branch: ``num_group`` x ResidualGroup(``num_block`` x RCAB) then a 3x3 conv (paper's default)."""
    for name, value in (('num_group', num_group), ('num_block', num_block), ('squeeze_factor', squeeze_factor)):
        check_int(f'network_g:{name}', value)
    if num_feat % squeeze_factor != 0:
        raise ValueError(f'network_g:num_feat ({num_feat}) must be divisible by network_g:squeeze_factor '
                         f'({squeeze_factor}) for channel attention')
    groups = [RCANGroup(num_feat, num_block, squeeze_factor, res_scale) for _ in range(num_group)]
    return nn.Sequential(*groups, nn.Conv2d(num_feat, num_feat, 3, 1, 1))


@register_branch_module('edsr')
def edsr_branch(num_feat, num_block=4, res_scale=1.0):
    """EDSR branch: ``num_block`` x ResidualBlockNoBN (conv-ReLU-conv, residual x ``res_scale``), then a 3x3 conv.

    EDSR's trunk (``body`` + ``conv_after_body``), PyTorch's default init as in BasicSR's ``EDSR``; the full
    EDSR uses ``res_scale: 0.1``.
    """
    _check_int('num_block', num_block)
    blocks = make_layer(ResidualBlockNoBN, num_block, num_feat=num_feat, res_scale=res_scale, pytorch_init=True)
    return nn.Sequential(*blocks, nn.Conv2d(num_feat, num_feat, 3, 1, 1))


@register_branch_module('srresnet')
def srresnet_branch(num_feat, num_block=4):
    """SRResNet branch: ``num_block`` x ResidualBlockNoBN, MSRResNet's trunk (and its 0.1-scaled Kaiming init)."""
    _check_int('num_block', num_block)
    return nn.Sequential(*make_layer(ResidualBlockNoBN, num_block, num_feat=num_feat))


@register_branch_module('rrdbnet')
def rrdbnet_branch(num_feat, num_block=1, num_grow_ch=32):
    """RRDBNet branch: ``num_block`` x RRDB (3 residual dense blocks of growth ``num_grow_ch``), then a 3x3 conv.

    ESRGAN's trunk (``body`` + ``conv_body``).
    """
    _check_int('num_block', num_block)
    _check_int('num_grow_ch', num_grow_ch)
    blocks = make_layer(RRDB, num_block, num_feat=num_feat, num_grow_ch=num_grow_ch)
    return nn.Sequential(*blocks, nn.Conv2d(num_feat, num_feat, 3, 1, 1))


@register_branch_module('rdn')
def rdn_branch(num_feat, num_block=4, num_layer=6, num_grow_ch=32):
    """RDN branch: ``num_block`` residual dense blocks (``num_layer`` layers, growth ``num_grow_ch``) and
    dense feature fusion (:class:`~d2csr.archs.rdn_arch.RDNTrunk`)."""
    for name, value in (('num_block', num_block), ('num_layer', num_layer), ('num_grow_ch', num_grow_ch)):
        _check_int(name, value)
    return RDNTrunk(num_feat, num_block, num_grow_ch, num_layer)


@register_branch_module('imdn')
def imdn_branch(num_feat, num_block=2, distill_rate=0.25):
    """IMDN branch: ``num_block`` IMDBs, a 1x1 conv over their outputs and a 3x3 conv
    (:class:`~d2csr.archs.imdn_arch.IMDNTrunk`). ``num_feat * distill_rate`` must be a whole number >= 4."""
    _check_int('num_block', num_block)
    try:
        return IMDNTrunk(num_feat, num_block, distill_rate)
    except ValueError as err:
        raise ValueError(f'network_g:num_feat / backbone_opt:distill_rate do not fit backbone \'imdn\': {err}') from err


@register_branch_module('vdsr')
def vdsr_branch(num_feat, num_conv=3):
    """VDSR branch: ``num_conv`` x (3x3 conv, ReLU). Use with ``network_g: upsampler: bicubic_input`` and
    ``bicubic_skip: true`` for VDSR's interpolated input and global residual."""
    _check_int('num_conv', num_conv)
    return ConvReLUStack(num_feat, num_conv)
