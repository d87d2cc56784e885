"""Tiled inference of :class:`~d2csr.archs.D2CSR` for images of any size: exact, or in bounded memory.

Overlapping tiles are usually only *close* to the untiled output. D2CSR can be tiled exactly because its only
global operation, channel attention's average pooling, lives in the tree at LR resolution.
:func:`tiled_forward` (exact):

1. the LR half (head, tree nodes, deep residual convs) runs on the whole LR image, in horizontal bands
   (``lr='banded'``, the default, :mod:`d2csr.banded`: about 5.5 feature maps at its peak for the default
   network, each channel attention's statistics from a first pass over the bands) or as one piece
   (``lr='whole'``, :meth:`D2CSR.leaf_features`: all ``P`` leaf features plus the trunk's temporaries, about
   9 maps);
2. the HR half is fully convolutional with a finite receptive field, so it runs tile by tile on crops widened
   by ``tile_pad`` LR pixels (:func:`receptive_radius`) and only the crop's centre is kept: each leaf's
   upsampler tail (:meth:`D2CSR.leaf_prediction`) as soon as the leaf is done (its HR prediction is kept
   instead of its feature when it is smaller: ``3 * s**2`` against ``F`` values per LR pixel, so at x2 and
   x4), then the convergence net (:meth:`D2CSR.fuse`). Tiles touching the border see the same zero padding as
   the whole image: the result equals the untiled forward up to float rounding.

:func:`bounded_forward` (approximate, memory independent of the image size beyond the output): the whole
network on overlapping LR tiles, each channel attention scaled by whole-image statistics gathered in a first
pass over the tiles (:mod:`d2csr.bounded`); see its docstring for the deviation from exact.

With ``upsampler: bicubic_input`` (VDSR-style) the tree runs at the output size, so the leaf features are
``(N, F, s*h, s*w)``: tiles are still laid out in LR pixels and features are cropped at ``s`` times those
positions (:func:`feature_factor`). Every backbone x upsampler that :class:`D2CSR` accepts tiles exactly.

Both take ``plan=True`` for a dry run on a network and input on the ``meta`` device: one band and one tile of
each pass, no data, the same allocations (what :mod:`d2csr.memory` measures to predict the peak memory).
"""
import math
from collections import namedtuple

import torch

from d2csr.banded import BandRunner, banded_leaves, conv_radius, meta_copy
from d2csr.bounded import ChannelStatistics

TiledOutput = namedtuple('TiledOutput', ['sr', 'branches', 'weights'])
LR_MODES = ('banded', 'whole')
BOUNDED_TILE = 512  # LR pixels: large tiles keep the widening by the network's radius a small share of the work


def feature_factor(net):
    """Resolution of the leaf features relative to the LR input: ``net.upscale`` for ``upsampler:
    bicubic_input`` (the tree runs on the bicubic-upsampled input), 1 otherwise."""
    return net.upscale if getattr(net, 'upsampler', 'pixelshuffle') == 'bicubic_input' else 1


def receptive_radius(net):
    """LR pixels of context each side of a tile that make the tile's centre exact.

    Radius of one leaf's tail (convs at the features' and intermediate resolutions, rescaled to LR pixels;
    1x1 output mean shift), or 2 LR pixels for the bicubic skip, plus the convergence net's radius at HR,
    rounded up, plus one pixel for the rounding of HR positions to LR ones. For the default RCAN D2CSR:
    x2 4, x3 4, x4 4, x8 4.
    """
    tail_radius, _ = conv_radius(net.tails[0])
    tail_radius /= feature_factor(net)
    if net.bicubic_skip:
        tail_radius = max(tail_radius, 2.0)
    fusion_radius, _ = conv_radius(net.fusion)
    return math.ceil(tail_radius + fusion_radius / net.upscale) + 1


