"""The ``network_g`` options of a D2CSR, read off its state dict (names and tensor shapes).

Used to load a checkpoint without its options file (:mod:`d2csr.loading`) and to build the authors' converted
weights (:mod:`d2csr.convert`).
"""
import re

from d2csr.utils.checkpoint import CheckpointFormatError

from .d2csr_arch import D2CSR


def _indices(state, pattern):
    return sorted({int(m.group(1)) for m in (re.match(pattern, k) for k in state) if m})


def infer_network_options(state):
    """``network_g`` options of the RCAN-backbone D2CSR that a state dict (D2CSR names) belongs to.

    Inferred from names and shapes: ``num_in_ch``, ``num_out_ch``, ``num_feat``, ``num_group``,
    ``num_block``, ``squeeze_factor``, ``upscale``, ``depth``, ``width``, ``deep_residual`` (see
    :func:`_deep_residual`), ``fusion_feat``
    and ``mean_shift`` (``'learnable'`` when ``sub_mean`` convs are present, else ``'fixed'``: ``'fixed'``
    and ``'none'`` store the same tensors). Options that leave no trace in the weights (``img_range``,
    ``rgb_mean``, ``bicubic_skip``) are not returned: D2CSR's defaults apply unless an options file says
    otherwise. Raises :class:`CheckpointFormatError` naming what is missing.
    """
    required = ('head.weight', 'nodes.0.0.residual_group.0.rcab.0.weight',
                'nodes.0.0.residual_group.0.rcab.3.attention.1.weight', 'tails.0.1.weight',
                'fusion.fusion.0.weight')
    missing = [k for k in required if k not in state]
    if missing:
        sample = ', '.join(list(state)[:5])
        raise CheckpointFormatError(
            f'cannot infer the network from the checkpoint: it lacks {missing} (holds {len(state)} entries '
            f'such as {sample}). It is not an RCAN-backbone D2CSR; give the network options with -opt.')
    num_feat, num_in_ch = state['head.weight'].shape[:2]
    num_nodes = len(_indices(state, r'nodes\.(\d+)\.'))
    num_leaves = len(_indices(state, r'tails\.(\d+)\.'))
    depth = width = None
    for d in range(1, num_leaves.bit_length() + 1):
        w = round(num_leaves**(1.0 / d))
        for cand in (w - 1, w, w + 1):
            if cand >= 1 and cand**d == num_leaves and sum(cand**j for j in range(1, d + 1)) == num_nodes:
                depth, width = d, cand
    if depth is None:
        raise CheckpointFormatError(f'{num_nodes} tree nodes and {num_leaves} tails do not form a tree')
    groups = _indices(state, r'nodes\.0\.(\d+)\.')
    num_group = len(groups) - 1  # the node's last conv follows the groups
    num_block = len(_indices(state, r'nodes\.0\.0\.residual_group\.(\d+)\.rcab'))
    squeeze = num_feat // state['nodes.0.0.residual_group.0.rcab.3.attention.1.weight'].shape[0]
    up_convs = [state[f'tails.0.0.{i}.weight'] for i in _indices(state, r'tails\.0\.0\.(\d+)\.weight')]
    if len(up_convs) == 1 and up_convs[0].shape[0] == 9 * num_feat:
        upscale = 3
    elif up_convs and all(w.shape[0] == 4 * num_feat for w in up_convs):
        upscale = 2**len(up_convs)
    else:
        raise CheckpointFormatError('the upsampler convs of tails.0 ('
                                    f'{[tuple(w.shape) for w in up_convs]}) fit no scale of 2, 3, 4 or 8')
    return dict(type='D2CSR', num_in_ch=int(num_in_ch), num_out_ch=int(state['tails.0.1.weight'].shape[0]),
                num_feat=int(num_feat), num_group=num_group, num_block=num_block, squeeze_factor=int(squeeze),
                upscale=upscale, depth=depth, width=width, deep_residual=_deep_residual(state, depth),
                mean_shift='learnable' if 'sub_mean.weight' in state else 'fixed',
                fusion_feat=int(state['fusion.fusion.0.weight'].shape[0]))


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
    net = D2CSR(**{k: v for k, v in opts.items() if k != 'type'})
    try:
        net.load_state_dict(state, strict=strict)
    except RuntimeError as err:  # names or shapes that do not fit the inferred network
        raise CheckpointFormatError(f'{source}: the weights do not fit the inferred network {opts}: {err}') from None
    return net.eval(), opts
