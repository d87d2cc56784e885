"""Mixed precision for inference and validation: one ``torch.autocast`` around a whole call.

The options use the same values everywhere (``val: amp``, ``inference_d2csr.py --amp``, and the training
side's ``train: amp``): ``bf16``, ``fp16`` or ``~`` (None: fp32). The weights stay fp32 and so do the
checkpoints; convs run in the low precision inside the context and :class:`~d2csr.archs.D2CSR` returns its
outputs in the input's dtype (fp32).
"""
import contextlib

import torch

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def amp_dtype(value, option='amp'):
    """``None`` / ``False`` / ``'fp32'`` -> ``None``; ``'bf16'`` / ``'fp16'`` (or the torch dtype) -> the dtype.

    Anything else raises ``ValueError`` naming ``option`` (e.g. ``'val:amp'``) and the valid values.
    """
    if value is None or value is False or value in ('fp32', 'none') or value is torch.float32:
        return None
    if isinstance(value, torch.dtype) and value in AMP_DTYPES.values():
        return value
    if isinstance(value, str) and value.lower() in AMP_DTYPES:
        return AMP_DTYPES[value.lower()]
    raise ValueError(f'{option} must be one of bf16, fp16 or ~ (fp32), got {value!r}')


def autocast(device, amp):
    """``torch.autocast`` on ``device`` (a ``torch.device`` or its type) in ``amp`` (see :func:`amp_dtype`),
    or a no-op context for fp32."""
    dtype = amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(device_type, dtype=dtype)


def amp_name(amp):
    """``'bf16'`` / ``'fp16'`` / ``'fp32'``: how a precision is printed."""
    dtype = amp_dtype(amp)
    return next((k for k, v in AMP_DTYPES.items() if v == dtype), 'fp32')
