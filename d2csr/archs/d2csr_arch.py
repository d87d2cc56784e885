"""The D2C-SR generator: a divergence tree of branch modules and a convergence net (paper Sec. 3).

Shapes: input ``x`` is ``(N, 3, h, w)`` in ``[0, img_range]``-scaled RGB; every leaf prediction and the
fused output are ``(N, 3, s*h, s*w)``; the convergence weights are ``(N, P, s*h, s*w)`` with
``P = width ** depth`` leaves.

Parameter layout (used by checkpoints and by :mod:`d2csr.convert`):

- ``head``: 3x3 conv ``num_in_ch -> num_feat`` (after the mean shift ``sub_mean``);
- ``nodes.k``: the tree's branch modules in breadth-first order (level 1 left to right, then level 2, ...);
  node ``k`` of level ``l`` (0-based within the level) is fed by node ``k // width`` of level ``l - 1``;
- ``res_convs.i.j``: leaf ``i``'s multi-branch deep residual convs; ``j = 0`` adds the leaf's parent,
  ``j = depth - 1`` adds the head feature (``deep_residual: false`` keeps only that one, under the same name);
- ``tails.i``: leaf ``i``'s upsampler and output conv;
- ``fusion``: the :class:`ConvergenceNet`.

Speed: the weights and every feature map are channels-last (NHWC, :meth:`D2CSR.set_memory_format`), the
RCAN blocks add in place (:class:`~d2csr.archs.branch_modules.RCABlock`) and the leaves' HR tails run one
after the other. There is one forward: ``torch.autocast``, ``torch.compile`` and CUDA graphs all see it.
"""
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from basicsr.archs.arch_util import Upsample
from d2csr.utils.registry import ARCH_REGISTRY  # d2csr's names, not BasicSR's table

from .arch_util import check_int
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


