"""The authors' MegEngine checkpoints as :class:`~d2csr.archs.D2CSR` networks, without MegEngine.

The official checkpoint (REFERENCE.md section 2) is a plain pickle
``{'state_dict_D': OrderedDict, 'state_dict_C': OrderedDict, 'psnr': float}`` of float32 numpy arrays, conv
biases shaped ``(1, C, 1, 1)``. A checkpoint is data, not code: :func:`read_official_pickle` reads it with an
unpickler that admits only plain containers (``dict``, ``OrderedDict``, ``list``, ``tuple``) and numpy
arrays / dtypes / scalars; any other global a pickle asks for is refused before it is ever looked up, so a
crafted file cannot run code.

Official name -> D2CSR name (tree of depth ``L``, ``C`` children per node; the authors' ``L = C = 2``):

- ``sub_mean.*``, ``add_mean.*`` -> the same (learnable 1x1 convs: ``mean_shift='learnable'``);
- ``head.0.*`` -> ``head.*``;
- ``body<digits>`` (``body1, body2, body11, body12, body21, body22``) -> ``nodes.k`` in breadth-first order;
  inside a node, residual group ``g``: ``body<d>.g.body.b.body.l.*`` -> ``nodes.k.g.residual_group.b.rcab.l.*``
  with the channel attention ``body.3.conv_du.0/2`` -> ``rcab.3.attention.1/3``, the group's last conv
  ``body<d>.g.body.B.*`` (``B`` = blocks per group) -> ``nodes.k.g.conv.*``, the node's last conv
  ``body<d>.G.*`` -> ``nodes.k.G.*``;
- ``res_conv<n>`` -> ``res_convs.i.j`` with ``n - 1 = i * L + j``;
- ``tail<digits>.*`` -> ``tails.i.*`` (leaf ``i`` in depth-first order 11, 12, 21, 22);
- ``fusion_final.i.conv.weight`` (``state_dict_C``) -> ``fusion.fusion.(2i).weight``.

Scale, feature width, groups and blocks per group, squeeze factor and tree shape are inferred from the
tensors' names and shapes (:func:`infer_network_options`), for BasicSR checkpoints of D2CSR as well.
"""
import io
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch

from d2csr.archs import D2CSR
from d2csr.utils.checkpoint import CheckpointFormatError, check_finite  # noqa: F401  (defined there, used here)

# (module, name) pairs the checkpoint unpickler may resolve; everything else is refused.
_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): OrderedDict,
    ('builtins', 'dict'): dict,
    ('builtins', 'list'): list,
    ('builtins', 'tuple'): tuple,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}
try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
for _core in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # pickles written by numpy 1.x and 2.x
    _ALLOWED_GLOBALS[(_core, '_reconstruct')] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(_core, 'scalar')] = _multiarray.scalar

OFFICIAL_KEYS = ('state_dict_D', 'state_dict_C')
NO_TRACE_OPTIONS = ('bicubic_skip', 'img_range', 'rgb_mean')  # network_g settings the weights do not record


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint pickle asked for something other than plain containers and numpy arrays."""


def _is_zip(head):
    """PyTorch (>= 1.6) checkpoints are zip archives; this also recognises a truncated one."""
    return head.startswith(b'PK\x03\x04')


class _DataOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED_GLOBALS``; refuses the rest before they are imported."""

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f'{self.source}: refused to load: the pickle asks for {module}.{name}, but a checkpoint may '
                'only hold plain containers (dict, OrderedDict, list, tuple) and numpy arrays. Nothing in it '
                'was run. The authors\' checkpoint is a plain pickle of numpy arrays; this file is something '
                'else (possibly malicious).') from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f'{self.source}: refused to load: the pickle uses persistent ids, which '
                                    'an official D2C-SR checkpoint never does.')


MAX_DEPTH = 32  # an official checkpoint nests 2 levels (dict of OrderedDicts of arrays)
MAX_NODES = 1_000_000  # containers and values visited, in all


