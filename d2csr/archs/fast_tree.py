"""Fast, exact forward of a :class:`~d2csr.archs.d2csr_arch.D2CSR` tree (CPU and GPU).

The functions here compute the same function as the straightforward per-branch implementation
(:meth:`D2CSR.reference_forward_branches` / :meth:`D2CSR.reference_fuse`, equal to 1e-5 in fp32, gradients
included) from the network's own modules; they own no parameters, so checkpoints are unaffected.

Where the time goes and what is done about it (figures: README, ``benchmarks/bench_d2c.py``):

- **Layout.** Every feature map runs channels-last (NHWC): oneDNN's and cuDNN's fast 3x3 kernels work in
  it, and plain NCHW costs a layout reorder around every conv (about 20% of the forward on this CPU).
- **Fewer passes over memory.** Channel attention is a ``mean`` and two small matmuls (no 1x1 convs on a
  1x1 map); its scale and the block's skip are one ``addcmul``, in place in inference; ReLUs and residual
  adds run in place on the conv outputs.
- **Few-output convs (CPU inference).** oneDNN runs a 3x3 conv with 3 or 4 outputs (each leaf's last conv,
  the convergence net's last) at a fifth of its usual speed; :func:`few_output_conv` does the same FLOPs as
  one 1x1 conv to all taps and shifted adds, 1.3-1.5x faster.
- **Pixel shuffle with a cheap backward (training).** The upsampler convs' output channels are re-ordered
  (an exact re-indexing of their weights) so that in NHWC the shuffle and its backward move contiguous runs
  of ``r * C`` values; PyTorch's channels-last ``pixel_unshuffle`` moves single floats. (In inference
  PyTorch's own channels-last ``pixel_shuffle`` is the faster one and is used.)
- **HR-sized features are short-lived.** Leaves run one after the other, so only one leaf's HR features
  are alive at a time, and a leaf's LR feature is dropped once its tail has read it.

Measured and not kept (CPU): running a tree level as one grouped conv (nodes stacked along channels) was
7-8% slower than node by node, forward and backward; oneDNN convs with fused ReLU / add post-ops
(``torch.ops.mkldnn._convolution_pointwise``) were no faster unless their weights stay prepacked between
calls (about 2% with 2 threads), and a prepacked copy cannot tell when a weight changes through ``.data``
(as BasicSR's EMA does).

Shapes are those of :class:`D2CSR`: ``x`` is ``(N, C_in, h, w)``, each leaf prediction ``(N, C_out, s*h, s*w)``.
"""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.archs.rcan_arch import RCAB, ChannelAttention, ResidualGroup

class FastOptions:
    """How :func:`forward_branches` runs (set through :meth:`D2CSR.set_speed_options`).

    Args:
        channels_last (bool): run features in NHWC. Default: True.

    ``cache`` keeps what the fast path found out about the network's blocks (keyed by the modules and
    checked against their current submodules), no tensors.
    """

    def __init__(self, channels_last=True):
        self.channels_last = channels_last
        self.cache = {}


class _Run:
    """What one call of the fast path uses."""

    def __init__(self, opts, x):
        self.channels_last = opts.channels_last
        self.cache = opts.cache
        # few-output convs as 1x1 + shifted adds: faster on the CPU in inference, slower with autograd
        self.taps = opts.channels_last and x.device.type == 'cpu' and not torch.is_grad_enabled()


def _conv_params(m, tag=None):
    """``(weight, bias, padding, stride, dilation, groups)`` to run conv ``m`` as; differentiable.

    ``tag`` None: ``m`` itself; an int ``r``: output channels reordered for :func:`shuffle_nhwc`; ``'taps'``:
    the 1x1 conv of :func:`few_output_conv`.
    """
    if tag is None:
        return m.weight, m.bias, m.padding, m.stride, m.dilation, m.groups
    if tag == 'taps':
        out_ch, in_ch, k, _ = m.weight.shape
        weight = m.weight.permute(2, 3, 0, 1).reshape(k * k * out_ch, in_ch, 1, 1)
        pad = -(k * k * out_ch) % 16  # a multiple of 16 outputs vectorises better (AVX-512)
        if pad:
            weight = torch.cat([weight, weight.new_zeros(pad, in_ch, 1, 1)])
        return weight, None, (0, 0), (1, 1), (1, 1), 1
    r, c = tag, m.out_channels // (tag * tag)
    perm = torch.arange(r * r * c, device=m.weight.device).view(c, r * r).t().reshape(-1)
    bias = None if m.bias is None else m.bias.index_select(0, perm)
    return m.weight.index_select(0, perm), bias, m.padding, m.stride, m.dilation, m.groups


