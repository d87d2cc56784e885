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

**Colour order.** The authors read images with ``cv2.imread`` and never convert them, so their network (and
their released weights) map BGR to BGR; d2csr, like BasicSR, feeds RGB. The conversion therefore permutes
three tensors (:func:`swap_red_blue`, exact, no re-training): ``sub_mean``'s input channels, ``add_mean``'s
output channels and bias, and the convergence net's first conv's input channels (per branch). The converted
network maps RGB to RGB exactly as the authors' maps BGR to BGR: ``ours(x[:, ::-1])[:, ::-1] == theirs(x)``
for a BGR ``x``. :func:`d2csr_to_official` applies the same permutation back. The ``.pth`` written by
:func:`save_basicsr_checkpoint` records the order in a top-level entry beside ``params`` (BasicSR's loader
reads only ``params``)::

    {'params': state_dict, 'd2csr': {'channel_order': 'RGB', 'source': ..., 'record_version': 1}}

A ``.pth`` written by an older converter (no record, the authors' BGR weights) is recognised by
:func:`legacy_conversion_reason` and refused by every loader with the command that converts it again
(:func:`check_channel_record`); ``scripts/convert_official.py`` accepts it as input.

Scale, feature width, groups and blocks per group, squeeze factor and tree shape are inferred from the
tensors' names and shapes (:func:`d2csr.archs.infer_options.infer_network_options`). Loading any trained model
(BasicSR checkpoints, EMA, this format) is :mod:`d2csr.loading`'s job.
"""
import io
import os.path as osp
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch

from d2csr.archs.infer_options import build_from_state
from d2csr.utils.atomic import write_bytes_atomic
from d2csr.utils.checkpoint import (CheckpointFormatError, check_finite, check_model_file, is_zip_checkpoint,
                                    load_lazily)

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
RECORD_KEY = 'd2csr'  # top-level entry of a converted .pth beside 'params' (BasicSR's loader ignores it)
CHANNEL_ORDER = 'RGB'
SOURCE_OFFICIAL = "the authors' MegEngine checkpoint (BGR weights), converted to RGB"
RECONVERT_HINT = 'python scripts/convert_official.py {path} {new}'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint pickle asked for something other than plain containers and numpy arrays."""


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


def read_official_pickle(path):
    """Read an official checkpoint (or any data-only pickle) without running code; returns the object."""
    check_model_file(path)
    with open(path, 'rb') as f:
        data = f.read()
    if is_zip_checkpoint(data[:4]):
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


def swap_red_blue(state):
    """The D2CSR state dict (``mean_shift='learnable'``) of the same network with red and blue swapped at its
    ends: ``net'(x) = flip(net(flip(x)))`` for every input, ``flip`` reversing the colour channels.

    Permutes ``sub_mean.weight``'s input channels, ``add_mean.weight``'s output channels and ``add_mean.bias``,
    and the input channels of the convergence net's first conv ``fusion.fusion.0.weight`` within each branch's
    block of ``C`` channels (its input is the ``P`` predictions concatenated). Nothing else sees a colour
    channel: the head reads ``sub_mean``'s output and the tails feed ``add_mean``. Its own inverse; the
    authors' BGR weights <-> RGB. Returns a new dict (other tensors shared, not copied).
    """
    needed = ('sub_mean.weight', 'add_mean.weight', 'add_mean.bias', 'fusion.fusion.0.weight')
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointFormatError(f'cannot swap the colour order: the weights lack {missing} (only a D2CSR with '
                                    'the authors\' learnable mean shift, mean_shift: learnable, has them)')
    channels = state['add_mean.weight'].shape[0]
    fusion = state['fusion.fusion.0.weight']
    if fusion.shape[1] % channels:
        raise CheckpointFormatError(f'fusion.fusion.0.weight has {fusion.shape[1]} input channels, not a multiple '
                                    f'of the {channels} colour channels')
    flip = torch.arange(channels - 1, -1, -1)
    per_branch = torch.cat([b * channels + flip for b in range(fusion.shape[1] // channels)])
    out = OrderedDict(state)
    out['sub_mean.weight'] = state['sub_mean.weight'][:, flip].contiguous()
    out['add_mean.weight'] = state['add_mean.weight'][flip].contiguous()
    out['add_mean.bias'] = state['add_mean.bias'][flip].contiguous()
    out['fusion.fusion.0.weight'] = fusion[:, per_branch].contiguous()
    return out


def official_to_d2csr(state_d, state_c):
    """Official ``state_dict_D`` + ``state_dict_C`` -> D2CSR ``state_dict`` of float32 torch tensors, names
    mapped and colours swapped (:func:`swap_red_blue`): the authors' BGR network as an RGB one."""
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
    return swap_red_blue(result)  # (load_official has checked that state_dict_C is there)


def d2csr_to_official(net):
    """The inverse mapping: a D2CSR (RCAN backbone, ``mean_shift='learnable'``, deep residual) as the
    authors' pickle payload ``{'state_dict_D', 'state_dict_C', 'psnr'}`` of numpy arrays, colours swapped
    back (:func:`swap_red_blue`): the authors' code, fed BGR as it reads images, gives what ``net`` gives on
    RGB.

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
    for name, tensor in swap_red_blue(net.state_dict()).items():
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


def load_official(path, scale=None):
    """The authors' MegEngine checkpoint ``path`` as a :class:`~d2csr.archs.D2CSR` in eval mode.

    Args:
        path (str): the official pickle.
        scale (int, optional): expected scale; a mismatch raises ``ValueError``.

    Returns:
        D2CSR: in RGB order (see the module docstring: the authors' BGR weights are swapped to RGB), with
        ``net.network_options`` set to the ``network_g`` options that rebuild it.
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
        not_names = [k for k in payload[key] if not isinstance(k, str)]
        if not_names:
            raise CheckpointFormatError(f'{path}: {key} has {len(not_names)} key(s) that are not parameter names '
                                        f'(e.g. {not_names[0]!r}, a {type(not_names[0]).__name__}); the authors\' '
                                        'checkpoint names every tensor ("head.0.weight", ...). The file is not '
                                        'their checkpoint, or was altered.')
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


def channel_record(source='d2csr'):
    """The ``'d2csr'`` entry a converted checkpoint carries beside ``params`` (plain types: weights-only loads
    read it, BasicSR's and spandrel's loaders pass over it)."""
    return {'channel_order': CHANNEL_ORDER, 'source': str(source), 'record_version': 1}


def save_basicsr_checkpoint(net, path, source='d2csr'):
    """Write ``{'params': state_dict, 'd2csr': channel_record(source)}``: the checkpoint layout BasicSR's
    ``path: pretrain_network_g`` reads, plus the record of the colour order (RGB, as d2csr and BasicSR feed).

    The file appears whole or not at all (:func:`d2csr.utils.atomic.write_bytes_atomic`): the checkpoint is
    serialised in memory first, so a full disk or a file-size limit fails with an ``OSError`` naming the cause
    and leaves ``path`` as it was.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({'params': state, RECORD_KEY: channel_record(source)}, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


# --------------------------------------------------------------------------------------------------
# checkpoints written by older converters (the authors' BGR weights, no record)
def legacy_conversion_reason(ckpt):
    """Why ``ckpt`` (a loaded ``.pth``) is the authors' BGR weights as an older ``convert_official.py`` wrote
    them, or ``None``.

    Such a file is ``{'params': state}`` and nothing else, with no ``'d2csr'`` record, holding the authors'
    learnable mean shift; it differs from what d2csr's training saves in two ways that both must hold: its
    conv weights are stored in PyTorch's default layout (the converter made them contiguous; D2CSR trains and
    saves channels-last), and ``sub_mean`` is not a diagonal matrix (the authors' mean shift was never
    initialised, so theirs is arbitrary; d2csr's starts as the fixed shift, a diagonal).
    """
    if not isinstance(ckpt, dict) or set(ckpt) != {'params'}:
        return None
    state = ckpt['params']
    if not isinstance(state, dict):
        return None
    sub_mean, head = state.get('sub_mean.weight'), state.get('head.weight')
    if not (isinstance(sub_mean, torch.Tensor) and isinstance(head, torch.Tensor) and sub_mean.dim() == 4
            and head.dim() == 4 and sub_mean.shape[0] == sub_mean.shape[1] and sub_mean.shape[0] > 1):
        return None
    if not head.is_contiguous() or head.is_contiguous(memory_format=torch.channels_last):
        return None  # channels-last: saved by d2csr's training (or ambiguous), not by the old converter
    matrix = sub_mean.detach().float().reshape(sub_mean.shape[0], sub_mean.shape[1])
    diagonal = matrix.diagonal().abs()
    off = (matrix - torch.diag(matrix.diagonal())).abs().max()
    if float(off) <= 0.1 * float(diagonal.mean()):
        return None  # (close to) a scaled identity: d2csr's own learnable mean shift
    return ('it holds the authors\' learnable mean shift (an arbitrary sub_mean matrix) in the converter\'s '
            'layout but no channel-order record')


def legacy_conversion_message(path):
    """What to do with the old converted checkpoint ``path``: convert it again."""
    root, ext = osp.splitext(str(path))
    new = f'{root}_rgb{ext or ".pth"}'
    return (f'{path} was written by an older scripts/convert_official.py: it holds the authors\' weights in '
            'their BGR colour order (no "d2csr: channel_order" record), which swaps red and blue on the RGB '
            'images d2csr and BasicSR feed. Convert it again (from this file or from the authors\' .pkl): '
            + RECONVERT_HINT.format(path=path, new=new) + ' and use the new file.')


def check_channel_record(ckpt, path):
    """Raise :class:`CheckpointFormatError` when the loaded checkpoint ``ckpt`` of ``path`` is an old BGR
    conversion (:func:`legacy_conversion_reason`), or records a channel order other than RGB."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get(RECORD_KEY), dict):
        order = ckpt[RECORD_KEY].get('channel_order', CHANNEL_ORDER)
        if order != CHANNEL_ORDER:
            raise CheckpointFormatError(f'{path} records channel_order {order!r}; d2csr feeds RGB images. '
                                        'Convert it with scripts/convert_official.py.')
        return
    if legacy_conversion_reason(ckpt) is not None:
        raise CheckpointFormatError(legacy_conversion_message(path))


def check_channel_order(path):
    """:func:`check_channel_record` for the checkpoint file ``path`` (read lazily, tensor data mapped, not
    read). Files that are not PyTorch checkpoints, or cannot be read, pass: the loader reports those."""
    try:
        with open(path, 'rb') as f:
            if not is_zip_checkpoint(f.read(4)):
                return
        ckpt = load_lazily(path)
    except Exception:  # noqa: BLE001  (the loader that follows names the problem)
        return
    check_channel_record(ckpt, path)


def reconvert_legacy(path):
    """The D2CSR (RGB, eval mode) of an old converted checkpoint ``path`` (see :func:`legacy_conversion_reason`);
    ``net.network_options`` set. Raises :class:`CheckpointFormatError` when ``path`` is not one."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  (truncated archive, objects weights_only refuses)
        raise CheckpointFormatError(f'{path} could not be loaded as a weights-only PyTorch checkpoint '
                                    f'({type(err).__name__}: {str(err).splitlines()[0][:200]})') from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get(RECORD_KEY), dict):
        raise CheckpointFormatError(f'{path} is already converted (it records channel_order '
                                    f'{ckpt[RECORD_KEY].get("channel_order")!r}); use it as it is.')
    if legacy_conversion_reason(ckpt) is None:
        raise CheckpointFormatError(f'{path} is a PyTorch checkpoint, but not one an older convert_official.py '
                                    'wrote (those hold only "params", with the authors\' learnable mean shift); '
                                    'give the authors\' .pkl, or use this file directly.')
    check_finite(ckpt['params'], str(path))
    net, opts = build_from_state(swap_red_blue(ckpt['params']), source=str(path))
    net.network_options = opts
    return net


