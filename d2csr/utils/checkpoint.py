"""Crash-safe checkpoints and exact resume: atomic writes, RNG states, choosing and checking a resume state.

A training run writes, at every ``save_checkpoint_freq`` iterations, ``models/net_g_<iter>.pth`` and then
``training_states/<iter>.state``. Both go through :func:`atomic_save`: the bytes are written to a temporary
file in the same folder (``<name>.tmp<pid>``), flushed and fsynced, and only then renamed over the final
name (``os.replace`` is atomic on POSIX and Windows), after which the folder itself is fsynced. A process
killed at any moment therefore leaves either the complete old file, the complete new one, or a stray
``*.tmp<pid>`` that nothing reads (resume deletes it).

:func:`find_resume_state` picks the newest *complete* pair (a readable ``<iter>.state`` and a readable
``net_g_<iter>.pth``) and says why it passed over newer ones; :func:`check_network_matches` refuses a state
written by another network shape before anything is written.

Test hook: the environment variable ``D2CSR_TEST_SLOW_SAVE=<seconds>`` makes :func:`atomic_save` write half of
each file, fsync, sleep that long, then write the rest, so that a test can kill a process while a save is
in flight. Unset (the default), saving is a plain ``torch.save`` into the temporary file.
"""
import contextlib
import io
import os
import os.path as osp
import random
import re
import time
from copy import deepcopy

import numpy as np
import torch

from .atomic import atomic_write
from .errors import ResumeError, UserError

SLOW_SAVE_ENV = 'D2CSR_TEST_SLOW_SAVE'
_TMP_PATTERN = re.compile(r'\.tmp\d+$')


# --------------------------------------------------------------------------------------------------
# atomic writes
class CheckpointFormatError(UserError, ValueError):
    """A file is not an official D2C-SR checkpoint (or not one this converter understands)."""


def is_zip_checkpoint(head):
    """Whether the first bytes ``head`` of a file are a PyTorch (>= 1.6) checkpoint's zip archive (also when the
    file is truncated); the authors' MegEngine checkpoints are plain pickles."""
    return head.startswith(b'PK\x03\x04')


def check_model_file(path):
    """Raise ``FileNotFoundError`` naming ``path`` when it is a folder or does not exist."""
    if osp.isdir(path):
        raise FileNotFoundError(f'model {path!r} is a folder, not a checkpoint file; give the file itself (e.g. '
                                f'{osp.join(path, "net_g_latest.pth")}).')
    if not osp.isfile(path):
        raise FileNotFoundError(f'model {path!r} does not exist')


def check_finite(state, source):
    """Raise :class:`CheckpointFormatError` naming the first tensor of ``state`` (name -> tensor / array)
    that holds NaN or Inf: such weights give black or garbage images without any other sign."""
    for name, value in state.items():
        tensor = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.device.type != 'meta' \
                and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointFormatError(f'{source}: tensor {name!r} holds {bad} non-finite value(s) (NaN or Inf) '
                                        f'of {tensor.numel()}; the checkpoint is corrupt (or from a diverged '
                                        'training run). Use an earlier checkpoint.')


