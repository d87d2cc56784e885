"""Load any trained D2C-SR model as a :class:`~d2csr.archs.D2CSR` in eval mode.

- :func:`load_model`: a BasicSR checkpoint (``net_g_*.pth``: ``params_ema`` preferred, else ``params``, or a bare
  state dict; read with ``torch.load(weights_only=True)``) or the authors' MegEngine pickle (through
  :mod:`d2csr.convert`, converted to RGB on the way), with ``network_g`` given or inferred from the weights; a
  ``.pth`` an older converter wrote (the authors' BGR weights, no channel record) is refused with the command
  that converts it again;
- :func:`load_network`: the same, with ``network_g`` from an options file, else from the options file BasicSR
  saved beside a training checkpoint, else inferred (what the inference and visualize scripts use).
"""
import os
import os.path as osp
from collections import OrderedDict

import torch

from d2csr.archs import D2CSR
from d2csr.archs.infer_options import NO_TRACE_OPTIONS, build_from_state
from d2csr.convert import check_channel_record, load_official
from d2csr.utils.checkpoint import CheckpointFormatError, check_finite, check_model_file, is_zip_checkpoint
from d2csr.utils.yaml_io import UnsafeOptionsError, load_options

PARAM_KEYS = ('params_ema', 'params')  # preferred first: an EMA-trained checkpoint gives its EMA weights


class MissingEntry(CheckpointFormatError):
    """``param_key`` names no entry of the checkpoint (the message lists the ones it has)."""


def _is_state_dict(value):
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _select_params(ckpt, path, param_key=None):
    """``(state dict, key)`` of a BasicSR checkpoint: ``param_key`` if given, else ``params_ema`` when present
    (what BasicSR saves with ``ema_decay > 0``: the weights its validation measured; Real-ESRGAN's
    convention), else ``params``; a bare state dict gives key ``None``."""
    if not isinstance(ckpt, dict):
        raise CheckpointFormatError(f'{path} holds a {type(ckpt).__name__}, not a state dict')
    if param_key is not None:
        if _is_state_dict(ckpt):
            raise MissingEntry(f'{path} is a bare state dict (the weights themselves, no entries such as "params" '
                               f'or "params_ema"), so --param_key {param_key!r} names nothing in it; leave '
                               '--param_key out.')
        if param_key not in ckpt:
            weights = sorted(str(k) for k, v in ckpt.items() if _is_state_dict(v))
            others = sorted(str(k) for k, v in ckpt.items() if not _is_state_dict(v))
            raise MissingEntry(f'{path} has no {param_key!r} entry (it has {weights or "no weight entries"}'
                               + (f'; other entries: {others}' if others else '')
                               + (f'); pass one of {weights} as --param_key' if weights else ')'))
        return ckpt[param_key], param_key
    for key in PARAM_KEYS:
        if key in ckpt:
            return ckpt[key], key
    if _is_state_dict(ckpt):
        return ckpt, None
    raise CheckpointFormatError(f'{path} has no "params" or "params_ema" entry (it has {sorted(map(str, ckpt))}); '
                                'is it a BasicSR network checkpoint (net_g_*.pth)?')


def read_network_options(path):
    """``network_g`` of a YAML options file (a BasicSR options file, or one holding only ``network_g``)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'options file {path!r} does not exist')
    opt = load_options(path, require_mapping=False)  # data only: refuses !!python tags, alias bombs (ValueError)
    network = opt.get('network_g', opt) if isinstance(opt, dict) else None
    if not isinstance(network, dict) or 'type' not in network:
        raise NotNetworkOptions(f'options file {path!r} has no network_g section with a type')
    return network


class NotNetworkOptions(ValueError):
    """A readable YAML file without a ``network_g`` (not an options file for a network)."""




def _network_key(network):
    return repr(sorted((str(k), repr(v)) for k, v in network.items()))


def saved_network_options(path, unreadable=None):
    """``[(network_g, yml path), ...]`` of the options files BasicSR saved in the run folder of a training
    checkpoint ``experiments/<name>/models/<file>`` (sorted by name; YAML files without ``network_g`` are passed
    over; files that cannot be read as YAML too, each added to the list ``unreadable`` as ``(path, reason)``);
    ``[]`` for a checkpoint outside a ``models`` folder."""
    folder = osp.dirname(osp.abspath(path))
    if osp.basename(folder) != 'models':
        return []
    parent, found = osp.dirname(folder), []
    for name in sorted(os.listdir(parent)):
        if name.endswith(('.yml', '.yaml')):
            try:
                found.append((read_network_options(osp.join(parent, name)), osp.join(parent, name)))
            except UnsafeOptionsError:
                raise  # a python tag or an alias bomb beside a checkpoint is refused, not passed over
            except NotNetworkOptions:
                continue
            except Exception as err:  # noqa: BLE001  (a corrupt file: reported by options_beside when it matters)
                if unreadable is not None:
                    unreadable.append((osp.join(parent, name), str(err).splitlines()[0][:300]))
    return found


def options_beside(path):
    """``(network_g, yml path)`` of the options file BasicSR saved next to a training checkpoint, or ``None``.

    BasicSR copies the run's options file into ``experiments/<name>/``; a checkpoint
    ``experiments/<name>/models/net_g_*.pth`` therefore carries its full ``network_g`` (including settings that
    leave no trace in the weights, such as ``bicubic_skip``) one folder up. Several ``.yml`` there (e.g. after
    resuming under another options name) are used when their D2CSR ``network_g`` are identical (the first by
    name is reported); when they differ, nothing is guessed: ``ValueError`` names the files and the
    differing options and asks for ``-opt``; so it does when the only ``.yml`` files there cannot be read.
    """
    unreadable = []
    found = [(n, yml) for n, yml in saved_network_options(path, unreadable) if n.get('type') == 'D2CSR']
    if not found and unreadable:  # the only candidates cannot be read: say so rather than guess from the weights
        raise ValueError('the options file BasicSR saved beside the checkpoint cannot be read: '
                         + '; '.join(f'{p} ({reason})' for p, reason in unreadable)
                         + '. Repair it, or pass the options that trained the model with -opt.')
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
    check_model_file(path)
    with open(path, 'rb') as f:
        is_zip = is_zip_checkpoint(f.read(4))
    if not is_zip:
        if param_key is not None:
            raise MissingEntry(f'{path} is the authors\' MegEngine pickle (entries state_dict_D, state_dict_C), not a '
                               f'BasicSR checkpoint: --param_key {param_key!r} does not apply; leave it out.')
        net = load_official(path, scale)
        net.param_key = None
        return net, net.network_options
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # truncated archive, or objects weights_only refuses
        raise CheckpointFormatError(f'{path} could not be loaded as a weights-only PyTorch checkpoint '
                                    f'({type(err).__name__}: {str(err).splitlines()[0]})') from None
    check_channel_record(ckpt, path)  # the authors' BGR weights from an older converter: refused, with the fix
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
        except MissingEntry:
            raise
        except CheckpointFormatError as err:  # the saved options do not build these weights: no silent guess
            raise CheckpointFormatError(f'{err}\nThe options file {beside[1]} saved beside the checkpoint does not '
                                        'fit its weights; pass the options that trained them with -opt.') from None
        return net, opts, f'from {beside[1]}'
    net, opts = load_model(model_path, None, scale, param_key)
    return net, opts, ('inferred from the weights (no options file beside it; ' + ', '.join(NO_TRACE_OPTIONS)
                       + ' leave no trace in the weights and take their defaults: pass -opt if the model was '
                       'trained otherwise)')