def _check_arrays(obj, source, where='checkpoint'):
    """Numeric arrays only (object arrays could smuggle arbitrary objects, strings are no weights), in a
    bounded walk: every container is visited once however often it is referenced, and the nesting depth
    and the number of nodes are capped, so that a tiny crafted pickle (the same list referenced 50 times
    on each of 8 levels: 50**8 paths) or a 200,000-deep one is refused at once instead of hanging or
    overflowing the stack. Raises :class:`UnsafeCheckpointError` naming the place."""
    seen = set()
    stack = [(obj, where, 0)]
    nodes = 0
    while stack:
        value, place, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise UnsafeCheckpointError(f'{source}: refused to load: more than {MAX_NODES:,} entries; an official '
                                        'D2C-SR checkpoint holds a few hundred arrays.')
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise UnsafeCheckpointError(f'{source}: refused to load: {place} is an object array; only '
                                            'numeric arrays are allowed.')
            if value.dtype.kind not in 'biuf':
                raise CheckpointFormatError(f'{source}: {place} is an array of {value.dtype} ({value.dtype.kind!r} '
                                            'kind); weights must be numeric arrays.')
            continue
        if not isinstance(value, (dict, list, tuple)):
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        if depth >= MAX_DEPTH:
            raise UnsafeCheckpointError(f'{source}: refused to load: containers nested deeper than {MAX_DEPTH} '
                                        f'levels (at {place[:200]}); an official checkpoint nests 2.')
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            stack.append((item, f'{place}[{key!r}]', depth + 1))


def _check_model_file(path):
    if osp.isdir(path):
        raise FileNotFoundError(f'model {path!r} is a folder, not a checkpoint file; give the file itself (e.g. '
                                f'{osp.join(path, "net_g_latest.pth")}).')
    if not osp.isfile(path):
        raise FileNotFoundError(f'model {path!r} does not exist')


def read_official_pickle(path):
    """Read an official checkpoint (or any data-only pickle) without running code; returns the object."""
    _check_model_file(path)
    with open(path, 'rb') as f:
        data = f.read()
    if _is_zip(data[:4]):
        raise CheckpointFormatError(
            f'{path} is a PyTorch checkpoint (zip archive), not the authors\' MegEngine pickle; use it directly '
            '(path: pretrain_network_g, or --model_path of inference/inference_d2csr.py).')
    try:
        obj = _DataOnlyUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as err:
        raise CheckpointFormatError(
            f'{path} could not be read as a checkpoint pickle ({type(err).__name__}: {err}); the file is '
            'truncated or is not the authors\' checkpoint (a pickle of {"state_dict_D", "state_dict_C"}).'
        ) from err
    _check_arrays(obj, str(path))
    return obj


# --------------------------------------------------------------------------------------------------
# name mapping
def _digits_to_index(digits, width):
    """'21' -> breadth-first index within its level (depth-first leaf order for leaves)."""
    index = 0
    for d in digits:
        index = index * width + int(d) - 1
    return index


def _index_to_digits(index, level, width):
    digits = []
    for _ in range(level):
        digits.append(str(index % width + 1))
        index //= width
    return ''.join(reversed(digits))


def _tree_shape(names):
    """(depth, width) of the official tree from the ``body<digits>`` module names."""
    digits = {m.group(1) for m in (re.match(r'body(\d+)\.', n) for n in names) if m}
    if not digits:
        return None
    depth = max(len(d) for d in digits)
    width = max(int(c) for d in digits for c in d)
    return depth, width


def _map_rcan_node(rest, where):
    """``g.body.b.body.l.*`` etc. inside one official node -> the D2CSR RCAN node's names."""
    m = re.fullmatch(r'(\d+)\.body\.(\d+)\.body\.(\d+)\.conv_du\.(\d+)\.(weight|bias)', rest)
    if m:
        g, b, l, c, kind = m.groups()
        return f'{g}.residual_group.{b}.rcab.{l}.attention.{int(c) + 1}.{kind}'
    m = re.fullmatch(r'(\d+)\.body\.(\d+)\.body\.(\d+)\.(weight|bias)', rest)
    if m:
        g, b, l, kind = m.groups()
        return f'{g}.residual_group.{b}.rcab.{l}.{kind}'
    m = re.fullmatch(r'(\d+)\.body\.(\d+)\.(weight|bias)', rest)
    if m:  # the group's last conv: fixed up to '.conv' once the block count is known
        g, b, kind = m.groups()
        return f'{g}.residual_group.{b}.{kind}'
    m = re.fullmatch(r'(\d+)\.(weight|bias)', rest)
    if m:
        return rest
    raise CheckpointFormatError(f'unexpected parameter {where!r}: not part of the authors\' D2C-SR model')


