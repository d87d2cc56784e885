"""Every compatibility shim d2csr needs for BasicSR 1.4.2 on current PyTorch, in one place.

This module must be imported *before* ``basicsr`` (``import d2csr`` does it first). It

1. registers ``torchvision.transforms.functional_tensor`` (removed from torchvision 0.17), which
   ``basicsr/data/degradations.py`` still imports, so that ``import basicsr`` works;
2. replaces ``basicsr.train.load_resume_state``, which calls ``torch.cuda.current_device()`` and so
   fails on a machine without a GPU, by a device-agnostic version that loads with ``weights_only=True``
   and names a missing state file.

Nothing else in d2csr patches BasicSR.
"""
import os.path as osp
import sys
import types

import torch
import torchvision.transforms.functional as _tv_functional


def _install_functional_tensor():
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:  # an old torchvision still has it
        import torchvision.transforms.functional_tensor  # noqa: F401
        return
    except ImportError:
        pass
    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = _tv_functional.rgb_to_grayscale
    sys.modules[name] = shim


_install_functional_tensor()

import basicsr.train  # noqa: E402  (must come after the torchvision shim)
from basicsr.utils import check_resume, scandir  # noqa: E402


def resume_map_location(opt):
    """Where resume states are loaded to: the current CUDA device when training on GPU, else the CPU."""
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def load_resume_state(opt):
    """Drop-in for ``basicsr.train.load_resume_state`` that also works without a GPU.

    With ``--auto_resume`` it picks the newest ``<iter>.state`` in ``opt['path']['training_states']``
    (``<root>/experiments/<name>/training_states``, where BasicSR writes them);
    otherwise it reads ``path: resume_state``. Returns the state dict or ``None``.
    """
    resume_state_path = None
    if opt['auto_resume']:
        state_path = opt['path']['training_states']
        if osp.isdir(state_path):
            states = [v for v in scandir(state_path, suffix='state', recursive=False, full_path=False)
                      if v[:-len('.state')].isdigit()]
            if states:
                newest = max(int(v[:-len('.state')]) for v in states)
                resume_state_path = osp.join(state_path, f'{newest}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']

    if resume_state_path is None:
        return None
    if not osp.isfile(resume_state_path):
        raise FileNotFoundError(f'path:resume_state {resume_state_path!r} does not exist; '
                                'point it at an existing experiments/<name>/training_states/<iter>.state '
                                'or remove it to start from scratch.')
    resume_state = torch.load(resume_state_path, map_location=resume_map_location(opt), weights_only=True)
    check_resume(opt, resume_state['iter'])
    return resume_state


basicsr.train.load_resume_state = load_resume_state
