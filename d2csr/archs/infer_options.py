"""The ``network_g`` options of a D2CSR, read off its state dict (names and tensor shapes).

Used to load a checkpoint without its options file (:mod:`d2csr.loading`), to build the authors' converted
weights (:mod:`d2csr.convert`) and to recognise a D2C-SR checkpoint in other programs (spandrel,
:mod:`d2csr.integrations.spandrel`).

What the weights record, for every backbone (``rcan``, ``edsr``, ``srresnet``, ``rrdbnet``, ``rdn``, ``imdn``,
``vdsr``) and upsampler (``pixelshuffle``, ``pixelshuffledirect``, ``bicubic_input``): ``num_in_ch``,
``num_out_ch``, ``num_feat``, the tree's ``depth`` and ``width``, ``deep_residual``, ``fusion_feat``, the
backbone and its structural options (RCAN: ``num_group``, ``num_block``, ``squeeze_factor``; EDSR / SRResNet:
``num_block``; RRDBNet: ``num_block``, ``num_grow_ch``; RDN: ``num_block``, ``num_layer``, ``num_grow_ch``;
IMDN: ``num_block``, ``distill_rate``; VDSR: ``num_conv``), the upsampler, the scale (except with
``bicubic_input``) and whether the mean shift is ``'learnable'``. What they do not record is
:data:`NO_TRACE_OPTIONS`.
"""
import re

from d2csr.utils.checkpoint import CheckpointFormatError

from .d2csr_arch import D2CSR, SUPPORTED_SCALES

# network_g options that leave no trace in the weights (D2CSR's defaults apply unless an options file says
# otherwise), and why
NO_TRACE_OPTIONS = {
    'img_range': 'a multiplier, no tensor',
    'rgb_mean': "with mean_shift 'fixed' a buffer that is not saved",
    'mean_shift': "'fixed' and 'none' store the same tensors ('learnable' is recorded: sub_mean / add_mean)",
    'bicubic_skip': 'an addition of the interpolated input, no tensor',
    'fusion_last_relu': 'an activation, no tensor',
    'backbone_opt:res_scale': 'a multiplier inside the RCAN / EDSR blocks, no tensor',
    'upscale': "with upsampler 'bicubic_input' only (the interpolation that precedes the head has no weights)",
}

D2CSR_PREFIXES = ('sub_mean.', 'add_mean.', 'head.', 'nodes.', 'res_convs.', 'tails.', 'fusion.')
SIGNATURE_KEYS = ('head.weight', 'fusion.fusion.0.weight', 'fusion.fusion.2.weight', 'fusion.fusion.4.weight')


def _indices(state, pattern):
    return sorted({int(m.group(1)) for m in (re.match(pattern, k) for k in state) if m})


def _shape(state, key):
    return tuple(state[key].shape)


def is_d2csr_state(state):
    """Whether a state dict has D2CSR's layout: every name under D2CSR's own modules (``head``, ``nodes``,
    ``tails``, ``fusion``, optionally ``sub_mean`` / ``add_mean`` / ``res_convs``), the convergence net's three
    convs, a first tree node and a first tail. Names only, no shapes: cheap enough for a detector that runs
    on every checkpoint a program opens, and no other architecture uses this namespace."""
    keys = list(state)
    if not keys or not all(isinstance(k, str) and k.startswith(D2CSR_PREFIXES) for k in keys):
        return False
    if not all(k in state for k in SIGNATURE_KEYS):
        return False
    return any(k.startswith('nodes.0.') for k in keys) and any(k.startswith('tails.0.') for k in keys)