def official_to_d2csr(state_d, state_c=None):
    """Official ``state_dict_D`` (+ ``state_dict_C``) -> D2CSR ``state_dict`` of float32 torch tensors."""
    names = list(state_d)
    shape = _tree_shape(names)
    missing = [k for k in ('head.0.weight', 'tail' + '1' * (shape[0] if shape else 2) + '.1.weight')
               if k not in state_d]
    if shape is None or missing:
        sample = ', '.join(names[:6])
        raise CheckpointFormatError(
            'not an official D2C-SR checkpoint: state_dict_D lacks '
            f'{missing or "the body<digits> tree nodes"} (it holds {len(names)} entries such as {sample}). '
            'A checkpoint of another architecture cannot be converted.')
    depth, width = shape
    node_offset = {level: sum(width**j for j in range(1, level)) for level in range(1, depth + 1)}
    out = OrderedDict()
    for name, value in state_d.items():
        if name.startswith(('sub_mean.', 'add_mean.')):
            new = name
        elif name.startswith('head.0.'):
            new = 'head.' + name[len('head.0.'):]
        elif (m := re.fullmatch(r'body(\d+)\.(.+)', name)):
            digits, rest = m.groups()
            node = node_offset[len(digits)] + _digits_to_index(digits, width)
            new = f'nodes.{node}.' + _map_rcan_node(rest, name)
        elif (m := re.fullmatch(r'res_conv(\d+)\.(weight|bias)', name)):
            n = int(m.group(1)) - 1
            new = f'res_convs.{n // depth}.{n % depth}.{m.group(2)}'
        elif (m := re.fullmatch(r'tail(\d+)\.(.+)', name)):
            new = f'tails.{_digits_to_index(m.group(1), width)}.{m.group(2)}'
        else:
            raise CheckpointFormatError(f'unexpected parameter {name!r} in state_dict_D: not part of the '
                                        'authors\' D2C-SR model')
        out[new] = value
    # the group's last conv sits after the B blocks: '.residual_group.B.weight' -> '.conv.weight'
    fixed = OrderedDict()
    for name, value in out.items():
        m = re.fullmatch(r'(nodes\.\d+\.\d+)\.residual_group\.(\d+)\.(weight|bias)', name)
        fixed[f'{m.group(1)}.conv.{m.group(3)}' if m else name] = value
    if state_c is not None:
        for name, value in state_c.items():
            m = re.fullmatch(r'fusion_final\.(\d+)\.conv\.weight', name)
            if not m:
                raise CheckpointFormatError(f'unexpected parameter {name!r} in state_dict_C: the authors\' '
                                            'convergence net has only fusion_final.<i>.conv.weight')
            fixed[f'fusion.fusion.{2 * int(m.group(1))}.weight'] = value
    result = OrderedDict()
    for name, value in fixed.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if name.endswith('.bias'):
            tensor = tensor.reshape(-1)
        result[name] = tensor
    return result


