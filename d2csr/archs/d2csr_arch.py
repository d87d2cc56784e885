"""The D2C-SR generator: a divergence tree of branch modules and a convergence net (paper Sec. 3).

Shapes: input ``x`` is ``(N, 3, h, w)`` in ``[0, img_range]``-scaled RGB; every leaf prediction and the
fused output are ``(N, 3, s*h, s*w)``; the convergence weights are ``(N, P, s*h, s*w)`` with
``P = width ** depth`` leaves.

Parameter layout (used by checkpoints and by :mod:`d2csr.convert`):

- ``head``: 3x3 conv ``num_in_ch -> num_feat`` (after the mean shift ``sub_mean``);
- ``nodes.k``: the tree's branch modules in breadth-first order (level 1 left to right, then level 2, ...);
  node ``k`` of level ``l`` (0-based within the level) is fed by node ``k // width`` of level ``l - 1``;
- ``res_convs.i.j``: leaf ``i``'s multi-branch deep residual convs; ``j = 0`` adds the leaf's parent,
  ``j = depth - 1`` adds the head feature;
- ``tails.i``: leaf ``i``'s upsampler and output conv;
- ``fusion``: the :class:`ConvergenceNet`.

:meth:`D2CSR.forward_branches` and :meth:`D2CSR.fuse` run the fast path of :mod:`d2csr.archs.fast_tree`
(options: :meth:`D2CSR.set_speed_options`); the straightforward per-branch implementation stays as
:meth:`D2CSR.reference_forward_branches` / :meth:`D2CSR.reference_fuse`, which the fast path equals to
1e-5 (fp32), gradients included.
"""
import contextlib

import torch
from torch import nn
from torch.nn import functional as F
from basicsr.archs.arch_util import Upsample
from basicsr.utils.registry import ARCH_REGISTRY

from . import fast_tree
from .branch_modules import build_branch_module

SUPPORTED_SCALES = (2, 3, 4, 8)
MEAN_SHIFTS = ('fixed', 'learnable', 'none')
UPSAMPLERS = ('pixelshuffle', 'pixelshuffledirect', 'bicubic_input')


class BicubicInputConv(nn.Conv2d):
    """The head of ``upsampler: bicubic_input`` (VDSR-style): a 3x3 conv on the bicubic-upsampled input.

    Shapes: ``(N, C_in, h, w) -> (N, C_out, s*h, s*w)``. Its parameters are named like a plain conv's.
    """

    def __init__(self, in_channels, out_channels, upscale):
        super().__init__(in_channels, out_channels, 3, 1, 1)
        self.upscale = upscale

    def forward(self, x):
        return super().forward(F.interpolate(x, scale_factor=self.upscale, mode='bicubic', align_corners=False))


def make_tail(upsampler, upscale, num_feat, num_out_ch):
    """A leaf's tail, ``(N, num_feat, h, w) -> (N, num_out_ch, s*h, s*w)`` (``s = 1`` for ``bicubic_input``).

    ``pixelshuffle``: BasicSR's ``Upsample`` (conv + pixel shuffle per factor 2, or one for 3) + 3x3 conv
    (RCAN / EDSR / the authors' tails); ``pixelshuffledirect``: one 3x3 conv to ``num_out_ch * s**2`` channels
    + pixel shuffle (IMDN's lightweight upsampler); ``bicubic_input``: the features are already at the output
    size, a 3x3 conv only.
    """
    if upsampler == 'pixelshuffle':
        return nn.Sequential(Upsample(upscale, num_feat), nn.Conv2d(num_feat, num_out_ch, 3, 1, 1))
    if upsampler == 'pixelshuffledirect':
        return nn.Sequential(nn.Conv2d(num_feat, num_out_ch * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale))
    return nn.Sequential(nn.Conv2d(num_feat, num_out_ch, 3, 1, 1))