def atomic_save(obj, path):
    """``torch.save(obj, path)`` that never leaves a partial file at ``path`` (:func:`d2csr.utils.atomic.atomic_write`:
    a temporary file in the same folder, fsynced and renamed; on any error or interruption it is removed and
    ``path`` keeps its previous content)."""
    pause = float(os.environ.get(SLOW_SAVE_ENV) or 0)
    with atomic_write(path) as f:
        if pause > 0:  # test hook (see the module docstring): a save that is half-written for a while
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = buffer.getbuffer()
            f.write(data[:len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(pause)
            f.write(data[len(data) // 2:])
        else:
            torch.save(obj, f)


def _os_error(error):
    """The ``OSError`` behind ``error``: itself, or what torch's zip writer was handling when it gave up (its
    ``RuntimeError: ... unexpected pos`` keeps the failed ``write``'s ``OSError`` as context)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _file_size_limit():
    """This process's file-size limit in bytes (``ulimit -f``), or ``None`` when unlimited."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def write_failure(error):
    """Why a write failed when it is the storage's fault, not a bug: ``'disk full'`` (ENOSPC), ``'disk quota
    exceeded'`` (EDQUOT), ``'file-size limit'`` (EFBIG: ``ulimit -f``; Python ignores the SIGXFSZ that would
    otherwise kill the process), or ``None``. A ``RuntimeError`` from torch's zip writer without a recorded
    ``OSError`` (``unexpected pos`` / ``file write failed``) counts as a full disk unless a file-size limit is set."""
    import errno

    os_error = _os_error(error)
    if os_error is not None:
        return {errno.ENOSPC: 'disk full', errno.EDQUOT: 'disk quota exceeded',
                errno.EFBIG: 'file-size limit'}.get(os_error.errno)
    text = str(error)
    if isinstance(error, RuntimeError) and ('unexpected pos' in text or 'file write failed' in text):
        return 'file-size limit' if _file_size_limit() is not None else 'disk full'
    return None


def _write_failure_hint(kind, path):
    folder = osp.dirname(osp.abspath(path))
    if kind == 'file-size limit':
        limit = _file_size_limit()
        size = f' of {limit:,d} bytes' if limit is not None else ''
        return (f' This process has a file-size limit{size} (ulimit -f), smaller than the checkpoint: raise it '
                '(ulimit -f unlimited in the shell or job script that starts training, or ask your cluster\'s '
                'administrator); the disk itself is not full. The next save tries again.')
    if kind == 'disk quota exceeded':
        return (f' Your disk quota on {folder} is used up: delete old net_g_<iter>.pth / <iter>.state files or ask '
                'for a larger quota; the next save tries again.')
    return (f' The disk holding {folder} is full: free some space (e.g. delete old net_g_<iter>.pth / <iter>.state '
            'files); the next save tries again.')


def save_with_retry(obj, path, logger, retries=3):
    """:func:`atomic_save` with BasicSR's retry-on-error policy.

    BasicSR retries a failed save three times and then carries on training; so does this (the previous
    complete checkpoint stays in place and the next save tries again). A full disk, a used-up quota or the
    process's file-size limit (:func:`write_failure`) is handled the same way and logged by its name, with what
    to do; any other error is raised. Returns whether it was saved.
    """
    kind = None
    for attempt in range(retries):
        try:
            atomic_save(obj, path)
            return True
        except (OSError, RuntimeError) as error:
            kind = write_failure(error)
            if isinstance(error, RuntimeError) and kind is None:
                raise
            what = kind or error_summary(error)
            logger.warning(f'Saving {path} failed ({what}); {retries - attempt - 1} retries left.')
            time.sleep(1)
    hint = _write_failure_hint(kind, path) if kind else ''
    logger.error(f'Could not save {path}{f" ({kind})" if kind else ""}; training continues, the previous '
                 f'checkpoint is kept.{hint}')
    return False


def remove_stale_temporaries(*directories):
    """Delete ``*.tmp<pid>`` files that killed saves left behind; returns their paths."""
    removed = []
    for directory in directories:
        if not osp.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if _TMP_PATTERN.search(name):
                with contextlib.suppress(OSError):
                    os.remove(osp.join(directory, name))
                    removed.append(osp.join(directory, name))
    return removed


# --------------------------------------------------------------------------------------------------
# random number generator states (python, numpy, torch, CUDA), in a form torch.load(weights_only=True) reads
def capture_rng_state():
    """The process's global RNG states as a dict of tensors, ints and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': [version, list(internal), gauss],
        'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        for device, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# --------------------------------------------------------------------------------------------------
# choosing and checking a resume state
def state_network_path(models_dir, resume_iter, label='net_g'):
    return osp.join(models_dir, f'{label}_{resume_iter}.pth')


def load_lazily(path):
    """``torch.load`` on the CPU with ``weights_only``, mapping the tensor data instead of reading it.

    Files in the pre-1.6 (non-zip) format cannot be mapped and are read whole.
    """
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError as error:
        if 'zipfile' not in str(error):
            raise
        return torch.load(path, map_location='cpu', weights_only=True)


def error_summary(error, limit=160):
    """``'Type: first line of the message'`` of an exception, also when the message is empty (``torch.load`` of
    an empty file raises a bare ``EOFError``)."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0][:limit]}' if lines else type(error).__name__


def unreadable_reason(path):
    """``None`` when ``path`` is a complete torch file, else why not: ``'missing'``, ``'empty: 0 bytes'``,
    ``'unreadable (...)'`` (truncated, not a torch file)."""
    if not osp.isfile(path):
        return 'missing'
    if osp.getsize(path) == 0:
        return 'empty: 0 bytes'
    try:  # reads the archive's index and pickle, not the tensor data
        load_lazily(path)
    except Exception as error:  # a truncated zip, a bad pickle, ...
        return f'unreadable ({error_summary(error, 120)})'
    return None



def find_resume_state(states_dir, models_dir, label='net_g'):
    """Newest complete training state in ``states_dir``.

    Complete means ``<iter>.state`` and ``<models_dir>/<label>_<iter>.pth`` both exist and load. Returns
    ``(state_path or None, skipped)`` where ``skipped`` lists ``(path, reason)`` for newer, incomplete ones.
    Raises ``RuntimeError`` when there are states but none is complete.
    """
    if not osp.isdir(states_dir):
        return None, []
    iters = sorted((int(name[:-len('.state')]) for name in os.listdir(states_dir)
                    if name.endswith('.state') and name[:-len('.state')].isdigit()), reverse=True)
    skipped = []
    for it in iters:
        state_path = osp.join(states_dir, f'{it}.state')
        reason = unreadable_reason(state_path)
        if reason is None:
            net_path = state_network_path(models_dir, it, label)
            net_reason = unreadable_reason(net_path)
            if net_reason is None:
                return state_path, skipped
            reason = f'its network {net_path} is {net_reason}'
        else:
            reason = f'it is {reason}'
        skipped.append((state_path, reason))
    if skipped:
        details = '; '.join(f'{p}: {r}' for p, r in skipped)
        raise ResumeError(f'--auto_resume: no complete training state in {states_dir} ({details}). Point '
                           'path:resume_state at a good one, or move the folder away to start from scratch.')
    return None, []


def _network_shapes(network_opt):
    """``{key: shape}`` of the state dict of ``network_opt``'s network, built without allocating it."""
    from basicsr.utils.registry import ARCH_REGISTRY

    kwargs = deepcopy(dict(network_opt))
    arch = ARCH_REGISTRY.get(kwargs.pop('type'))
    try:
        with torch.device('meta'):
            net = arch(**kwargs)
    except Exception:  # an architecture that cannot be built on the meta device
        net = arch(**kwargs)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def state_differences(expected, found, strict=True):
    """What keeps a state dict with shapes ``found`` (``{key: shape}``) from loading into a network with
    ``expected``: shape differences always, missing / unexpected keys with ``strict``; ``[]`` when it fits."""
    shape = [k for k in expected if k in found and tuple(expected[k]) != tuple(found[k])]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    problems = []
    if shape:
        k = shape[0]
        problems.append(f'{len(shape)} tensors differ in shape (e.g. {k}: {tuple(found[k])} saved, '
                        f'{tuple(expected[k])} now)')
    if strict and missing:
        problems.append(f'{len(missing)} are missing (e.g. {missing[0]})')
    if strict and unexpected:
        problems.append(f'{len(unexpected)} are unexpected (e.g. {unexpected[0]})')
    return problems


def read_network_weights(load_path, param_key='params', logger=None):
    """The state dict of a BasicSR network checkpoint, as BasicSR's ``load_network`` picks it (``param_key``,
    else ``params``; ``module.`` prefixes removed), read with ``weights_only=True`` and checked to be finite.

    Raises ``ValueError`` naming the file and the fix: the authors' MegEngine pickle (convert it with
    ``scripts/convert_official.py``; never ``weights_only=False``), a truncated or foreign file, a missing
    entry, NaN/Inf weights.
    """
    if osp.isdir(load_path):
        raise ValueError(f'{load_path!r} is a folder, not a network checkpoint (net_g_<iter>.pth).')
    with open(load_path, 'rb') as f:
        head = f.read(4)
    if not head.startswith(b'PK\x03\x04'):
        raise ValueError(f'{load_path} is not a PyTorch checkpoint (no zip archive): if it is the authors\' '
                         'MegEngine checkpoint (.pkl), convert it first with python scripts/convert_official.py '
                         f'{load_path} OUT.pth and load OUT.pth. (Loading it with weights_only=False, as torch '
                         'suggests, would let the file run code.)')
    try:
        ckpt = torch.load(load_path, map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: BLE001  (truncated archive, objects weights_only refuses)
        raise ValueError(f'{load_path} could not be loaded as a weights-only PyTorch checkpoint '
                         f'({error_summary(error, 200)}); it is truncated or not '
                         'a network checkpoint.') from None
    if not isinstance(ckpt, dict):
        raise ValueError(f'{load_path} holds a {type(ckpt).__name__}, not a network checkpoint.')
    if param_key is not None:
        if param_key not in ckpt and 'params' in ckpt:
            if logger is not None:
                logger.info(f'Loading: {param_key} does not exist, use params.')
            param_key = 'params'
        if param_key not in ckpt:
            raise ValueError(f'{load_path} has no {param_key!r} entry (it has {sorted(map(str, ckpt))}); is it a '
                             'BasicSR network checkpoint (net_g_<iter>.pth)?')
        ckpt = ckpt[param_key]
    if not isinstance(ckpt, dict):
        raise ValueError(f'{load_path}: entry {param_key!r} is a {type(ckpt).__name__}, not a state dict.')
    state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in ckpt.items()}
    try:
        check_finite(state, load_path)
    except CheckpointFormatError as error:
        raise ValueError(str(error)) from None
    return state, param_key


def load_network_checked(net, load_path, strict=True, param_key='params', logger=None, prepare=None):
    """BasicSR's ``load_network`` with every check: :func:`read_network_weights`, then the shapes compared
    with ``net`` (the check resuming uses) before ``load_state_dict``, so that weights of another network
    give one line naming the first differing tensor instead of a page of ``load_state_dict`` errors.
    ``prepare(state)``, when given, is called with the state dict first (a network that adapts its modules
    to the weights it is given does it there)."""
    state, param_key = read_network_weights(load_path, param_key, logger)
    if prepare is not None:
        prepare(state)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    problems = state_differences(expected, {k: tuple(v.shape) for k, v in state.items()}, strict)
    if problems:
        raise ValueError(f'{load_path} does not fit network_g ({"; ".join(problems)}): it was trained with other '
                         'network_g options (num_feat, depth, width, upscale, ...). Use the options of the run '
                         'that wrote it (a copy is in its experiments/<name>/ folder), or set '
                         'path:strict_load_g: false to load only matching keys (shapes must still match).')
    if logger is not None:
        logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
    net.load_state_dict(state, strict=strict)


def check_network_matches(network_opt, net_path, state_path, strict=True, saved_network_opt=None):
    """Raise ``ValueError`` when the weights in ``net_path`` do not fit ``network_opt``'s network.

    Called before resuming, before anything is written. Shape differences are always refused; missing or
    unexpected keys only with ``strict`` (``path: strict_load_g``).
    """
    expected = _network_shapes(network_opt)
    reason = unreadable_reason(net_path)
    if reason is not None:
        raise ResumeError(f'cannot resume from {state_path}: its network {net_path} is {reason} (a save that was '
                          'interrupted, or a copy that was cut short). Resume from an earlier state with '
                          '--auto_resume, which skips incomplete pairs, or point path:resume_state at one whose '
                          'net_g_<iter>.pth is complete. Nothing was written.')
    saved = load_lazily(net_path)
    if isinstance(saved, dict) and isinstance(saved.get('params'), dict):
        saved = saved['params']
    found = {(k[len('module.'):] if k.startswith('module.') else k): tuple(v.shape) for k, v in saved.items()}
    problems = state_differences(expected, found, strict)
    if not problems:
        return
    if saved_network_opt:
        now = dict(network_opt)
        diff = [f'{k}: {saved_network_opt.get(k)!r} saved, {now.get(k)!r} now'
                for k in sorted(set(saved_network_opt) | set(now)) if saved_network_opt.get(k) != now.get(k)]
        if diff:
            problems.append('network_g options differ: ' + '; '.join(diff))
    raise ResumeError(f'refusing to resume from {state_path}: it was trained with a different network than '
                     f'network_g in this options file ({", ".join(problems)}; weights {net_path}). Resume with '
                     'the options of that run (a copy is in its experiments/<name>/ folder), or give this run '
                     'another name to start a new experiment. Nothing was written.')