def d2csr_to_official(net):
    """The inverse mapping: a D2CSR (RCAN backbone, ``mean_shift='learnable'``, deep residual) as the
    authors' pickle payload ``{'state_dict_D', 'state_dict_C', 'psnr'}`` of numpy arrays.

    Used to test the converter for every scale; also lets one export a model to the authors' code.
    """
    if net.mean_shift != 'learnable' or not net.deep_residual:
        raise ValueError('only a D2CSR with mean_shift="learnable" and deep_residual=True has the '
                         'authors\' layout')
    depth, width = net.depth, net.width
    level_of = {}
    for level in range(1, depth + 1):
        for k in range(width**level):
            level_of[net.level_offset(level) + k] = (level, k)
    state_d, state_c = OrderedDict(), OrderedDict()
    for name, tensor in net.state_dict().items():
        value = tensor.detach().cpu().numpy().astype(np.float32)
        if name.endswith('.bias') and not name.startswith('fusion.'):
            value = value.reshape(1, -1, 1, 1)
        if name.startswith(('sub_mean.', 'add_mean.')):
            state_d[name] = value
        elif name.startswith('head.'):
            state_d['head.0.' + name[len('head.'):]] = value
        elif (m := re.fullmatch(r'nodes\.(\d+)\.(.+)', name)):
            level, k = level_of[int(m.group(1))]
            prefix = 'body' + _index_to_digits(k, level, width)
            rest = m.group(2)
            rest = re.sub(r'^(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.(\d+)\.',
                          lambda mm: f'{mm.group(1)}.body.{mm.group(2)}.body.3.conv_du.{int(mm.group(3)) - 1}.',
                          rest)
            rest = re.sub(r'^(\d+)\.residual_group\.(\d+)\.rcab\.(\d+)\.', r'\1.body.\2.body.\3.', rest)
            if (mm := re.fullmatch(r'(\d+)\.conv\.(weight|bias)', rest)):
                group = net.nodes[int(m.group(1))][int(mm.group(1))]
                rest = f'{mm.group(1)}.body.{len(group.residual_group)}.{mm.group(2)}'
            state_d[f'{prefix}.{rest}'] = value
        elif (m := re.fullmatch(r'res_convs\.(\d+)\.(\d+)\.(weight|bias)', name)):
            state_d[f'res_conv{int(m.group(1)) * depth + int(m.group(2)) + 1}.{m.group(3)}'] = value
        elif (m := re.fullmatch(r'tails\.(\d+)\.(.+)', name)):
            state_d[f'tail{_index_to_digits(int(m.group(1)), depth, width)}.{m.group(2)}'] = value
        elif (m := re.fullmatch(r'fusion\.fusion\.(\d+)\.weight', name)):
            state_c[f'fusion_final.{int(m.group(1)) // 2}.conv.weight'] = value
        else:
            raise ValueError(f'{name!r} has no counterpart in the authors\' model')
    return {'state_dict_D': state_d, 'state_dict_C': state_c, 'psnr': 0.0}


# --------------------------------------------------------------------------------------------------
# network options from a D2CSR state dict
def _indices(state, pattern):
    return sorted({int(m.group(1)) for m in (re.match(pattern, k) for k in state) if m})


def infer_network_options(state):
    """``network_g`` options of the RCAN-backbone D2CSR that a state dict (D2CSR names) belongs to.

    Inferred from names and shapes: ``num_in_ch``, ``num_out_ch``, ``num_feat``, ``num_group``,
    ``num_block``, ``squeeze_factor``, ``upscale``, ``depth``, ``width``, ``deep_residual``, ``fusion_feat``
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
                upscale=upscale, depth=depth, width=width, deep_residual='res_convs.0.0.weight' in state,
                mean_shift='learnable' if 'sub_mean.weight' in state else 'fixed',
                fusion_feat=int(state['fusion.fusion.0.weight'].shape[0]))


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


def load_official(path, scale=None):
    """The authors' MegEngine checkpoint ``path`` as a :class:`~d2csr.archs.D2CSR` in eval mode.

    Args:
        path (str): the official pickle.
        scale (int, optional): expected scale; a mismatch raises ``ValueError``.

    Returns:
        D2CSR: with ``net.network_options`` set to the ``network_g`` options that rebuild it.
    """
    payload = read_official_pickle(path)
    if not isinstance(payload, dict) or 'state_dict_D' not in payload:
        found = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointFormatError(f'{path} is not an official D2C-SR checkpoint: expected a dict with '
                                    f'{OFFICIAL_KEYS}, found {found}.')
    if 'state_dict_C' not in payload:
        raise CheckpointFormatError(f'{path} has no state_dict_C (the convergence net); the official checkpoint '
                                    'holds both state_dict_D and state_dict_C.')
    for key in OFFICIAL_KEYS:
        if not isinstance(payload[key], dict):
            raise CheckpointFormatError(f'{path}: {key} is a {type(payload[key]).__name__}, not a dict of arrays; '
                                        'the file is not the authors\' checkpoint (or is damaged).')
        odd = [str(k) for k, v in payload[key].items() if not isinstance(v, np.ndarray)]
        if odd:
            raise CheckpointFormatError(f'{path}: {key} holds {len(odd)} entries that are not arrays (e.g. '
                                        f'{odd[0][:100]!r}); the file is not the authors\' checkpoint.')
    try:
        check_finite(payload['state_dict_D'], str(path))
        check_finite(payload['state_dict_C'], str(path))
        state = official_to_d2csr(payload['state_dict_D'], payload['state_dict_C'])
        net, opts = build_from_state(state, scale, source=str(path))
    except CheckpointFormatError as err:
        message = str(err)
        raise CheckpointFormatError(message if message.startswith(str(path)) else f'{path}: {message}') from None
    net.network_options = opts
    return net


def save_basicsr_checkpoint(net, path):
    """Write ``{'params': state_dict}``, the checkpoint layout BasicSR's ``path: pretrain_network_g`` reads."""
    torch.save({'params': {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}}, path)


