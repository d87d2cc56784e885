"""Exact LR half of D2CSR in horizontal bands: every leaf of an image of any size in bounded working memory.

:meth:`D2CSR.leaf_features <d2csr.archs.D2CSR.leaf_features>` holds the whole LR image's head feature, the
ancestors on the current path, every finished leaf and the branch module's whole-image temporaries: about nine
feature maps ``(F, h, w)`` at its peak for the default network. :func:`banded_leaves` computes the same leaves
(up to float rounding) holding at most about five and a half, handing each to the caller as soon as it is done:

- every operation runs over horizontal bands of rows (:class:`BandRunner`): a band is computed on its rows
  widened by the operation's receptive radius and only its own rows are kept, so temporaries are the size of a
  band; a map the walk owns is overwritten in place (the few rows a later band still reads are saved first);
- channel attention (RCAN's RCAB, IMDN's contrast-aware attention) scales a map by statistics of the whole map:
  a first pass over the bands accumulates them, a second pass recomputes the block band by band and applies the
  scale. For RCAB the first pass runs only the first conv: the mean of the second conv's output follows from
  the sums of its input over the image and over its first and last rows and columns (:func:`_mean_of_conv3x3`);
- the tree is walked depth first and each map is dropped or overwritten at its last use. For a leaf that is its
  parent's last child the deep residual adds (affine in the leaf's feature) are folded first into one map, so
  the parent's map can then be overwritten by the leaf's branch module;
- each finished leaf goes to ``emit`` at once: tiled inference (:mod:`d2csr.tiling`) turns it into its HR
  prediction (``3 * s**2`` values per LR pixel: fewer than a feature's ``F`` at x2 and x4) and drops it.

Peak for the default x4 network (``F = 64``, depth 2, width 2, RCAN nodes of 2 groups): the first leaf of the
second subtree holds the head feature, its parent, the group's input and its running map, plus two HR
predictions (3/4 of a map each): 5.5 maps of ``4 F`` bytes per LR pixel (1.31 GiB per LR megapixel in fp32),
against about 9 for :meth:`leaf_features`. Modules this file does not know run on the whole map (exact,
without the saving); see :data:`LOCAL_MODULES` for the ones it bands as a unit.
"""
import copy
import math
from collections import namedtuple

import torch
from torch import nn
from torch.nn import functional as F
from basicsr.archs.arch_util import ResidualBlockNoBN
from basicsr.archs.rrdbnet_arch import RRDB, ResidualDenseBlock as RRDBDenseBlock

from d2csr.archs.branch_modules import RCABlock, RCANGroup
from d2csr.archs.d2csr_arch import BicubicInputConv
from d2csr.archs.imdn_arch import IMDB, IMDNTrunk
from d2csr.archs.rdn_arch import RDNTrunk, ResidualDenseBlock

BAND_PIXELS = 1 << 17  # pixels per band (32 MB per 64-channel fp32 band): rows = this / width ...
MIN_ROWS = 32  # ... but at least this many rows, so that the halo rows stay a small share of the work

# Modules whose output at a pixel depends only on their input within a finite radius, and whose forward never
# writes into its input: banded as one unit with the sum of their convs' radii.
LOCAL_MODULES = (nn.Conv2d, ResidualBlockNoBN, RRDB, RRDBDenseBlock, ResidualDenseBlock, RDNTrunk)
POINTWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Sigmoid, nn.Identity)

Band = namedtuple('Band', ['top', 'rows', 'start', 'height', 'out'])
Band.__doc__ = """One band of rows: its rows start ``top`` rows into the widened part handed to the band's
function, there are ``rows`` of them, starting at row ``start`` of an image of ``height`` rows; ``out``: where
they go in the result (a view the function may write into and return, saving a copy), or ``None``."""


def core(tensor, band, factor=1):
    """The band's own rows of a result computed on its widened rows (``factor``: output rows per input row)."""
    return tensor[..., band.top * factor:(band.top + band.rows) * factor, :]