def conv(x, m, run, relu=False, add=None, tag=None):
    """``m(x)``, then ``relu`` and ``+ add`` (in place) if asked.

    ``m`` is an ``nn.Conv2d`` with integer padding and ``padding_mode='zeros'``; ``tag``: see
    :func:`_conv_params`.
    """
    if run.taps and m.out_channels <= 8 and tag is None and add is None and _few_outputs(m):
        return few_output_conv(x, m, run, relu)
    weight, bias, pad, stride, dil, groups = _conv_params(m, tag)
    y = F.conv2d(x, weight, bias, stride, pad, dil, groups)
    if relu:
        y = y.relu_()
    if add is not None:
        y = y.add_(add)
    return y


def _few_outputs(m):
    k = m.kernel_size
    return (m.out_channels <= 8 and m.groups == 1 and k[0] == k[1] and k[0] % 2 == 1 and k[0] > 1
            and tuple(m.stride) == (1, 1) and tuple(m.dilation) == (1, 1) and tuple(m.padding) == (k[0] // 2, ) * 2)


def few_output_conv(x, m, run, relu=False):
    """A k x k conv with few outputs (an SR model's last conv, 64 -> 3) as one 1x1 conv from the input to
    every tap's outputs (``k*k*C_out`` channels) and ``k*k`` shifted adds, optionally then ReLU.

    oneDNN runs a 3x3 conv with 3 outputs at a fraction of its usual speed; this does the same FLOPs at
    1x1-conv speed (CPU, channels-last). Shapes: ``(N, C_in, H, W) -> (N, C_out, H, W)``.
    """
    n, _, h, w = x.shape
    out_ch, k = m.out_channels, m.kernel_size[0]
    p = k // 2
    taps = conv(x, m, run, tag='taps').permute(0, 2, 3, 1)  # (N, H, W, >= k*k*C_out), a view
    if m.bias is not None:
        out = m.bias.view(1, 1, 1, out_ch).expand(n, h, w, out_ch).clone(memory_format=torch.contiguous_format)
    else:
        out = taps.new_zeros(n, h, w, out_ch)
    for t in range(k * k):
        dy, dx = divmod(t, k)
        ys, ye, xs, xe = max(0, p - dy), min(h, h + p - dy), max(0, p - dx), min(w, w + p - dx)
        if ye > ys and xe > xs:
            shifted = taps[:, ys + dy - p:ye + dy - p, xs + dx - p:xe + dx - p, t * out_ch:(t + 1) * out_ch]
            out[:, ys:ye, xs:xe] += shifted
    if relu:
        out = out.relu_()
    return out.permute(0, 3, 1, 2)  # channels-last (N, C_out, H, W)


def _plain_conv(m):
    # exactly nn.Conv2d: a subclass may change forward (e.g. BicubicInputConv upsamples first)
    return (type(m) is nn.Conv2d and m.padding_mode == 'zeros' and not isinstance(m.padding, str))


def channel_attention(y, down, up):
    """Per-channel scale ``(N, C, 1, 1)`` of BasicSR's ``ChannelAttention`` (global mean, 1x1 conv ``down``,
    ReLU, 1x1 conv ``up``, sigmoid) as a mean and two small matmuls."""
    s = y.mean((2, 3))
    s = F.linear(s, down.weight.flatten(1), down.bias).relu_()
    return torch.sigmoid(F.linear(s, up.weight.flatten(1), up.bias))[:, :, None, None].to(y.dtype)


def _rcab_parts(block):
    """``(conv1, conv2, ca_down, ca_up)`` when ``block`` is BasicSR's RCAB as RCAN builds it, else None."""
    if not isinstance(block, RCAB) or len(block.rcab) != 4:
        return None
    c1, act, c2, ca = block.rcab
    if not (_plain_conv(c1) and type(act) is nn.ReLU and _plain_conv(c2) and type(ca) is ChannelAttention
            and len(ca.attention) == 5):
        return None
    pool, down, act2, up, gate = ca.attention
    size = pool.output_size if isinstance(pool, nn.AdaptiveAvgPool2d) else None
    if size not in (1, (1, 1)) or type(act2) is not nn.ReLU or type(gate) is not nn.Sigmoid:
        return None
    for m in (down, up):
        if not (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1):
            return None
    return c1, c2, down, up


def _children(block):
    rcab_seq = block._modules.get('rcab')
    if rcab_seq is None:
        return None
    children = tuple(rcab_seq._modules.values())
    ca = children[-1] if children else None
    return children + (tuple(ca._modules['attention']._modules.values()) if type(ca) is ChannelAttention else ())


def rcab(x, block, run):
    """RCAN's RCAB: ``x + res_scale * CA(conv(relu(conv(x))))``; other blocks run as they are."""
    children = _children(block)  # the structure check is cached, keyed by the block and its submodules
    hit = run.cache.get(('rcab', block))
    if hit is None or hit[0] != children:
        hit = (children, _rcab_parts(block))
        run.cache[('rcab', block)] = hit
    if hit[1] is None:
        return block(x)
    c1, c2, down, up = hit[1]
    y = conv(conv(x, c1, run, relu=True), c2, run)
    s = channel_attention(y, down, up)
    if not torch.is_grad_enabled():
        return torch.addcmul(x, y, s, value=block.res_scale, out=y)
    return torch.addcmul(x, y, s, value=block.res_scale)


def residual_group(x, group, run):
    """RCAN's ResidualGroup: ``x + conv(RCABs(x))``."""
    y = x
    for block in group.residual_group:
        y = rcab(y, block, run)
    if not _plain_conv(group.conv):
        return group.conv(y) + x
    return conv(y, group.conv, run, add=x)


def branch_module(x, node, run):
    """One tree node. RCAN nodes (``Sequential`` of ResidualGroups and convs) run fast; others as they are."""
    if not isinstance(node, nn.Sequential):
        return node(x)
    for layer in node:
        if isinstance(layer, ResidualGroup):
            x = residual_group(x, layer, run)
        elif _plain_conv(layer):
            x = conv(x, layer, run)
        else:
            x = layer(x)
    return x


def shuffle_nhwc(y, r):
    """Pixel shuffle of a channels-last ``y`` whose channels are ordered ``(r, r, C)`` (see
    :func:`_conv_params`): it copies contiguous runs of ``r * C`` values, forward and backward (PyTorch's
    channels-last ``pixel_unshuffle``, the backward of ``pixel_shuffle``, moves single values).
    ``(N, r*r*C, H, W) -> (N, C, r*H, r*W)``.
    """
    n, _, h, w = y.shape
    c = y.shape[1] // (r * r)
    nhwc = y.permute(0, 2, 3, 1).reshape(n, h, w, r, r, c)  # a view: y is channels-last
    return nhwc.permute(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c).permute(0, 3, 1, 2)


def tail(y, tail_m, run):
    """A leaf's ``Sequential(Upsample, conv)`` (any ``Sequential`` of convs and pixel shuffles)."""
    layers = []
    for layer in tail_m:
        layers.extend(layer if isinstance(layer, nn.Sequential) else [layer])
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if run.channels_last and torch.is_grad_enabled() and _plain_conv(layer) and isinstance(nxt, nn.PixelShuffle):
            r = nxt.upscale_factor  # training: the shuffle whose backward is cheap
            y = shuffle_nhwc(conv(y, layer, run, tag=r), r)
            i += 2
            continue
        y = conv(y, layer, run) if _plain_conv(layer) else layer(y)
        i += 1
    return y


def forward_branches(net, x, opts):
    """Fast :meth:`D2CSR.forward_branches`: ``(N, C, h, w)`` -> list of ``P`` leaf predictions."""
    x_in = x
    x = x.contiguous(memory_format=torch.channels_last if opts.channels_last else torch.contiguous_format)
    run = _Run(opts, x)
    head = net._sub_mean(x)
    head = conv(head, net.head, run) if _plain_conv(net.head) else net.head(head)
    features = [[head]]  # features[level][k]: node k of that level (level 0: the head)
    for level in range(1, net.depth + 1):
        offset = net.level_offset(level)
        parents = features[-1]
        features.append([branch_module(parents[k // net.width], net.nodes[offset + k], run)
                         for k in range(net.width**level)])
    skip = F.interpolate(x_in, scale_factor=net.upscale, mode='bicubic', align_corners=False) \
        if net.bicubic_skip else None
    leaves = features.pop()
    outputs = []
    for leaf in range(net.num_branches):
        y, leaves[leaf] = leaves[leaf], None
        if net.deep_residual:
            for j, node in enumerate(net.leaf_ancestors(leaf)):
                res_conv, ancestor = net.res_convs[leaf][j], features[net.depth - 1 - j][node]
                y = conv(y, res_conv, run, add=ancestor) if _plain_conv(res_conv) else res_conv(y) + ancestor
        out = net._add_mean(tail(y, net.tails[leaf], run))
        del y
        outputs.append(out + skip if skip is not None else out)
    return outputs


def fuse(net, branches, opts):
    """Fast :meth:`D2CSR.fuse`: ``P`` predictions ``(N, C, H, W)`` -> ``(sr, weights (N, P, H, W))``."""
    stacked = torch.cat(branches, dim=1)
    stacked = stacked.contiguous(memory_format=torch.channels_last if opts.channels_last else torch.contiguous_format)
    run = _Run(opts, stacked)
    y = stacked
    layers = list(net.fusion.fusion)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ReLU):
            continue
        relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
        if _plain_conv(layer):
            y = conv(y, layer, run, relu=relu)
        else:
            y = layer(y)
            y = F.relu(y) if relu else y
    weights = torch.softmax(y, dim=1)
    n, num, h, w = weights.shape
    sr = (stacked.view(n, num, -1, h, w) * weights.unsqueeze(2)).sum(1)
    return sr, weights