# --------------------------------------------------------------------------------------------------
# any D2CSR checkpoint
PARAM_KEYS = ('params_ema', 'params')  # preferred first: an EMA-trained checkpoint gives its EMA weights


def _select_params(ckpt, path, param_key=None):
    """``(state dict, key)`` of a BasicSR checkpoint: ``param_key`` if given, else ``params_ema`` when present
    (what BasicSR saves with ``ema_decay > 0``: the weights its validation measured; Real-ESRGAN's
    convention), else ``params``; a bare state dict gives key ``None``."""
    if not isinstance(ckpt, dict):
        raise CheckpointFormatError(f'{path} holds a {type(ckpt).__name__}, not a state dict')
    if param_key is not None:
        if param_key not in ckpt:
            raise CheckpointFormatError(f'{path} has no {param_key!r} entry (it has {sorted(map(str, ckpt))}); '
                                        'pass one of those as --param_key')
        return ckpt[param_key], param_key
    for key in PARAM_KEYS:
        if key in ckpt:
            return ckpt[key], key
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, None
    raise CheckpointFormatError(f'{path} has no "params" or "params_ema" entry (it has {sorted(map(str, ckpt))}); '
                                'is it a BasicSR network checkpoint (net_g_*.pth)?')


def read_network_options(path):
    """``network_g`` of a YAML options file (a BasicSR options file, or one holding only ``network_g``)."""
    import yaml

    if not osp.isfile(path):
        raise FileNotFoundError(f'options file {path!r} does not exist')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f'options file {path!r} is not valid YAML: {err}') from None
    network = opt.get('network_g', opt) if isinstance(opt, dict) else None
    if not isinstance(network, dict) or 'type' not in network:
        raise ValueError(f'options file {path!r} has no network_g section with a type')
    return network




def _network_key(network):
    return repr(sorted((str(k), repr(v)) for k, v in network.items()))


def saved_network_options(path):
    """``[(network_g, yml path), ...]`` of the options files BasicSR saved in the run folder of a training
    checkpoint ``experiments/<name>/models/<file>`` (sorted by name; files that are not options are passed
    over); ``[]`` for a checkpoint outside a ``models`` folder."""
    folder = osp.dirname(osp.abspath(path))
    if osp.basename(folder) != 'models':
        return []
    parent, found = osp.dirname(folder), []
    for name in sorted(os.listdir(parent)):
        if name.endswith(('.yml', '.yaml')):
            try:
                found.append((read_network_options(osp.join(parent, name)), osp.join(parent, name)))
            except Exception:  # noqa: BLE001  (not an options file)
                continue
    return found


def options_beside(path):
    """``(network_g, yml path)`` of the options file BasicSR saved next to a training checkpoint, or ``None``.

    BasicSR copies the run's options file into ``experiments/<name>/``; a checkpoint
    ``experiments/<name>/models/net_g_*.pth`` therefore carries its full ``network_g`` (including settings that
    leave no trace in the weights, such as ``bicubic_skip``) one folder up. Several ``.yml`` there (e.g. after
    resuming under another options name) are used when their D2CSR ``network_g`` are identical (the first by
    name is reported); when they differ, nothing is guessed: ``ValueError`` names the files and the
    differing options and asks for ``-opt``.
    """
    found = [(n, yml) for n, yml in saved_network_options(path) if n.get('type') == 'D2CSR']
    if not found:
        return None
    parent = osp.dirname(found[0][1])
    if len({_network_key(n) for n, _ in found}) > 1:
        keys = sorted({str(k) for n, _ in found for k in n})
        differ = [k for k in keys if len({repr(n.get(k)) for n, _ in found}) > 1]
        raise ValueError(f'{parent} holds {len(found)} options files whose network_g differ (in '
                         f'{", ".join(differ)}): {", ".join(osp.basename(p) for _, p in found)}. Which one trained '
                         f'{osp.basename(path)} cannot be told from the weights; pass it with -opt.')
    return found[0]