def conv_radius(module):
    """Sum of the radii of ``module``'s convs, in the pixels of each conv's own resolution rescaled to the
    module's input resolution, and the module's resolution factor (pixel shuffles). An upper bound of the
    receptive radius of a chain of convs (exact for a plain chain)."""
    radius, resolution = 0.0, 1
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            radius += max((k // 2) * d for k, d in zip(layer.kernel_size, layer.dilation)) / resolution
        elif isinstance(layer, nn.PixelShuffle):
            resolution *= layer.upscale_factor
        elif isinstance(layer, (nn.Upsample, nn.ConvTranspose2d)):
            raise ValueError(f'receptive_radius: cannot bound the receptive field of {type(layer).__name__}')
    return radius, resolution


def _same_size_conv(conv):
    return (conv.stride == (1, 1) and conv.padding_mode == 'zeros'
            and conv.padding == tuple((k // 2) * d for k, d in zip(conv.kernel_size, conv.dilation)))


def is_local(module):
    """Whether :class:`BandRunner` may band ``module`` as one unit: a known local module (or a plain
    ``nn.Sequential`` of them) whose convs keep the size."""
    if isinstance(module, nn.Conv2d):
        return _same_size_conv(module)
    if type(module) is nn.Sequential:
        return all(is_local(m) or isinstance(m, POINTWISE_MODULES) for m in module)
    if type(module) in LOCAL_MODULES:
        return all(_same_size_conv(m) for m in module.modules() if isinstance(m, nn.Conv2d))
    return False


def meta_copy(net):
    """A copy of ``net`` on the ``meta`` device (shapes without data), to plan a run: see ``plan`` below."""
    return copy.deepcopy(net).to('meta')


class BandRunner:
    """Runs maps through functions band by band (see the module docstring).

    Args:
        rows (int, optional): rows per band; default: ``BAND_PIXELS / width``, at least ``MIN_ROWS``.
        plan (bool): compute one band of each pass only (for a run on the ``meta`` device that predicts the
            memory and counts the steps of the real run, :mod:`d2csr.memory`).
        progress (callable, optional): called with no argument after each band.

    ``steps`` counts the bands of the real run (also in plan mode).
    """

    def __init__(self, rows=None, plan=False, progress=None):
        self.rows = rows
        self.plan = plan
        self.progress = progress
        self.steps = 0

    def bands(self, height, width):
        rows = self.rows or max(MIN_ROWS, math.ceil(BAND_PIXELS / max(width, 1)))
        edges = list(range(0, height, rows)) + [height]
        return list(zip(edges[:-1], edges[1:]))

    def map(self, fn, radius, sources, target=None, add=False, factor=1, channels=None):
        """``target[band] = fn(*widened bands of sources, band)`` (``+=`` with ``add``) for every band.

        ``fn`` gets each source's rows widened by ``radius`` (clipped at the image's edges, where the zero
        padding of the whole image applies) and returns the band's own rows of the result (:func:`core`), or
        ``None`` (a pass that only gathers statistics). ``target``: ``None`` allocates the result (``factor``
        times the sources' size) before the first band when ``channels`` is given, else at the first band; a
        source given as ``target`` is overwritten in place. Returns ``target``.
        """
        n, _, height, width = sources[0].shape
        radius = int(math.ceil(radius))
        if target is None and channels is not None:
            target = torch.empty((n, channels, height * factor, width * factor), dtype=sources[0].dtype,
                                 device=sources[0].device, memory_format=torch.channels_last)
        in_place = [i for i, s in enumerate(sources) if target is not None and s is target]
        saved = dict.fromkeys(in_place)
        bands = self.bands(height, width)
        self.steps += len(bands)
        if self.plan:
            bands = [bands[len(bands) // 2]]
        for start, stop in bands:
            lo, hi = max(start - radius, 0), min(stop + radius, height)
            if self.plan:  # what the real run holds at this band: the saved rows above it
                saved = {i: sources[i][..., lo:start, :].clone() for i in in_place}
            parts = []
            for i, src in enumerate(sources):
                if saved.get(i) is not None and lo < start:  # rows above were overwritten: their saved originals
                    parts.append(torch.cat([saved[i][..., saved[i].shape[-2] - (start - lo):, :],
                                            src[..., start:hi, :]], dim=2))
                else:
                    parts.append(src[..., lo:hi, :])
            for i in in_place:  # keep the last `radius` original rows for the next band's top, before writing
                if radius:
                    keep = sources[i][..., max(stop - radius, start):stop, :]
                    if saved[i] is not None and stop - start < radius:  # bands thinner than the radius
                        keep = torch.cat([saved[i], keep], dim=2)[..., -radius:, :]
                    saved[i] = keep.clone()
                    del keep
            dst = None if target is None or add else target[..., start * factor:stop * factor, :]
            out = fn(*parts, Band(start - lo, stop - start, start, height, dst))
            del parts
            if out is not None:
                if target is None:
                    target = torch.empty((n, out.shape[1], height * factor, width * factor), dtype=out.dtype,
                                         device=out.device, memory_format=torch.channels_last)
                if add:
                    target[..., start * factor:stop * factor, :].add_(out)
                elif out is not dst:
                    target[..., start * factor:stop * factor, :].copy_(out)
                del out, dst
            if self.progress is not None:
                self.progress()
        return target

    # ----------------------------------------------------------------------------------------------
    # modules
    def module(self, m, x, owned):
        """``m(x)`` computed band by band; ``owned``: ``x`` may be overwritten (the result may be ``x``).
        Without ``owned`` the result is always a new map."""
        if isinstance(m, RCANGroup):
            return self.rcan_group(m, x, owned)
        if isinstance(m, RCABlock):
            return self.rcab(m, x, x if owned else None)
        if isinstance(m, IMDNTrunk):
            return self.imdn_trunk(m, x)
        if isinstance(m, IMDB):
            return self.imdb(m, x)
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            if len(m) == 0:
                return x if owned else x.clone()
            for child in m:
                x = self.module(child, x, owned)
                owned = True
            return x
        if isinstance(m, POINTWISE_MODULES):  # no temporaries: in place when owned (in-place modules are)
            return m(x) if owned else m(x.clone())
        if is_local(m):
            radius, resolution = conv_radius(m)
            if resolution == 1:
                return self.map(lambda xb, band: core(m(xb), band), radius, [x],
                                target=x if owned and _keeps_channels(m, x) else None)
        out = m(x)  # a module of unknown locality: on the whole map (exact, no saving)
        return out if owned or out is not x else out.clone()

    def rcan_group(self, m, g, owned):
        """RCAN's residual group ``conv(blocks(g)) + g``: the blocks run on a second map, the conv adds into
        ``g`` when it is owned (else into that second map)."""
        x = None
        for block in m.residual_group:
            x = self.module(block, g if x is None else x, owned=x is not None)
        radius = conv_radius(m.conv)[0]
        if owned:
            return self.map(lambda xb, band: core(m.conv(xb), band), radius, [x], target=g, add=True)
        return self.map(lambda xb, gb, band: _add(core(m.conv(xb), band), core(gb, band), band.out), radius, [x, g],
                        target=x)

    def rcab(self, block, x, target):
        """RCAB ``x + res_scale * CA(y) * y`` in two passes: the whole map's mean of ``y``, then the block."""
        mean = self.rcab_mean(block, x)
        scale = block.attention_scale(mean.to(torch.float32))
        radius = conv_radius(block.rcab[:3])[0]

        def apply(xb, band):
            y = core(block.residual(xb), band)
            if _writable(band.out, y):
                return torch.addcmul(core(xb, band), y, scale, value=block.res_scale, out=band.out)
            return torch.addcmul(core(xb, band), y, scale, value=block.res_scale)

        return self.map(apply, radius, [x], target=target, channels=x.shape[1])

    def rcab_mean(self, block, x):
        """``block.residual(x).mean((2, 3))`` (float64 ``(N, F)``) without holding the residual."""
        conv1, act, conv2, _ = block.rcab
        n, _, h, w = x.shape
        if not (isinstance(conv2, nn.Conv2d) and conv2.kernel_size == (3, 3) and conv2.groups == 1
                and conv2.dilation == (1, 1) and _same_size_conv(conv2)):
            total = x.new_zeros(n, conv2.out_channels, dtype=torch.float64)

            def gather(xb, band):
                total.add_(core(block.residual(xb), band).sum((2, 3), dtype=torch.float64))

            self.map(gather, conv_radius(block.rcab[:3])[0], [x])
            return total / (h * w)
        sums = BorderSums(n, conv2.in_channels, x)
        self.map(lambda xb, band: sums.add(core(act(conv1(xb)), band), band), conv_radius(conv1)[0], [x])
        return _mean_of_conv3x3(conv2, sums, h, w)

    def imdb(self, block, x):
        """IMDB ``c5(cca(d)) + x`` with ``d`` its distilled features: their mean and variance over the whole
        map first, then the block. Always a new map."""
        radius = conv_radius(nn.ModuleList([block.c1, block.c2, block.c3, block.c4]))[0]
        n, _, h, w = x.shape
        s1 = x.new_zeros(n, 4 * block.distilled, dtype=torch.float64)
        s2 = torch.zeros_like(s1)

        def gather(xb, band):
            d = core(block.distill(xb), band).double()
            s1.add_(d.sum((2, 3)))
            s2.add_(d.square_().sum((2, 3)))

        self.map(gather, radius, [x])
        mean = s1 / (h * w)
        var = (s2 / (h * w) - mean.square()).clamp_min(0)
        scale = block.cca.scale(mean[..., None, None].float(), var[..., None, None].float())

        def apply(xb, band):
            return block.c5(core(block.distill(xb), band) * scale) + core(xb, band)

        return self.map(apply, radius, [x])

    def imdn_trunk(self, m, x):
        """IMDN's trunk: every block's output is kept (the fusion reads them all), then fusion and conv."""
        outs = []
        for block in m.blocks:
            outs.append(self.module(block, outs[-1] if outs else x, owned=False))
        radius = conv_radius(m.fuse)[0] + conv_radius(m.conv)[0]
        return self.map(lambda *parts: core(m.conv(m.fuse(torch.cat(parts[:-1], dim=1))), parts[-1]), radius, outs)

    def conv(self, conv, y, add=None, bias=True):
        """``y = conv(y) (+ add)`` in place; ``bias=False`` leaves out the conv's bias."""
        b = conv.bias if bias else None

        def fn(yb, *ab):
            band = ab[-1]
            out = core(F.conv2d(yb, conv.weight, b, conv.stride, conv.padding, conv.dilation, conv.groups), band)
            return _add(out, core(ab[0], band), band.out) if len(ab) == 2 else out

        return self.map(fn, conv_radius(conv)[0], [y] if add is None else [y, add], target=y)


def _writable(out, like):
    """Whether a result like ``like`` may be written straight into ``out`` (the band's place in the result)."""
    return out is not None and out.shape == like.shape and out.dtype == like.dtype


def _add(a, b, out):
    """``a + b``, into ``out`` when it can take it (see :func:`_writable`)."""
    return torch.add(a, b, out=out) if _writable(out, a) else a.add_(b)


def _keeps_channels(m, x):
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    return not convs or (convs[0].in_channels == x.shape[1] and convs[-1].out_channels == x.shape[1])


class BorderSums:
    """Per-channel sums of a map gathered band by band: over the whole map, its first and last rows and
    columns, and its four corners (float64 ``(N, C)`` each)."""

    def __init__(self, n, channels, like):
        def zeros():
            return like.new_zeros(n, channels, dtype=torch.float64)

        self.total, self.row0, self.row1, self.col0, self.col1 = (zeros() for _ in range(5))
        self.corner = {key: zeros() for key in ('00', '01', '10', '11')}  # (first/last row, first/last column)

    def add(self, z, band):
        f64 = torch.float64
        self.total.add_(z.sum((2, 3), dtype=f64))
        self.col0.add_(z[..., 0].sum(2, dtype=f64))
        self.col1.add_(z[..., -1].sum(2, dtype=f64))
        for row, index in (('0', 0), ('1', -1)):
            if (band.start == 0) if row == '0' else (band.start + band.rows == band.height):
                getattr(self, f'row{row}').add_(z[..., index, :].sum(2, dtype=f64))
                self.corner[row + '0'].add_(z[..., index, 0].double())
                self.corner[row + '1'].add_(z[..., index, -1].double())


def _mean_of_conv3x3(conv, sums, h, w):
    """Spatial mean ``(N, C_out)`` (float64) of ``conv(z)`` (3x3, padding 1) from :class:`BorderSums` of ``z``.

    Output pixel ``p`` reads ``z[p + (dy - 1, dx - 1)]``, zero outside: summed over all ``p``, tap ``(dy, dx)``
    sees all of ``z`` except its last row (``dy = 0``) or first row (``dy = 2``) and its last column (``dx = 0``)
    or first column (``dx = 2``), the excluded corner added back once.
    """
    n, c = sums.total.shape
    taps = sums.total[:, :, None, None].expand(n, c, 3, 3).clone()
    taps[:, :, 0, :] -= sums.row1[:, :, None]
    taps[:, :, 2, :] -= sums.row0[:, :, None]
    taps[:, :, :, 0] -= sums.col1[:, :, None]
    taps[:, :, :, 2] -= sums.col0[:, :, None]
    taps[:, :, 0, 0] += sums.corner['11']
    taps[:, :, 0, 2] += sums.corner['10']
    taps[:, :, 2, 0] += sums.corner['01']
    taps[:, :, 2, 2] += sums.corner['00']
    mean = torch.einsum('cfyx,nfyx->nc', conv.weight.double(), taps) / (h * w)
    return mean + conv.bias.double() if conv.bias is not None else mean


# ----------------------------------------------------------------------------------------------------------------
class _TreeWalk:
    """Depth-first walk of the tree with use counts: ``held[level]`` is the current node's output at each level
    (0: the head feature), ``uses[level]`` how many reads of it are still to come (its children's branch
    modules and the residual adds of the leaves below it)."""

    def __init__(self, net, runner):
        self.net, self.runner = net, runner
        self.held = [None] * net.depth
        self.uses = [0] * net.depth

    def _uses(self, level, index):
        net = self.net
        span = net.width**(net.depth - level)
        leaves = range(index * span, (index + 1) * span)
        return net.width + sum(a == level for leaf in leaves for _, a in net.residual_steps(leaf))

    def _hold(self, level, index, tensor):
        self.held[level], self.uses[level] = tensor, self._uses(level, index)

    def take(self, level):
        """The map at ``level`` for one read; ``last``: no read is left, the caller owns it."""
        self.uses[level] -= 1
        tensor = self.held[level]
        last = self.uses[level] == 0
        if last:
            self.held[level] = None
        return tensor, last

    def head(self, x):
        net = self.net
        factor = net.upscale if isinstance(net.head, BicubicInputConv) else 1
        # bicubic: 2 LR pixels each side, then the 3x3 conv at HR (under one LR pixel); else the head conv (the
        # learnable mean shift is a 1x1 conv)
        radius = 3 if factor > 1 else conv_radius(net.head)[0]
        return self.runner.map(lambda xb, band: core(net.head(net._sub_mean(xb)), band, factor), radius, [x],
                               factor=factor)

    def run(self, x, emit):
        self._hold(0, 0, self.head(x.contiguous(memory_format=torch.channels_last)))
        self.descend(0, 0, emit)

    def descend(self, level, index, emit):
        net = self.net
        for child in range(net.width):
            node = index * net.width + child
            if level + 1 == net.depth:
                self.leaf(node, emit)
                continue
            parent, last = self.take(level)
            out = self.runner.module(net.nodes[net.level_offset(level + 1) + node], parent, owned=last)
            del parent
            self._hold(level + 1, node, out)
            del out
            self.descend(level + 1, node, emit)

    def leaf(self, leaf, emit):
        net, runner = self.net, self.runner
        node = net.nodes[net.level_offset(net.depth) + leaf]
        steps = net.residual_steps(leaf)
        p = net.depth - 1
        reads_after = self.uses[p] - 1 - sum(a == p for _, a in steps)
        if steps and reads_after == 0:  # the parent's last child: fold the residual adds, then overwrite it
            total = self.fold(steps)
            parent, last = self.take(p)
            assert last
            y = runner.module(node, parent, owned=True)
            del parent
            for conv, _ in steps:
                y = runner.conv(conv, y, bias=False)
            y.add_(total)
            del total
        else:
            parent, last = self.take(p)
            y = runner.module(node, parent, owned=last)
            del parent
            for conv, level in steps:
                ancestor, _ = self.take(level)
                y = runner.conv(conv, y, ancestor)
                del ancestor
        emit(leaf, y)

    def fold(self, steps):
        """The residual adds of a leaf on a zero feature (``y = linear part(y0) + fold``): every step is
        ``conv(y) + ancestor``, affine in ``y``."""
        total = None
        for conv, level in steps:
            ancestor, last = self.take(level)
            if total is None:
                bias = None if conv.bias is None else conv.bias.view(1, -1, 1, 1).to(ancestor.dtype)
                if last:
                    total = ancestor if bias is None else ancestor.add_(bias)
                else:
                    total = ancestor.clone() if bias is None else ancestor + bias
            else:
                total = self.runner.conv(conv, total, ancestor)
            del ancestor
        return total


@torch.no_grad()
def banded_leaves(net, x, emit, runner=None):
    """Every leaf feature of ``net`` (a :class:`~d2csr.archs.D2CSR`) on ``x`` ``(N, C, h, w)``, exactly as
    :meth:`~d2csr.archs.D2CSR.leaf_features` computes them (up to float rounding), in bounded working memory.

    ``emit(leaf, feature)`` receives each leaf's feature ``(N, F, h, w)`` (``s*h, s*w`` with
    ``upsampler: bicubic_input``) in leaf order, as soon as it is done; the caller owns it (keep it or drop it).
    ``runner``: a :class:`BandRunner` (band size, plan mode, progress).
    """
    _TreeWalk(net, runner or BandRunner()).run(x, emit)
