"""Channel attention with whole-image statistics gathered tile by tile, for bounded-memory inference.

Exact inference (:func:`d2csr.tiling.tiled_forward`) keeps LR feature maps of the whole image: about 1.3 GiB per LR
megapixel for the default network. Beyond what a machine has, :func:`d2csr.tiling.bounded_forward` runs the whole
network on overlapping LR tiles, so that its memory is one tile's plus the output. A tile widened by the network's
receptive radius computes its centre exactly except for channel attention (RCAN's RCAB, IMDN's contrast-aware
attention), whose global average pooling would see only the tile: tiles would then disagree with each other and
with the whole image (Real-ESRGAN-style tiling).

:class:`ChannelStatistics` replaces those per-tile statistics by whole-image ones, in passes over the tiles: in
the first pass each attention layer pools over its tile as usual while the sums over the tile's *centre* are added
up (the centres cover the image once); every later pass scales with the whole-image statistics of the pass before.
The first layer's statistics are exact after one pass (its input is), a later layer's are computed from inputs
that the first pass's per-tile statistics made slightly different; each further pass brings them closer. All
tiles of the output pass use the same statistics, so there are no seams. The deviation from exact inference is
measured by ``benchmarks/bench_inference.py --deviation``.
"""
import contextlib
from functools import partial

import torch

from d2csr.archs.branch_modules import RCABlock
from d2csr.archs.imdn_arch import ContrastChannelAttention


class ChannelStatistics:
    """Whole-image statistics of every channel-attention layer of ``net``, gathered tile by tile.

    ``means`` is ``None`` until a pass has finished (:meth:`end_pass`); inside :meth:`tile` the layers then scale
    with it instead of their tile's own statistics. Other global operations a network might have are not known
    here and keep pooling per tile.
    """

    def __init__(self, net):
        self.layers = [m for m in net.modules() if isinstance(m, (RCABlock, ContrastChannelAttention))]
        self.means = None
        self._sums = {}

    def begin_pass(self):
        self._sums = {}

    def end_pass(self):
        """Whole-image statistics from the sums of the pass: ``(N, C)`` means for RCAB, ``(mean, var)``
        ``(N, C, 1, 1)`` for contrast-aware attention."""
        means = {}
        for layer, (s1, s2, count) in self._sums.items():
            mean = s1 / count
            if s2 is None:
                means[layer] = mean.float()
            else:
                var = (s2 / count - mean.square()).clamp_min(0)
                means[layer] = (mean[..., None, None].float(), var[..., None, None].float())
        self.means = means

    def _add(self, layer, values, centre, squares):
        v = values[centre].double()
        s1, s2 = v.sum((2, 3)), (v.square().sum((2, 3)) if squares else None)
        count = v.shape[-2] * v.shape[-1]
        if layer in self._sums:
            old = self._sums[layer]
            s1, s2, count = old[0] + s1, (old[1] + s2 if squares else None), old[2] + count
        self._sums[layer] = (s1, s2, count)

    @staticmethod
    def _centre(values, centre, crop_size):
        """The slices of the tile's centre ``(y0, y1, x0, x1)`` (crop pixels) at the resolution of ``values``."""
        f = values.shape[-1] // crop_size[1]
        y0, y1, x0, x1 = centre
        return (..., slice(y0 * f, y1 * f), slice(x0 * f, x1 * f))

    def _rcab(self, block, centre, crop_size, record, x):
        y = block.residual(x)
        if record:
            self._add(block, y, self._centre(y, centre, crop_size), False)
        pooled = self.means[block].to(y.device) if self.means is not None else y.mean((2, 3))
        return torch.addcmul(x, y, block.attention_scale(pooled), value=block.res_scale, out=y)

    def _cca(self, cca, centre, crop_size, record, x):
        if record:
            self._add(cca, x, self._centre(x, centre, crop_size), True)
        if self.means is not None:
            mean, var = (t.to(x.device) for t in self.means[cca])
        else:
            mean = x.mean(dim=(2, 3), keepdim=True)
            var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
        return x * cca.scale(mean, var)

    @contextlib.contextmanager
    def tile(self, centre, crop_size, record):
        """Within the block, the network computes a tile: ``crop_size`` ``(h, w)`` LR pixels whose centre
        ``(y0, y1, x0, x1)`` (in the crop's LR pixels) is kept; ``record`` adds the centre's sums to this pass.
        The layers' ``forward`` is replaced on the instances for the block's duration only."""
        for layer in self.layers:
            method = self._rcab if isinstance(layer, RCABlock) else self._cca
            layer.forward = partial(method, layer, centre, crop_size, record)
        try:
            yield self
        finally:
            for layer in self.layers:
                del layer.forward