def load_model(path, network_opt=None, scale=None, param_key=None):
    """A :class:`~d2csr.archs.D2CSR` in eval mode from any D2C-SR checkpoint.

    Args:
        path (str): a BasicSR checkpoint (``net_g_*.pth``: ``params`` / ``params_ema``, or a bare state
            dict), read with ``torch.load(weights_only=True)``; or the authors' MegEngine pickle.
        network_opt (dict, optional): ``network_g`` options; inferred from the weights when ``None``.
        scale (int, optional): expected scale; a mismatch raises ``ValueError``.
        param_key (str, optional): which entry of a BasicSR checkpoint; default ``params_ema`` when
            present, else ``params``.

    Returns:
        (D2CSR, dict): the network and the ``network_g`` options it was built from. ``net.param_key``
        records which checkpoint entry was loaded (``None`` for a bare state dict or the authors' pickle).
    """
    _check_model_file(path)
    with open(path, 'rb') as f:
        is_zip = _is_zip(f.read(4))
    if not is_zip:
        net = load_official(path, scale)
        net.param_key = None
        return net, net.network_options
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # truncated archive, or objects weights_only refuses
        raise CheckpointFormatError(f'{path} could not be loaded as a weights-only PyTorch checkpoint '
                                    f'({type(err).__name__}: {str(err).splitlines()[0]})') from None
    state, key = _select_params(ckpt, path, param_key)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f'{path}: the weights entry is a {type(state).__name__}, not a state dict')
    state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state.items())
    check_finite(state, str(path))
    if network_opt is None:
        net, opts = build_from_state(state, scale, source=str(path))
        net.param_key = key
        return net, opts
    from basicsr.archs import build_network

    opts = dict(network_opt)
    if opts.get('type') != 'D2CSR':
        raise ValueError(f'network_g:type is {opts.get("type")!r}; D2C-SR inference needs type: D2CSR')
    try:
        net = build_network(dict(opts))
    except TypeError as err:  # an option D2CSR does not take (a typo such as num_feats)
        import inspect

        valid = [k for k in inspect.signature(D2CSR.__init__).parameters if k not in ('self', 'kwargs')]
        raise ValueError(f'network_g cannot build D2CSR ({err}); valid options: {", ".join(valid)}') from None
    if scale is not None and scale != net.upscale:
        raise ValueError(f'the options give an x{net.upscale} network, but scale {scale} was asked for')
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointFormatError(f'{path} does not fit network_g {opts}: {str(err)[:2000]}') from None
    net.param_key = key
    return net.eval(), opts


def describe_param_key(net):
    """``' (weights: params_ema)'``: which checkpoint entry :func:`load_model` loaded, for the scripts' logs."""
    key = getattr(net, 'param_key', None)
    return f' (weights: {key})' if key else ''


def load_network(model_path, opt_path=None, scale=None, param_key=None):
    """The D2CSR of ``model_path``: ``network_g`` from ``opt_path``, else from the options file BasicSR saved
    beside a training checkpoint, else inferred from the weights. Returns ``(net, network_g, where from)``."""
    if opt_path:
        net, opts = load_model(model_path, read_network_options(opt_path), scale, param_key)
        return net, opts, f'from {opt_path}'
    beside = options_beside(model_path)
    if beside is not None:
        try:
            net, opts = load_model(model_path, beside[0], scale, param_key)
        except CheckpointFormatError as err:  # the saved options do not build these weights: no silent guess
            raise CheckpointFormatError(f'{err}\nThe options file {beside[1]} saved beside the checkpoint does not '
                                        'fit its weights; pass the options that trained them with -opt.') from None
        return net, opts, f'from {beside[1]}'
    net, opts = load_model(model_path, None, scale, param_key)
    return net, opts, ('inferred from the weights (no options file beside it; ' + ', '.join(NO_TRACE_OPTIONS)
                       + ' leave no trace in the weights and take their defaults: pass -opt if the model was '
                       'trained otherwise)')