class ConvergenceNet(nn.Module):
    """Per-pixel fusion weights of the ``P`` divergent predictions (paper eq. 8, authors' ``C_Net``).

    Three 3x3 convs without bias, a ReLU after each (the last included, as the authors do), then a
    softmax over the ``P`` channels.

    Args:
        num_branches (int): ``P``.
        num_ch (int): channels of one prediction (3 for RGB).
        num_feat (int): hidden channels.
        last_relu (bool): the ReLU after the last conv (authors' code, default). It clamps every negative
            logit to 0 before the softmax, so a branch's weight can never drop below the weight of a zero
            logit, and those logits get no gradient. ``False`` is a variant, not the paper's: same
            parameters, logits of any sign.

    Shapes: ``forward(stacked)`` takes ``(N, P*num_ch, H, W)`` and returns weights ``(N, P, H, W)``.
    """

    def __init__(self, num_branches=4, num_ch=3, num_feat=64, last_relu=True):
        super().__init__()
        layers = [nn.Conv2d(num_branches * num_ch, num_feat, 3, 1, 1, bias=False), nn.ReLU(inplace=True),
                  nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False), nn.ReLU(inplace=True),
                  nn.Conv2d(num_feat, num_branches, 3, 1, 1, bias=False)]
        if last_relu:
            layers.append(nn.ReLU(inplace=True))
        self.fusion = nn.Sequential(*layers)  # same parameter names either way

    def forward(self, stacked):
        return torch.softmax(self.fusion(stacked), dim=1)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'network_g:{name} must be an integer >= 1, got {value!r}')


