"""Fast, exact forward of a :class:`~d2csr.archs.d2csr_arch.D2CSR` tree (CPU and GPU).

The functions here compute the same function as the straightforward per-branch implementation
(:meth:`D2CSR.reference_forward_branches` / :meth:`D2CSR.reference_fuse`, equal to 1e-5 in fp32, gradients
included) from the network's own modules; they own no parameters, so checkpoints are unaffected.

Where the time goes and what is done about it:

- **Layout.** Every feature map runs channels-last (NHWC): oneDNN's and cuDNN's fast 3x3 kernels work in
  it and plain NCHW costs a layout reorder around every conv (about 25% on a CPU).
- **Fewer, cheaper passes over memory.** A conv's ReLU and its residual add run as oneDNN post-ops of the
  conv (CPU inference); channel attention is a ``mean`` and two tiny matmuls (no 1x1 convs on a 1x1 map),
  and its scale and the block's skip are one ``addcmul``.
- **Pixel shuffle without a transpose.** The upsampler convs' output channels are permuted (an exact
  re-indexing of their weights) so that in NHWC the shuffle moves contiguous runs of ``r * C`` values
  instead of single floats; its backward is as cheap.
- **HR-sized features are short-lived.** Leaves run one after the other, so only one leaf's HR features
  are alive at a time, and a leaf's LR feature is dropped once its tail has read it.

Shapes are those of :class:`D2CSR`: ``x`` is ``(N, C_in, h, w)``, each leaf prediction ``(N, C_out, s*h, s*w)``.
"""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.archs.rcan_arch import RCAB, ChannelAttention, ResidualGroup

# --------------------------------------------------------------------------------------------------
# oneDNN fused convolution (CPU inference). A private PyTorch op (the one TorchInductor's CPU backend
# emits); if a PyTorch build lacks it, convs fall back to F.conv2d + separate ReLU / add.
_MKLDNN_FUSED = None


def mkldnn_fused_conv_available():
    """Whether ``torch.ops.mkldnn._convolution_pointwise`` (conv + ReLU / add post-ops) works here."""
    global _MKLDNN_FUSED
    if _MKLDNN_FUSED is None:
        try:
            op = torch.ops.mkldnn._convolution_pointwise
            x = torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(4, 4, 3, 3), torch.randn(4)
            with torch.no_grad():
                y = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, 'relu', [], None)
                z = op.binary(y, x, w, b, [1, 1], [1, 1], [1, 1], 1, 'add', None, None, [], None)
                ref = F.conv2d(F.relu(F.conv2d(x, w, b, padding=1)), w, b, padding=1) + x
            _MKLDNN_FUSED = torch.backends.mkldnn.is_available() and torch.allclose(z, ref, atol=1e-4)
        except (AttributeError, RuntimeError):
            _MKLDNN_FUSED = False
    return _MKLDNN_FUSED


class FastOptions:
    """How :func:`forward_branches` runs (set through :meth:`D2CSR.set_speed_options`).

    Args:
        channels_last (bool): run features in NHWC. Default: True.
        fused_conv (bool): use oneDNN conv + ReLU / add post-ops on the CPU when no gradient is
            recorded and the tensors are fp32. Default: True.
    """

    def __init__(self, channels_last=True, fused_conv=True):
        self.channels_last = channels_last
        self.fused_conv = fused_conv


def _use_fused(x, opts):
    return (opts.fused_conv and x.device.type == 'cpu' and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu') and x.is_contiguous(memory_format=torch.channels_last)
            and mkldnn_fused_conv_available())


def conv(x, m, relu=False, add=None, fused=False):
    """``m(x)``, then ``relu`` and ``+ add`` if asked; one oneDNN call when ``fused``.

    ``m`` is an ``nn.Conv2d`` with integer padding and ``padding_mode='zeros'``.
    """
    if fused:
        pad, stride, dil = list(m.padding), list(m.stride), list(m.dilation)
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(x, m.weight, m.bias, pad, stride, dil, m.groups,
                                                           'relu' if relu else 'none', [], None)
        if add.is_contiguous(memory_format=torch.channels_last) and not relu:
            return torch.ops.mkldnn._convolution_pointwise.binary(x, add, m.weight, m.bias, pad, stride, dil,
                                                                  m.groups, 'add', None, None, [], None)
    y = F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    if relu:
        y = y.relu_()
    if add is not None:
        y = y.add_(add)
    return y


def _plain_conv(m):
    return (isinstance(m, nn.Conv2d) and m.padding_mode == 'zeros' and not isinstance(m.padding, str))


def channel_attention(y, ca):
    """Per-channel scale ``(N, C, 1, 1)`` of :class:`basicsr...ChannelAttention` (global mean, two 1x1s)."""
    _, down, relu, up, sigmoid = ca.attention
    s = y.mean((2, 3))
    s = F.linear(s, down.weight.flatten(1), down.bias).relu_()
    s = torch.sigmoid(F.linear(s, up.weight.flatten(1), up.bias))
    return s[:, :, None, None].to(y.dtype)


def _is_standard_rcab(block):
    seq = block.rcab
    return (isinstance(block, RCAB) and len(seq) == 4 and _plain_conv(seq[0]) and isinstance(seq[1], nn.ReLU)
            and _plain_conv(seq[2]) and isinstance(seq[3], ChannelAttention)
            and isinstance(seq[3].attention[0], nn.AdaptiveAvgPool2d) and tuple(_pair(seq[3].attention[0])) == (1, 1))


def _pair(pool):
    size = pool.output_size
    return (size, size) if isinstance(size, int) else size