# --------------------------------------------------------------------------------------------------
# backbones: a marker (a name only that backbone's first node has) and a reader of its options
def _rcan(state, num_feat):
    attention = _shape(state, 'nodes.0.0.residual_group.0.rcab.3.attention.1.weight')
    return dict(num_group=len(_indices(state, r'nodes\.0\.(\d+)\.residual_group\.')),
                num_block=len(_indices(state, r'nodes\.0\.0\.residual_group\.(\d+)\.rcab\.')),
                squeeze_factor=num_feat // attention[0])


def _edsr(state, num_feat):  # also SRResNet's: the same blocks, without the last conv
    return dict(num_block=len(_indices(state, r'nodes\.0\.(\d+)\.conv1\.weight')))


def _rrdbnet(state, num_feat):
    return dict(num_block=len(_indices(state, r'nodes\.0\.(\d+)\.rdb1\.conv1\.weight')),
                num_grow_ch=_shape(state, 'nodes.0.0.rdb1.conv1.weight')[0])


def _rdn(state, num_feat):
    return dict(num_block=len(_indices(state, r'nodes\.0\.blocks\.(\d+)\.lff\.weight')),
                num_layer=len(_indices(state, r'nodes\.0\.blocks\.0\.layers\.(\d+)\.0\.weight')),
                num_grow_ch=_shape(state, 'nodes.0.blocks.0.layers.0.0.weight')[0])


def _imdn(state, num_feat):
    distilled = _shape(state, 'nodes.0.blocks.0.c4.weight')[0]
    return dict(num_block=len(_indices(state, r'nodes\.0\.blocks\.(\d+)\.c1\.weight')),
                distill_rate=distilled / num_feat)


def _vdsr(state, num_feat):
    return dict(num_conv=len(_indices(state, r'nodes\.0\.(\d+)\.weight')))


BACKBONE_MARKERS = (  # (backbone, name only its first node has, reader)
    ('rcan', 'nodes.0.0.residual_group.0.rcab.0.weight', _rcan),
    ('edsr', 'nodes.0.0.conv1.weight', _edsr),  # SRResNet when the node has no last conv (see below)
    ('rrdbnet', 'nodes.0.0.rdb1.conv1.weight', _rrdbnet),
    ('rdn', 'nodes.0.blocks.0.layers.0.0.weight', _rdn),
    ('imdn', 'nodes.0.blocks.0.c1.weight', _imdn),
    ('vdsr', 'nodes.0.0.weight', _vdsr),
)


def infer_backbone(state, num_feat):
    """``(backbone, options)`` of the tree nodes of a D2CSR state dict; ``CheckpointFormatError`` when no
    registered backbone's layout fits."""
    for name, marker, reader in BACKBONE_MARKERS:
        if marker not in state:
            continue
        opts = reader(state, num_feat)
        if name == 'edsr' and f'nodes.0.{opts["num_block"]}.weight' not in state:
            name = 'srresnet'  # MSRResNet's trunk has no conv after the blocks
        return name, opts
    sample = sorted(k for k in state if k.startswith('nodes.0.'))[:4]
    raise CheckpointFormatError(f'the tree nodes ({sample}, ...) fit none of the backbones '
                                f'{[b for b, _, _ in BACKBONE_MARKERS]}; give the network options with -opt.')


def infer_upsampler(state, num_feat, num_out_ch):
    """``(upsampler, upscale)`` read off the first tail; ``upscale`` is ``None`` for ``'bicubic_input'``
    (no tensor records it)."""
    up_convs = [_shape(state, f'tails.0.0.{i}.weight') for i in _indices(state, r'tails\.0\.0\.(\d+)\.weight')]
    if up_convs and 'tails.0.1.weight' in state:  # BasicSR's Upsample (conv + shuffle per factor) + a conv
        if len(up_convs) == 1 and up_convs[0][0] == 9 * num_feat:
            return 'pixelshuffle', 3
        if all(s[0] == 4 * num_feat for s in up_convs) and 2**len(up_convs) in SUPPORTED_SCALES:
            return 'pixelshuffle', 2**len(up_convs)
        raise CheckpointFormatError(f'the upsampler convs of tails.0 ({up_convs}) fit no scale of 2, 3, 4 or 8')
    if 'tails.0.0.weight' in state:
        out = _shape(state, 'tails.0.0.weight')[0]
        if out == num_out_ch:
            return 'bicubic_input', None
        for scale in SUPPORTED_SCALES:
            if out == num_out_ch * scale**2:
                return 'pixelshuffledirect', scale
        raise CheckpointFormatError(f'tails.0.0 has {out} outputs: neither {num_out_ch} channels (bicubic_input) '
                                    f'nor {num_out_ch} x scale**2 for a scale of {SUPPORTED_SCALES}')
    raise CheckpointFormatError('tails.0 is none of the upsamplers pixelshuffle, pixelshuffledirect, bicubic_input')


def _tree_shape(num_nodes, num_leaves):
    if num_leaves == 1 and num_nodes >= 1:  # width 1: a chain, one node per level
        return num_nodes, 1
    for d in range(1, num_leaves.bit_length() + 1):
        w = round(num_leaves**(1.0 / d))
        for cand in (w - 1, w, w + 1):
            if cand >= 1 and cand**d == num_leaves and sum(cand**j for j in range(1, d + 1)) == num_nodes:
                return d, cand
    raise CheckpointFormatError(f'{num_nodes} tree nodes and {num_leaves} tails do not form a tree')


def infer_network_options(state):
    """``network_g`` options of the D2CSR that a state dict (D2CSR names) belongs to.

    Returns every option the weights record (see the module docstring): ``type``, ``num_in_ch``,
    ``num_out_ch``, ``num_feat``, the RCAN options at the top (``num_group``, ``num_block``, ``squeeze_factor``)
    or another backbone's in ``backbone_opt``, ``upscale``, ``depth``, ``width``, ``deep_residual``,
    ``mean_shift`` (``'learnable'`` when ``sub_mean`` convs are present, else the default ``'fixed'`` for RGB and
    ``'none'`` for other channel counts, which the default ``rgb_mean`` does not fit), ``backbone``,
    ``upsampler`` and ``fusion_feat``. Options in :data:`NO_TRACE_OPTIONS` are not returned: D2CSR's
    defaults apply unless an options file says otherwise.

    Raises :class:`CheckpointFormatError` naming what is missing or does not fit, and for an
    ``upsampler: bicubic_input`` network (D2C-VDSR), whose scale, ``bicubic_skip`` and ``mean_shift`` are all
    outside the weights: it is loaded from its options file.
    """
    if not is_d2csr_state(state):
        missing = [k for k in SIGNATURE_KEYS if k not in state]
        foreign = [k for k in state if not (isinstance(k, str) and k.startswith(D2CSR_PREFIXES))][:3]
        sample = ', '.join(map(str, list(state)[:5]))
        what = (f'it lacks {missing}' if missing else f'it has names outside D2CSR\'s modules ({foreign})'
                if foreign else 'it has no tree node nodes.0 or no tail tails.0')
        raise CheckpointFormatError(
            f'cannot infer the network from the checkpoint: {what} (it holds {len(state)} entries such as '
            f'{sample}). It is not a D2CSR; give the network options with -opt.')
    num_feat, num_in_ch = _shape(state, 'head.weight')[:2]
    num_leaves = len(_indices(state, r'tails\.(\d+)\.'))
    depth, width = _tree_shape(len(_indices(state, r'nodes\.(\d+)\.')), num_leaves)
    fusion_feat, fusion_in = _shape(state, 'fusion.fusion.0.weight')[:2]
    if fusion_in % num_leaves:
        raise CheckpointFormatError(f'the convergence net takes {fusion_in} channels, not a multiple of the '
                                    f'{num_leaves} branches')
    num_out_ch = fusion_in // num_leaves
    backbone, backbone_opt = infer_backbone(state, num_feat)
    upsampler, upscale = infer_upsampler(state, num_feat, num_out_ch)
    if upsampler == 'bicubic_input':
        raise CheckpointFormatError(
            f'the checkpoint is a D2C network with upsampler: bicubic_input (backbone {backbone}, as D2C-VDSR): '
            'its scale, bicubic_skip and mean_shift leave no trace in the weights, so it cannot be rebuilt from '
            'them alone; give the options file that trained it with -opt.')
    opts = dict(type='D2CSR', num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat)
    if backbone == 'rcan':
        opts.update(backbone_opt)
    if 'sub_mean.weight' in state:
        mean_shift = 'learnable'
    else:  # 'fixed' or 'none': no trace; 'fixed' (the default) needs one rgb_mean value per channel
        mean_shift = 'fixed' if num_in_ch == num_out_ch == 3 else 'none'
    opts.update(upscale=upscale, depth=depth, width=width, deep_residual=_deep_residual(state, depth),
                mean_shift=mean_shift, backbone=backbone)
    if backbone != 'rcan':
        opts['backbone_opt'] = backbone_opt
    opts.update(upsampler=upsampler, fusion_feat=fusion_feat)
    return opts


def _deep_residual(state, depth):
    """``True`` (a conv per ancestor level), ``False`` (the head's only: the paper's ablation) or ``'no_skip'``
    (none: d2csr's former ``false``), from leaf 0's ``res_convs``."""
    levels = _indices(state, r'res_convs\.0\.(\d+)\.weight')
    if not levels:
        return 'no_skip'
    return True if len(levels) == depth else False


def build_from_state(state, scale=None, source='checkpoint', strict=True):
    """A D2CSR built from :func:`infer_network_options` with ``state`` loaded; eval mode."""
    opts = infer_network_options(state)
    if scale is not None and scale != opts['upscale']:
        raise ValueError(f'{source} is an x{opts["upscale"]} model, but scale {scale} was asked for; use a '
                         f'checkpoint trained for x{scale} or drop the scale option.')
    try:
        net = D2CSR(**{k: v for k, v in opts.items() if k != 'type'})
    except ValueError as err:  # shapes that no valid network has (e.g. a width the backbone refuses)
        raise CheckpointFormatError(f'{source}: the weights describe no valid network ({opts}): {err}') from None
    try:
        net.load_state_dict(state, strict=strict)
    except RuntimeError as err:  # names or shapes that do not fit the inferred network
        raise CheckpointFormatError(f'{source}: the weights do not fit the inferred network {opts}: {err}') from None
    return net.eval(), opts