@ARCH_REGISTRY.register()
class D2CSR(nn.Module):
    """D2C-SR: divergence tree + convergence net as one ``network_g``.

    Args:
        num_in_ch (int): input channels. Default: 3.
        num_out_ch (int): output channels. Default: 3.
        num_feat (int): feature channels ``F``. Default: 64.
        num_group (int): residual groups per branch module (``G``, RCAN backbone). Default: 2.
        num_block (int): RCAB blocks per residual group (``B``, RCAN backbone). Default: 4.
        squeeze_factor (int): channel-attention squeeze factor (RCAN backbone). Default: 16.
        upscale (int): 2, 3, 4 or 8. Default: 4.
        depth (int): tree depth ``L`` >= 1. Default: 2.
        width (int): children per node ``C`` >= 1. Default: 2.
        deep_residual (bool): multi-branch deep residual structure (paper Sec. 3.2); off for the
            Table 5 ablation, where a leaf's feature goes to its tail unchanged. Default: True.
        img_range (float): image range the network works in. Default: 1.0.
        rgb_mean (sequence): mean subtracted at the input and added at the output.
        mean_shift (str): ``'fixed'`` (BasicSR's RCAN: ``(x - mean) * img_range``), ``'learnable'``
            (1x1 convs ``sub_mean`` / ``add_mean`` as in the authors' code, initialised to the fixed
            shift; needed to load their checkpoints) or ``'none'``. Default: ``'fixed'``.
        backbone (str): branch module type, see :mod:`d2csr.archs.branch_modules`. Default: ``'rcan'``.
        backbone_opt (dict): options of a non-RCAN backbone's branch module (for RCAN they override
            ``num_group`` / ``num_block`` / ``squeeze_factor``); a wrong key raises ``ValueError`` listing
            the backbone's valid options.
        upsampler (str): the leaves' tails, see :func:`make_tail`: ``'pixelshuffle'`` (paper, default),
            ``'pixelshuffledirect'`` (one conv + pixel shuffle, IMDN's) or ``'bicubic_input'`` (VDSR's: the
            input is bicubic-upsampled before the head, the tree runs at the output size, the tails are a
            conv; combine with ``bicubic_skip: true`` for VDSR's global residual).
        fusion_feat (int): hidden channels of the convergence net. Default: 64.
        bicubic_skip (bool): add the bicubic upsampled input to every branch (not in the paper; makes
            small, short trainings start from bicubic quality). Default: False.
        fusion_last_relu (bool): the ReLU before the convergence net's softmax, as the authors have it
            (default). ``False`` (a variant, not the paper's) lets the logits be negative; see
            :class:`ConvergenceNet`. Leaves no trace in the weights. Default: True.
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_group=2,
                 num_block=4,
                 squeeze_factor=16,
                 upscale=4,
                 depth=2,
                 width=2,
                 deep_residual=True,
                 img_range=1.0,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 mean_shift='fixed',
                 backbone='rcan',
                 backbone_opt=None,
                 fusion_feat=64,
                 bicubic_skip=False,
                 upsampler='pixelshuffle',
                 fusion_last_relu=True):
        super().__init__()
        for name, value in (('num_in_ch', num_in_ch), ('num_out_ch', num_out_ch), ('num_feat', num_feat),
                            ('depth', depth), ('width', width), ('fusion_feat', fusion_feat)):
            _positive_int(name, value)
        if upscale not in SUPPORTED_SCALES:
            raise ValueError(f'network_g:upscale must be one of {SUPPORTED_SCALES}, got {upscale!r}')
        if mean_shift not in MEAN_SHIFTS:
            raise ValueError(f'network_g:mean_shift must be one of {MEAN_SHIFTS}, got {mean_shift!r}')
        if upsampler not in UPSAMPLERS:
            raise ValueError(f'network_g:upsampler must be one of {UPSAMPLERS}, got {upsampler!r}')
        if mean_shift != 'none' and not (len(rgb_mean) == num_in_ch == num_out_ch):
            raise ValueError(f'network_g:rgb_mean has {len(rgb_mean)} values but the network has '
                             f'{num_in_ch} input / {num_out_ch} output channels; set mean_shift: none '
                             'or give one mean per channel')
        if backbone_opt is not None and not isinstance(backbone_opt, dict):
            raise ValueError('network_g:backbone_opt must be a mapping of the backbone\'s options, '
                             f'got {backbone_opt!r}')
        if backbone == 'rcan':
            branch_opt = dict(num_group=num_group, num_block=num_block, squeeze_factor=squeeze_factor)
            branch_opt.update(backbone_opt or {})
        else:
            branch_opt = dict(backbone_opt or {})

        self.upscale = upscale
        self.depth = depth
        self.width = width
        self.num_branches = width**depth
        self.deep_residual = deep_residual
        self.img_range = img_range
        self.mean_shift = mean_shift
        self.bicubic_skip = bicubic_skip

        if mean_shift == 'learnable':
            self.sub_mean = nn.Conv2d(num_in_ch, num_in_ch, 1)
            self.add_mean = nn.Conv2d(num_out_ch, num_out_ch, 1)
            mean = torch.tensor(rgb_mean, dtype=torch.float32)
            with torch.no_grad():
                self.sub_mean.weight.copy_(torch.eye(num_in_ch).view(num_in_ch, num_in_ch, 1, 1) * img_range)
                self.sub_mean.bias.copy_(-mean * img_range)
                self.add_mean.weight.copy_(torch.eye(num_out_ch).view(num_out_ch, num_out_ch, 1, 1) / img_range)
                self.add_mean.bias.copy_(mean)
        elif mean_shift == 'fixed':
            self.register_buffer('mean', torch.tensor(rgb_mean, dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)

        self.upsampler = upsampler
        if upsampler == 'bicubic_input':
            self.head = BicubicInputConv(num_in_ch, num_feat, upscale)
        else:
            self.head = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        num_nodes = sum(width**level for level in range(1, depth + 1))
        self.nodes = nn.ModuleList(build_branch_module(backbone, num_feat, **branch_opt) for _ in range(num_nodes))
        if deep_residual:
            self.res_convs = nn.ModuleList(
                nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, 1, 1) for _ in range(depth))
                for _ in range(self.num_branches))
        self.tails = nn.ModuleList(
            make_tail(upsampler, upscale, num_feat, num_out_ch) for _ in range(self.num_branches))
        if not isinstance(fusion_last_relu, bool):
            raise ValueError(f'network_g:fusion_last_relu must be true or false, got {fusion_last_relu!r}')
        self.fusion = ConvergenceNet(self.num_branches, num_out_ch, fusion_feat, last_relu=fusion_last_relu)

    # ----------------------------------------------------------------------------------------------
    # tree structure helpers
    def level_offset(self, level):
        """Index in ``self.nodes`` of the first node of ``level`` (1-based levels)."""
        return sum(self.width**j for j in range(1, level))

    def leaf_ancestors(self, leaf):
        """Node indices within each level of ``leaf``'s ancestors, from its parent up to the head (level 0)."""
        return [leaf // self.width**(self.depth - level) for level in range(self.depth - 1, -1, -1)]

    def divergence_parameters(self):
        """Parameters of the divergence tree (everything except the convergence net)."""
        return [p for name, p in self.named_parameters() if not name.startswith('fusion.')]

    def convergence_parameters(self):
        return list(self.fusion.parameters())

    # ----------------------------------------------------------------------------------------------
    def _sub_mean(self, x):
        if self.mean_shift == 'learnable':
            return self.sub_mean(x)
        if self.mean_shift == 'fixed':
            return (x - self.mean) * self.img_range
        return x * self.img_range

    def _add_mean(self, x):
        if self.mean_shift == 'learnable':
            return self.add_mean(x)
        if self.mean_shift == 'fixed':
            return x / self.img_range + self.mean
        return x / self.img_range

    # ----------------------------------------------------------------------------------------------
    # the straightforward per-branch implementation: the definition the fast path is checked against
    def reference_forward_branches(self, x):
        """Plain per-branch :meth:`forward_branches` (one node, then one leaf, after the other); for checks."""
        return [self.leaf_prediction(leaf, feature, x) for leaf, feature in enumerate(self.leaf_features(x))]

    # ----------------------------------------------------------------------------------------------
    # the two halves of forward_branches, for tiled inference (d2csr.tiling)
    def leaf_features(self, x):
        """LR half of :meth:`forward_branches`: ``(N, C, h, w)`` -> list of ``P`` leaf features ``(N, F, h, w)``.

        Everything with a global receptive field (channel attention) lives here. The tree is walked depth
        first, so only one path of ancestor features is held at a time besides the finished leaves.
        """
        head = self.head(self._sub_mean(x))
        features = []

        def descend(level, index, path):  # path: features of the ancestors, head first
            y = self.nodes[self.level_offset(level) + index](path[-1])
            if level < self.depth:
                for child in range(self.width):
                    descend(level + 1, index * self.width + child, path + [y])
                return
            if self.deep_residual:
                for j in range(self.depth):
                    y = self.res_convs[index][j](y) + path[-1 - j]
            features.append(y)

        for child in range(self.width):
            descend(1, child, [head])
        return features

    def leaf_prediction(self, leaf, feature, x):
        """HR half of :meth:`forward_branches` for one leaf: ``(N, F, h, w)`` -> ``(N, C, s*h, s*w)``.

        Fully convolutional (upsampler tail, output mean shift and the optional bicubic skip of ``x``,
        the matching ``(N, C, h, w)`` input), so it can run on crops of ``feature`` and ``x``.
        """
        out = self._add_mean(self.tails[leaf](feature))
        if self.bicubic_skip:
            out = out + F.interpolate(x, scale_factor=self.upscale, mode='bicubic', align_corners=False)
        return out

    def reference_fuse(self, branches):
        """Plain :meth:`fuse`; for checks."""
        weights = self.fusion(torch.cat(branches, dim=1))
        sr = sum(branch * weights[:, i:i + 1] for i, branch in enumerate(branches))
        return sr, weights

    # ----------------------------------------------------------------------------------------------
    # the fast path (d2csr/archs/fast_tree.py): same outputs and gradients as the reference to 1e-5
    def set_speed_options(self, channels_last=True, autocast=None, compile=False):
        """Choose how :meth:`forward_branches` / :meth:`fuse` run; none of it changes parameters.

        Args:
            channels_last (bool): features in NHWC (faster with oneDNN and cuDNN). Default: True.
            autocast (None | str | torch.dtype): ``'bf16'`` / ``'fp16'`` (or the dtype) runs inference
                (no gradient recorded) under ``torch.autocast`` on the input's device; outputs are cast
                back to the input's dtype. Default: None (fp32).
            compile (bool): run the fast path through ``torch.compile`` (the first call per input shape
                compiles, which takes a minute or more for the default model on a CPU). Default: False.

        Returns:
            self
        """
        dtypes = {None: None, 'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16,
                  'float16': torch.float16, torch.bfloat16: torch.bfloat16, torch.float16: torch.float16}
        if autocast not in dtypes:
            raise ValueError(f"D2CSR.set_speed_options: autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
        self._speed = fast_tree.FastOptions(channels_last=channels_last)
        self._autocast = dtypes[autocast]
        self._compiled = None
        self._compile = bool(compile)
        return self

    def __getstate__(self):
        """Pickling / ``copy.deepcopy`` leave out the fast path's caches (structure checks, compiled code)."""
        state = self.__dict__.copy()
        if '_speed' in state:
            state['_speed'] = fast_tree.FastOptions(state['_speed'].channels_last)
        state['_compiled'] = None
        return state

    def _fast_options(self):
        if '_speed' not in self.__dict__:
            self.set_speed_options()
        return self._speed

    def _fast_fns(self):
        """``(forward_branches, fuse)`` of the fast path, compiled when asked."""
        opts = self._fast_options()
        if not self._compile:
            return (lambda x: fast_tree.forward_branches(self, x, opts), lambda b: fast_tree.fuse(self, b, opts))
        if self._compiled is None:
            self._compiled = (torch.compile(lambda x: fast_tree.forward_branches(self, x, opts)),
                              torch.compile(lambda b: fast_tree.fuse(self, b, opts)))
        return self._compiled

    def _autocast_context(self, x):
        self._fast_options()
        if self._autocast is None or torch.is_grad_enabled():
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=self._autocast)

    def forward_branches(self, x):
        """``(N, C, h, w)`` -> list of ``P`` leaf predictions ``(N, C, s*h, s*w)``, depth-first left to right."""
        with self._autocast_context(x):
            outputs = self._fast_fns()[0](x)
        return [out.to(x.dtype) for out in outputs]

    def fuse(self, branches):
        """List of ``P`` predictions ``(N, C, H, W)`` -> ``(sr (N, C, H, W), weights (N, P, H, W))``."""
        with self._autocast_context(branches[0]):
            sr, weights = self._fast_fns()[1](branches)
        return sr.to(branches[0].dtype), weights.to(branches[0].dtype)

    def tree_is_frozen(self):
        return not any(p.requires_grad for p in self.divergence_parameters())

    def forward(self, x, mode='fused'):
        """``(N, C, h, w)`` -> fused SR ``(N, C, s*h, s*w)``.

        ``mode='branches'`` returns :meth:`forward_branches` instead (the divergence stage); with
        ``mode='converge'`` (or whenever the tree is frozen) the tree runs without autograd and only the
        convergence net is differentiated. Going through ``forward`` keeps DistributedDataParallel's hooks.
        """
        if mode == 'branches':
            return self.forward_branches(x)
        if mode not in ('fused', 'converge'):
            raise ValueError(f"D2CSR.forward: mode must be 'fused', 'branches' or 'converge', got {mode!r}")
        if mode == 'converge' or (torch.is_grad_enabled() and self.tree_is_frozen()):
            with torch.no_grad():
                branches = self.forward_branches(x)
        else:
            branches = self.forward_branches(x)
        return self.fuse(branches)[0]