def rcab(x, block, fused):
    """RCAN's RCAB: ``x + res_scale * CA(conv(relu(conv(x))))``."""
    if not _is_standard_rcab(block):
        return block(x)
    c1, _, c2, ca = block.rcab
    y = conv(conv(x, c1, relu=True, fused=fused), c2, fused=fused)
    s = channel_attention(y, ca)
    if not torch.is_grad_enabled():
        return torch.addcmul(x, y, s, value=block.res_scale, out=y)
    return torch.addcmul(x, y, s, value=block.res_scale)


def residual_group(x, group, fused):
    """RCAN's ResidualGroup: ``x + conv(RCABs(x))``."""
    y = x
    for block in group.residual_group:
        y = rcab(y, block, fused)
    if not _plain_conv(group.conv):
        return group.conv(y) + x
    return conv(y, group.conv, add=x, fused=fused)


def branch_module(x, node, fused):
    """One tree node. RCAN nodes (``Sequential`` of ResidualGroups and convs) run fast; others as they are."""
    if not isinstance(node, nn.Sequential):
        return node(x)
    for layer in node:
        if isinstance(layer, ResidualGroup):
            x = residual_group(x, layer, fused)
        elif _plain_conv(layer):
            x = conv(x, layer, fused=fused)
        else:
            x = layer(x)
    return x


def _shuffle_perm(r, channels, device):
    """Output-channel order that makes pixel shuffle a copy of contiguous ``(r, C)`` runs in NHWC."""
    return torch.arange(r * r * channels, device=device).view(channels, r * r).t().reshape(-1)


def upsample_step(x, conv_m, r, fused):
    """``pixel_shuffle(conv_m(x), r)`` for a channels-last ``x``, without an element-wise transpose."""
    n, _, h, w = x.shape
    c = conv_m.out_channels // (r * r)
    perm = _shuffle_perm(r, c, conv_m.weight.device)
    weight = conv_m.weight.index_select(0, perm)
    bias = conv_m.bias.index_select(0, perm) if conv_m.bias is not None else None
    if fused:
        pad, stride, dil = list(conv_m.padding), list(conv_m.stride), list(conv_m.dilation)
        y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, stride, dil, conv_m.groups, 'none', [],
                                                    None)
    else:
        y = F.conv2d(x, weight, bias, conv_m.stride, conv_m.padding, conv_m.dilation, conv_m.groups)
    h, w = y.shape[-2:]
    nhwc = y.permute(0, 2, 3, 1).reshape(n, h, w, r, r, c)  # a view when y is channels-last
    out = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c)
    return out.permute(0, 3, 1, 2)


def tail(y, tail_m, fused, channels_last):
    """A leaf's ``Sequential(Upsample, conv)`` (any ``Sequential`` of convs and pixel shuffles)."""
    layers = []
    for layer in tail_m:
        layers.extend(layer if isinstance(layer, nn.Sequential) else [layer])
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if channels_last and _plain_conv(layer) and isinstance(nxt, nn.PixelShuffle):
            y = upsample_step(y, layer, nxt.upscale_factor, fused)
            i += 2
            continue
        y = conv(y, layer, fused=fused) if _plain_conv(layer) else layer(y)
        i += 1
    return y


def forward_branches(net, x, opts):
    """Fast :meth:`D2CSR.forward_branches`: ``(N, C, h, w)`` -> list of ``P`` leaf predictions."""
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    x_in = x
    x = x.contiguous(memory_format=memory_format)
    fused = opts.channels_last and _use_fused(x, opts)
    head = net._sub_mean(x)
    head = conv(head, net.head, fused=fused) if _plain_conv(net.head) else net.head(head)
    # features[level][k]: node k of that level; a level is released once its last descendant used it
    features = [[head]]
    for level in range(1, net.depth + 1):
        offset = net.level_offset(level)
        parents = features[-1]
        features.append([branch_module(parents[k // net.width], net.nodes[offset + k], fused)
                         for k in range(net.width**level)])
    skip = F.interpolate(x_in, scale_factor=net.upscale, mode='bicubic', align_corners=False) \
        if net.bicubic_skip else None
    leaves = features.pop()
    outputs = []
    for leaf in range(net.num_branches):
        y = leaves[leaf]
        leaves[leaf] = None
        if net.deep_residual:
            for j, node in enumerate(net.leaf_ancestors(leaf)):
                res_conv = net.res_convs[leaf][j]
                ancestor = features[net.depth - 1 - j][node]
                y = conv(y, res_conv, add=ancestor, fused=fused) if _plain_conv(res_conv) else res_conv(y) + ancestor
        out = net._add_mean(tail(y, net.tails[leaf], fused, opts.channels_last))
        del y
        outputs.append(out + skip if skip is not None else out)
    return outputs


def fuse(net, branches, opts):
    """Fast :meth:`D2CSR.fuse`: ``P`` predictions ``(N, C, H, W)`` -> ``(sr, weights (N, P, H, W))``."""
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    stacked = torch.cat(branches, dim=1).contiguous(memory_format=memory_format)
    fused = opts.channels_last and _use_fused(stacked, opts)
    y = stacked
    layers = list(net.fusion.fusion)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ReLU):
            continue
        relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
        if _plain_conv(layer):
            y = conv(y, layer, relu=relu, fused=fused)
        else:
            y = layer(y)
            y = F.relu(y) if relu else y
    weights = torch.softmax(y, dim=1)
    n, num, h, w = weights.shape
    sr = (stacked.view(n, num, -1, h, w) * weights.unsqueeze(2)).sum(1)
    return sr, weights