def network_radius(net):
    """LR pixels of context each side that make a tile of the *whole* network exact but for channel
    attention's statistics (an upper bound: the sum of the convs' radii along a root-to-leaf path)."""
    factor = feature_factor(net)
    lr = (3 if factor > 1 else conv_radius(net.head)[0])
    trunk = sum(conv_radius(net.nodes[net.level_offset(level)])[0] for level in range(1, net.depth + 1))
    trunk += sum(conv_radius(conv)[0] for conv, _ in net.residual_steps(0))
    return math.ceil(lr + trunk / factor) + receptive_radius(net)


def _split(length, tile):
    """``[0, length)`` cut into ``ceil(length / tile)`` near-equal parts (no thin leftover strip)."""
    parts = -(-length // tile) if tile > 0 else 1
    edges = [round(i * length / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def tile_boxes(height, width, tile):
    """Non-overlapping ``(y0, y1, x0, x1)`` boxes of at most ``tile`` x ``tile`` covering an image; the
    image is cut into near-equal tiles. ``tile <= 0``: one box."""
    return [(y0, y1, x0, x1) for y0, y1 in _split(height, tile) for x0, x1 in _split(width, tile)]


def _widen(box, pad, height, width):
    y0, y1, x0, x1 = box
    return max(y0 - pad, 0), min(y1 + pad, height), max(x0 - pad, 0), min(x1 + pad, width)


def _largest(boxes, pad, height, width):
    """The box whose widened crop is the largest (what a plan runs: one tile)."""
    def area(box):
        y0, y1, x0, x1 = _widen(box, pad, height, width)
        return (y1 - y0) * (x1 - x0)

    return max(boxes, key=area)


def check_pad(net, tile_pad):
    min_pad = receptive_radius(net)
    if tile_pad is None:
        return min_pad
    if tile_pad < min_pad:
        raise ValueError(f'tile_pad {tile_pad} is smaller than the receptive radius {min_pad} of the '
                         'network\'s HR part: tiles would not be exact. Use tile_pad >= '
                         f'{min_pad} (or leave it unset).')
    return tile_pad


class _HRHalf:
    """The HR half of tiled inference: each leaf's prediction (or feature) as the LR half emits it, then the
    convergence net tile by tile into the outputs. ``steps``: the tiles of the real run (also in a plan)."""

    def __init__(self, net, x, tile, pad, device, keep_predictions, plan, plan_outputs, tick):
        self.net, self.x, self.pad, self.device = net, x, pad, device
        self.plan, self.plan_outputs, self.tick = plan, plan_outputs, tick
        _, _, self.h, self.w = x.shape
        self.boxes = tile_boxes(self.h, self.w, tile)
        self.steps = len(self.boxes) * ((net.num_branches if keep_predictions else 0) + 1)
        if plan:
            self.boxes = [_largest(self.boxes, pad, self.h, self.w)]
        self.keep_predictions = keep_predictions
        self.kept = [None] * net.num_branches
        self.channels = net.fusion.fusion[0].in_channels // net.num_branches  # of a prediction and the output

    def buffer(self, channels):
        """An output-side ``(N, channels, s*h, s*w)`` fp32 buffer (``None`` in a plan that leaves them out)."""
        if self.plan and not self.plan_outputs:
            return None
        s = self.net.upscale
        return torch.empty(self.x.shape[0], channels, self.h * s, self.w * s, dtype=torch.float32,
                           device=self.device)

    def regions(self, box):
        """``(widened LR crop, source slices in the crop's HR result, destination slices in the output)``."""
        s = self.net.upscale
        y0, y1, x0, x1 = box
        cy0, cy1, cx0, cx1 = _widen(box, self.pad, self.h, self.w)
        src = (..., slice((y0 - cy0) * s, (y1 - cy0) * s), slice((x0 - cx0) * s, (x1 - cx0) * s))
        dst = (..., slice(y0 * s, y1 * s), slice(x0 * s, x1 * s))
        return (cy0, cy1, cx0, cx1), src, dst

    def predict(self, leaf, feature, crop):
        cy0, cy1, cx0, cx1 = crop
        fs = feature_factor(self.net)
        return self.net.leaf_prediction(leaf, feature[..., cy0 * fs:cy1 * fs, cx0 * fs:cx1 * fs],
                                        self.x[..., cy0:cy1, cx0:cx1])

    def emit(self, leaf, feature):
        """The LR half hands over leaf ``leaf``'s feature: keep its HR prediction, or the feature itself."""
        if not self.keep_predictions:
            self.kept[leaf] = feature
            return
        pred = self.buffer(self.channels)  # before the first tile, as the plan of one tile must see it
        for box in self.boxes:
            crop, src, dst = self.regions(box)
            out = self.predict(leaf, feature, crop)
            if pred is not None:
                pred[dst] = out[src].to(self.device, torch.float32)
            del out
            self.tick()
        self.kept[leaf] = pred

    def kept_predictions(self, crop):
        """The kept predictions' crops on the compute device."""
        cy0, cy1, cx0, cx1 = crop
        s, x = self.net.upscale, self.x
        return [torch.empty(x.shape[0], self.channels, (cy1 - cy0) * s, (cx1 - cx0) * s, device=x.device)
                if p is None else p[..., cy0 * s:cy1 * s, cx0 * s:cx1 * s].to(x.device)  # None: a plan without them
                for p in self.kept]

    def fuse(self, return_branches, return_weights):
        net = self.net
        sr = self.buffer(self.channels)  # before the first tile, as the plan of one tile must see them
        weights = self.buffer(net.num_branches) if return_weights else None
        branches = None
        if return_branches and not self.keep_predictions:
            branches = [self.buffer(self.channels) for _ in range(net.num_branches)]
        for box in self.boxes:
            crop, src, dst = self.regions(box)
            if self.keep_predictions:
                preds = self.kept_predictions(crop)
            else:
                preds = [self.predict(i, f, crop) for i, f in enumerate(self.kept)]
            sr_tile, w_tile = net.fuse(preds)
            if sr is not None:
                sr[dst] = sr_tile[src].to(self.device, torch.float32)
                if weights is not None:
                    weights[dst] = w_tile[src].to(self.device, torch.float32)
                for full, pred in zip(branches or [], preds):
                    if full is not None:
                        full[dst] = pred[src].to(self.device, torch.float32)
            del preds, sr_tile, w_tile
            self.tick()
        if return_branches and self.keep_predictions:
            branches = self.kept
        return TiledOutput(sr, branches, weights)


def _keeps_predictions(net, x, device, return_branches):
    """Keep each leaf's HR prediction (``C * s**2`` fp32 values per LR pixel, on the output device) rather than
    its feature (``F * fs**2`` values in the maps' dtype): when smaller, when the branches are asked for, or when
    the outputs live on another device (a GPU then holds only the LR maps)."""
    if return_branches or device != x.device:
        return True
    fs = feature_factor(net)
    pred_bytes = net.fusion.fusion[0].in_channels // net.num_branches * net.upscale**2 * 4
    amp = torch.is_autocast_enabled(x.device.type) if x.device.type in ('cpu', 'cuda') else False
    feature_bytes = net.head.out_channels * fs * fs * (2 if amp else x.element_size())
    return pred_bytes <= feature_bytes


def tiled_run(net, x, tile, tile_pad, return_branches, return_weights, device, lr='banded', band_rows=None,
              plan=False, plan_outputs=True, progress=None, keep_predictions=None):
    """The run behind :func:`tiled_forward` (checked arguments; ``tile_pad`` given): returns ``(TiledOutput,
    steps)``, ``steps`` the bands and tiles of the real run (also in a plan); ``progress(done)`` after each.
    ``keep_predictions``: override the choice of :func:`_keeps_predictions` (a plan of a GPU run)."""
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0])

    if keep_predictions is None:
        keep_predictions = _keeps_predictions(net, x, device, return_branches)
    hr = _HRHalf(net, x, tile, tile_pad, device, keep_predictions, plan, plan_outputs, tick)
    runner = BandRunner(band_rows, plan=plan, progress=tick)
    if lr == 'banded':
        banded_leaves(net, x, hr.emit, runner)
    else:
        features = net.leaf_features(x)
        for leaf in range(len(features)):
            feature, features[leaf] = features[leaf], None
            hr.emit(leaf, feature)
            del feature
    return hr.fuse(return_branches, return_weights), runner.steps + hr.steps


@torch.no_grad()
def tiled_forward(net, x, tile=128, tile_pad=None, return_branches=False, return_weights=False,
                  output_device=None, progress=None, lr='banded', band_rows=None, plan=False, plan_outputs=True):
    """Fused SR of ``x`` (``(N, C, h, w)``) by ``net``, exactly, in bounded memory (see the module docstring).

    Args:
        net (D2CSR): in eval mode.
        x (Tensor): ``(N, C, h, w)`` LR input on the network's device and dtype.
        tile (int): tile side in LR pixels of the HR half; ``<= 0`` runs it in one piece. Default: 128.
        tile_pad (int, optional): context each side in LR pixels; at least :func:`receptive_radius` (the
            default), a smaller value raises ``ValueError`` because the result would not be exact.
        return_branches (bool): also return the ``P`` HR branches (``P`` full-size images in memory).
        return_weights (bool): also return the convergence weights ``(N, P, s*h, s*w)``.
        output_device: where the outputs are assembled (e.g. ``'cpu'`` for a large image on a GPU);
            defaults to ``x``'s device.
        progress (callable, optional): called with ``(done, total)`` after each band and tile.
        lr (str): the LR half in bands (``'banded'``, least memory) or in one piece (``'whole'``).
        band_rows (int, optional): rows per band (default: :class:`~d2csr.banded.BandRunner`'s).
        plan (bool): a dry run on the ``meta`` device (see the module docstring); ``plan_outputs=False``
            leaves out the output-side buffers (to plan the compute device alone).

    Returns:
        TiledOutput: ``sr`` ``(N, C, s*h, s*w)`` float32, ``branches`` (list or ``None``), ``weights``
        (or ``None``).
    """
    if x.dim() != 4:
        raise ValueError(f'tiled_forward expects an (N, C, h, w) tensor, got shape {tuple(x.shape)}')
    if lr not in LR_MODES:
        raise ValueError(f'tiled_forward: lr must be one of {LR_MODES}, got {lr!r}')
    tile_pad = check_pad(net, tile_pad)
    device = torch.device(output_device) if output_device is not None else x.device
    report = None
    if progress is not None and not plan:
        total = count_steps(net, x, tile, tile_pad, return_branches, device, lr, band_rows)

        def report(done):
            progress(min(done, total), total)

    out, _ = tiled_run(net, x, tile, tile_pad, return_branches, return_weights, device, lr, band_rows, plan,
                       plan_outputs, report)
    return out


def count_steps(net, x, tile=128, tile_pad=None, return_branches=False, output_device=None, lr='banded',
                band_rows=None):
    """Bands and tiles a :func:`tiled_forward` call with these arguments runs (from a plan on ``meta``)."""
    meta = meta_copy(net)
    xm = torch.empty(x.shape, dtype=x.dtype, device='meta')
    keep = _keeps_predictions(net, x, torch.device(output_device or x.device), return_branches)
    with torch.no_grad():
        _, steps = tiled_run(meta, xm, tile, check_pad(net, tile_pad), return_branches, False, xm.device, lr,
                             band_rows, plan=True, plan_outputs=False, keep_predictions=keep)
    return steps


@torch.no_grad()
def bounded_forward(net, x, tile=BOUNDED_TILE, tile_pad=None, passes=2, hr_tile=128, return_branches=False,
                    return_weights=False, output_device=None, progress=None, plan=False, plan_outputs=True):
    """Fused SR of ``x`` by ``net`` in memory bounded by one tile's plus the outputs: the whole network on
    overlapping LR tiles, channel attention with whole-image statistics (:class:`~d2csr.bounded.ChannelStatistics`).

    Approximate where the network has channel attention (RCAN, IMDN backbones); exact otherwise (every other
    backbone is local, and the tiles are widened by the network's whole receptive radius).

    Args:
        net (D2CSR): in eval mode.
        x (Tensor): ``(N, C, h, w)`` LR input on the network's device.
        tile (int): tile side in LR pixels. Default: 512.
        tile_pad (int, optional): context each side in LR pixels; default (and what makes the result exact but
            for the statistics): :func:`network_radius`; at least :func:`receptive_radius`.
        passes (int): passes over the tiles, >= 1: ``passes - 1`` gather the statistics (the LR half only),
            the last computes the output with them; ``1``: each tile pools over itself (Real-ESRGAN-style).
        hr_tile (int): tile side of the HR half within a tile (:func:`tiled_forward`).
        return_branches, return_weights, output_device, plan, plan_outputs: as for :func:`tiled_forward`.
        progress (callable, optional): called with ``(done, total)`` after each tile of each pass.

    Returns:
        TiledOutput.
    """
    if x.dim() != 4:
        raise ValueError(f'bounded_forward expects an (N, C, h, w) tensor, got shape {tuple(x.shape)}')
    if not (isinstance(passes, int) and passes >= 1):
        raise ValueError(f'bounded_forward: passes must be an integer >= 1, got {passes!r}')
    pad = network_radius(net) if tile_pad is None else check_pad(net, tile_pad)
    device = torch.device(output_device) if output_device is not None else x.device
    stats = ChannelStatistics(net)
    passes = passes if stats.layers else 1
    n, _, h, w = x.shape
    s = net.upscale
    boxes = tile_boxes(h, w, tile if tile > 0 else max(h, w))
    total = passes * len(boxes)
    if plan:
        boxes = [_largest(boxes, pad, h, w)]
    done = 0

    def tiles():
        nonlocal done
        for box in boxes:
            cy0, cy1, cx0, cx1 = _widen(box, pad, h, w)
            y0, y1, x0, x1 = box
            yield box, (cy0, cy1, cx0, cx1), (y0 - cy0, y1 - cy0, x0 - cx0, x1 - cx0)
            done += 1
            if progress is not None:
                progress(done, total)

    for _ in range(passes - 1):  # statistics: the LR half of every tile
        stats.begin_pass()
        for _, (cy0, cy1, cx0, cx1), centre in tiles():
            with stats.tile(centre, (cy1 - cy0, cx1 - cx0), record=True):
                net.leaf_features(x[..., cy0:cy1, cx0:cx1])
        stats.end_pass()

    def full(channels):  # allocated before the first tile, as the plan of one tile must see them
        if plan and not plan_outputs:
            return None
        return torch.empty(n, channels, h * s, w * s, dtype=torch.float32, device=device)

    channels = net.fusion.fusion[0].in_channels // net.num_branches
    outputs = TiledOutput(full(channels), [full(channels) for _ in range(net.num_branches)] if return_branches
                          else None, full(net.num_branches) if return_weights else None)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1), centre in tiles():
        with stats.tile(centre, (cy1 - cy0, cx1 - cx0), record=False):
            part = tiled_forward(net, x[..., cy0:cy1, cx0:cx1], hr_tile, return_branches=return_branches,
                                 return_weights=return_weights, output_device=device, lr='whole', plan=plan,
                                 plan_outputs=plan_outputs)
        src = (..., slice((y0 - cy0) * s, (y1 - cy0) * s), slice((x0 - cx0) * s, (x1 - cx0) * s))
        dst = (..., slice(y0 * s, y1 * s), slice(x0 * s, x1 * s))
        for whole, piece in zip([outputs.sr] + (outputs.branches or []) + [outputs.weights],
                                [part.sr] + (part.branches or []) + [part.weights]):
            if whole is not None and piece is not None:
                whole[dst] = piece[src]
        del part
    return outputs