class FewOutputConv2d(nn.Conv2d):
    """A 3x3 (odd k x k) conv with few outputs (a leaf's last conv, 64 -> 3; the convergence net's last, 64 -> P).

    Parameters, initialisation and results are ``nn.Conv2d``'s. In CPU fp32 inference on a channels-last
    input, where oneDNN runs a conv with so few outputs at a fraction of its usual speed, it computes the
    same sums as one 1x1 conv to all ``k*k*C_out`` taps and ``k*k`` shifted adds (about 1.8x faster for
    64 -> 3 at 256x256 on an AVX-512 CPU); with autograd, in bf16 / fp16, on a GPU or when traced
    (``torch.jit.trace``, ONNX export: the graph must not bake in one image size) it is the plain conv.
    Shapes: ``(N, C_in, H, W) -> (N, C_out, H, W)``.
    """

    def _use_taps(self, x):
        k = self.kernel_size[0]
        # 'meta': a plan of a CPU run (d2csr.memory) takes the same path, so it sees the same buffers (meta
        # kernels do not keep channels-last everywhere the CPU's do: the layout is not asked of them)
        meta = x.device.type == 'meta'
        return ((x.device.type == 'cpu' or meta) and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and not torch.jit.is_tracing()
                and not torch.is_autocast_enabled('cpu') and (meta or x.is_contiguous(memory_format=torch.channels_last))
                and self.out_channels <= 8 and self.groups == 1 and self.kernel_size == (k, k) and k % 2 == 1
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.padding == (k // 2, k // 2)
                and self.padding_mode == 'zeros')

    def forward(self, x):
        if not self._use_taps(x):
            return super().forward(x)
        n, _, h, w = x.shape
        out_ch, k = self.out_channels, self.kernel_size[0]
        p = k // 2
        weight = self.weight.permute(2, 3, 0, 1).reshape(k * k * out_ch, -1, 1, 1)
        pad = -(k * k * out_ch) % 16  # a multiple of 16 outputs vectorises better (AVX-512)
        if pad:
            weight = torch.cat([weight, weight.new_zeros(pad, weight.shape[1], 1, 1)])
        taps = F.conv2d(x, weight).permute(0, 2, 3, 1)  # (N, H, W, >= k*k*C_out), a view
        if self.bias is not None:
            out = self.bias.view(1, 1, 1, out_ch).expand(n, h, w, out_ch).clone(memory_format=torch.contiguous_format)
        else:
            out = taps.new_zeros(n, h, w, out_ch)
        for t in range(k * k):
            dy, dx = divmod(t, k)
            ys, ye, xs, xe = max(0, p - dy), min(h, h + p - dy), max(0, p - dx), min(w, w + p - dx)
            if ye > ys and xe > xs:
                out[:, ys:ye, xs:xe] += taps[:, ys + dy - p:ye + dy - p, xs + dx - p:xe + dx - p,
                                             t * out_ch:(t + 1) * out_ch]
        return out.permute(0, 3, 1, 2)  # channels-last (N, C_out, H, W)


class ShuffleUpsample(Upsample):
    """BasicSR's ``Upsample`` (conv + pixel shuffle per factor; same modules and parameter names) whose
    training backward is cheap on the CPU.

    PyTorch's channels-last ``pixel_unshuffle`` (the backward of ``pixel_shuffle``) moves single values. With
    autograd on a channels-last CPU input, each conv's output channels are re-ordered (an exact re-indexing
    of its weight and bias) so that the shuffle is a reshape / permute that moves contiguous runs of
    ``r * C`` values, forward and backward. Otherwise (inference, GPU, NCHW, tracing) it is BasicSR's forward.
    Shapes: ``(N, F, h, w) -> (N, F, s*h, s*w)``.
    """

    def forward(self, x):
        if not (torch.is_grad_enabled() and x.device.type == 'cpu' and not torch.jit.is_tracing()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        layers = list(self)
        for conv, shuffle in zip(layers[0::2], layers[1::2]):
            r = shuffle.upscale_factor
            c = conv.out_channels // (r * r)
            perm = torch.arange(r * r * c, device=x.device).view(c, r * r).t().reshape(-1)
            bias = None if conv.bias is None else conv.bias.index_select(0, perm)
            y = F.conv2d(x, conv.weight.index_select(0, perm), bias, conv.stride, conv.padding)
            n, _, h, w = y.shape
            nhwc = y.permute(0, 2, 3, 1).reshape(n, h, w, r, r, c)  # a view: y is channels-last
            x = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c).permute(0, 3, 1, 2)
        return x


def make_tail(upsampler, upscale, num_feat, num_out_ch):
    """A leaf's tail, ``(N, num_feat, h, w) -> (N, num_out_ch, s*h, s*w)`` (``s = 1`` for ``bicubic_input``).

    ``pixelshuffle``: BasicSR's ``Upsample`` (conv + pixel shuffle per factor 2, or one for 3) + 3x3 conv
    (RCAN / EDSR / the authors' tails); ``pixelshuffledirect``: one 3x3 conv to ``num_out_ch * s**2`` channels
    + pixel shuffle (IMDN's lightweight upsampler); ``bicubic_input``: the features are already at the output
    size, a 3x3 conv only.
    """
    if upsampler == 'pixelshuffle':
        return nn.Sequential(ShuffleUpsample(upscale, num_feat), FewOutputConv2d(num_feat, num_out_ch, 3, 1, 1))
    if upsampler == 'pixelshuffledirect':
        return nn.Sequential(nn.Conv2d(num_feat, num_out_ch * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale))
    return nn.Sequential(FewOutputConv2d(num_feat, num_out_ch, 3, 1, 1))


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
                  FewOutputConv2d(num_feat, num_branches, 3, 1, 1, bias=False)]
        if last_relu:
            layers.append(nn.ReLU(inplace=True))
        self.fusion = nn.Sequential(*layers)  # same parameter names either way

    def forward(self, stacked):
        return torch.softmax(self.fusion(stacked), dim=1)


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
        deep_residual (bool | str): the multi-branch deep residual structure (paper Sec. 3.2). ``True``: a
            leaf adds, through one conv each, its parent's, grandparent's ... and the head's feature.
            ``False``: the paper's Table 5 ablation "w/o Multi Deep Res", which removes the residuals from
            intermediate branches to their sub-branches and keeps the one from the input (head) features to
            the end branches: one conv + the head feature per leaf (for ``depth`` 1 the same as ``True``).
            ``'no_skip'``: no residual at the leaves at all (what ``False`` meant in d2csr before; its
            checkpoints, which have no ``res_convs``, load into a ``False`` network as ``'no_skip'``, with a
            warning). Default: True.
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
            check_int(f'network_g:{name}', value)
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
        if not (isinstance(deep_residual, bool) or deep_residual == 'no_skip'):
            raise ValueError(f'network_g:deep_residual must be true, false (the paper\'s ablation: the head skip '
                             f'only) or \'no_skip\', got {deep_residual!r}')
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
        self._build_res_convs(num_feat)
        self.tails = nn.ModuleList(
            make_tail(upsampler, upscale, num_feat, num_out_ch) for _ in range(self.num_branches))
        if not isinstance(fusion_last_relu, bool):
            raise ValueError(f'network_g:fusion_last_relu must be true or false, got {fusion_last_relu!r}')
        self.fusion = ConvergenceNet(self.num_branches, num_out_ch, fusion_feat, last_relu=fusion_last_relu)
        self.set_memory_format(torch.channels_last)

    # ----------------------------------------------------------------------------------------------
    # multi-branch deep residual structure
    def _build_res_convs(self, num_feat):
        """``res_convs.i.j`` for the levels ``j`` that ``deep_residual`` keeps (``self.res_levels``): all
        (``True``), the head's, ``depth - 1`` (``False``), none (``'no_skip'``). A ``ModuleDict`` per leaf keyed
        by ``str(j)``, so a kept conv has the same parameter name in every variant."""
        if self.deep_residual is True:
            self.res_levels = tuple(range(self.depth))
        elif self.deep_residual is False:
            self.res_levels = (self.depth - 1, )
        else:
            self.res_levels = ()
        if hasattr(self, 'res_convs'):
            del self.res_convs
        if self.res_levels:
            self.res_convs = nn.ModuleList(
                nn.ModuleDict({str(j): nn.Conv2d(num_feat, num_feat, 3, 1, 1) for j in self.res_levels})
                for _ in range(self.num_branches))

    def adopt_legacy_no_skip(self, keys, prefix=''):
        """Weights without any ``res_convs`` (``keys``: their names) for a ``deep_residual: false`` network come
        from d2csr's former ``false``, now ``'no_skip'``: switch this network to ``'no_skip'`` (a warning says
        so) and return True, so that those checkpoints keep loading and computing what they were trained for.
        Called by ``load_state_dict`` and by :class:`~d2csr.models.D2CModel` before it compares shapes."""
        keys = list(keys)
        if not (self.deep_residual is False and self.res_levels
                and any(k.startswith(prefix + 'tails.') for k in keys)
                and not any(k.startswith(prefix + 'res_convs.') for k in keys)):
            return False
        warnings.warn('D2CSR: these weights have no res_convs: they come from d2csr\'s former `deep_residual: false` '
                      '(no skip at the leaves) and are loaded as `deep_residual: no_skip`, which computes what they '
                      'were trained for. Set network_g:deep_residual: no_skip to silence this; `false` is now the '
                      'paper\'s ablation (the head skip kept).', stacklevel=3)
        self.deep_residual = 'no_skip'
        self._build_res_convs(0)
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.adopt_legacy_no_skip(state_dict.keys(), prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # tree structure helpers
    def level_offset(self, level):
        """Index in ``self.nodes`` of the first node of ``level`` (1-based levels)."""
        return sum(self.width**j for j in range(1, level))

    def leaf_ancestors(self, leaf):
        """Node indices within each level of ``leaf``'s ancestors, from its parent up to the head (level 0)."""
        return [leaf // self.width**(self.depth - level) for level in range(self.depth - 1, -1, -1)]

    def residual_steps(self, leaf):
        """The multi-branch deep residual structure of ``leaf`` (paper Sec. 3.2) as ``[(conv, ancestor), ...]``:
        applied in order to the leaf's branch-module output ``y`` as ``y = conv(y) + features[ancestor]``,
        where ``features[0]`` is the head feature and
        ``features[depth - 1]`` the leaf's parent. :meth:`leaf_features` and the banded inference of
        :mod:`d2csr.banded` both read the structure from here. One step per level that ``deep_residual`` keeps
        (``self.res_levels``): all, the head's alone (``False``), none (``'no_skip'``).
        """
        return [(self.res_convs[leaf][str(j)], self.depth - 1 - j) for j in self.res_levels]

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
    # memory format
    def set_memory_format(self, memory_format=torch.channels_last):
        """Lay out the conv weights and every feature map in ``memory_format``; returns ``self``.

        ``torch.channels_last`` (NHWC, the default since construction) is the layout oneDNN's and cuDNN's
        fast 3x3 kernels use; ``torch.contiguous_format`` gives PyTorch's default NCHW. Parameter names,
        values and checkpoints are the same in both; ``.to(device)`` and ``load_state_dict`` keep the layout.
        Call it before an optimizer is built (it replaces the weights' storage).
        """
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError('D2CSR.set_memory_format: memory_format must be torch.channels_last or '
                             f'torch.contiguous_format, got {memory_format!r}')
        self.memory_format = memory_format
        for m in self.modules():  # conv weights only: buffers such as the (1, C, 1, 1) mean stay as they are
            if isinstance(m, nn.Conv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=memory_format)
        return self

    # ----------------------------------------------------------------------------------------------
    # the two halves of forward_branches (also used by tiled inference, d2csr.tiling)
    def leaf_features(self, x):
        """LR half of :meth:`forward_branches`: ``(N, C, h, w)`` -> list of ``P`` leaf features ``(N, F, h, w)``.

        Everything with a global receptive field (channel attention) lives here. The tree is walked depth
        first, so only one path of ancestor features is held at a time besides the finished leaves.
        """
        x = x.contiguous(memory_format=self.memory_format)
        head = self.head(self._sub_mean(x))
        features = []
        for child in range(self.width):
            self._descend(1, child, [head], features)
        return features

    def _descend(self, level, index, path, features):
        """Node ``index`` of ``level`` on the ancestors' features ``path`` (head first); leaves go to ``features``.
        (A method, not a closure: a recursive closure is a reference cycle that would keep every feature map of
        a call alive until Python's cycle collector runs.)"""
        y = self.nodes[self.level_offset(level) + index](path[-1])
        if level < self.depth:
            for child in range(self.width):
                self._descend(level + 1, index * self.width + child, path + [y], features)
            return
        for conv, ancestor in self.residual_steps(index):
            y = conv(y).add_(path[ancestor])
        features.append(y)

    def leaf_prediction(self, leaf, feature, x, skip=None):
        """HR half of :meth:`forward_branches` for one leaf: ``(N, F, h, w)`` -> ``(N, C, s*h, s*w)``.

        Fully convolutional (upsampler tail, output mean shift and the optional bicubic skip of ``x``,
        the matching ``(N, C, h, w)`` input), so it can run on crops of ``feature`` and ``x``. ``skip``:
        the bicubic-upsampled ``x`` when the caller has it already.
        """
        out = self._add_mean(self.tails[leaf](feature))
        if self.bicubic_skip:
            if skip is None:
                skip = F.interpolate(x, scale_factor=self.upscale, mode='bicubic', align_corners=False)
            out = out + skip
        return out

    # ----------------------------------------------------------------------------------------------
    def forward_branches(self, x):
        """``(N, C, h, w)`` -> list of ``P`` leaf predictions ``(N, C, s*h, s*w)``, depth-first left to right.

        The LR tree runs first (:meth:`leaf_features`), then the leaves' HR tails one after the other, each
        leaf's LR feature dropped once its tail has read it: only one leaf's HR features are alive at a time.
        Under ``torch.autocast`` the predictions come back in ``x``'s dtype.
        """
        features = self.leaf_features(x)
        skip = (F.interpolate(x.contiguous(memory_format=self.memory_format), scale_factor=self.upscale,
                              mode='bicubic', align_corners=False) if self.bicubic_skip else None)
        outputs = []
        for leaf in range(self.num_branches):
            feature, features[leaf] = features[leaf], None
            outputs.append(self.leaf_prediction(leaf, feature, x, skip).to(x.dtype))
            del feature
        return outputs

    def fuse(self, branches):
        """List of ``P`` predictions ``(N, C, H, W)`` -> ``(sr (N, C, H, W), weights (N, P, H, W))`` (paper eq. 8).

        Under ``torch.autocast`` both come back in the predictions' dtype.
        """
        stacked = torch.cat(branches, dim=1).contiguous(memory_format=self.memory_format)
        weights = self.fusion(stacked)
        n, num, h, w = weights.shape
        sr = (stacked.view(n, num, -1, h, w) * weights.unsqueeze(2)).sum(1)
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
