"""Basic branch modules: what every node of the D2C tree is made of.

A branch module maps a feature map to a feature map of the same shape, ``(N, F, h, w) -> (N, F, h, w)``.
The paper's module (Sec. 3.2) is RCAN's: ``G`` residual groups of ``B`` RCAB blocks, then a 3x3 conv.
Further backbones (paper Table 3) register here with :func:`register_branch_module`.
"""
from torch import nn
from basicsr.archs.rcan_arch import ResidualGroup

_BRANCH_MODULES = {}


def register_branch_module(name):
    """Decorator: make ``fn(num_feat, **opts) -> nn.Module`` available as backbone ``name``."""

    def wrap(fn):
        _BRANCH_MODULES[name] = fn
        return fn

    return wrap


def branch_module_names():
    return sorted(_BRANCH_MODULES)


def build_branch_module(backbone, num_feat, **opts):
    """Build one tree node of the given backbone; options are the backbone's own (see each builder)."""
    if backbone not in _BRANCH_MODULES:
        raise ValueError(f'network_g:backbone {backbone!r} is unknown; valid choices: {branch_module_names()}')
    try:
        return _BRANCH_MODULES[backbone](num_feat, **opts)
    except TypeError as err:  # unknown keyword for this backbone
        raise ValueError(f'network_g:backbone_opt does not fit backbone {backbone!r}: {err}') from err


@register_branch_module('rcan')
def rcan_branch(num_feat, num_group=2, num_block=4, squeeze_factor=16, res_scale=1.0):
    """RCAN branch: ``num_group`` x ResidualGroup(``num_block`` x RCAB) then a 3x3 conv (paper's default)."""
    for name, value in (('num_group', num_group), ('num_block', num_block), ('squeeze_factor', squeeze_factor)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'network_g:{name} must be a positive integer, got {value!r}')
    if num_feat % squeeze_factor != 0:
        raise ValueError(f'network_g:num_feat ({num_feat}) must be divisible by network_g:squeeze_factor '
                         f'({squeeze_factor}) for channel attention')
    groups = [ResidualGroup(num_feat, num_block, squeeze_factor, res_scale) for _ in range(num_group)]
    return nn.Sequential(*groups, nn.Conv2d(num_feat, num_feat, 3, 1, 1))
