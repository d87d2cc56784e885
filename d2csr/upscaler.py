"""The Python API: load a trained D2C-SR model once, super-resolve image arrays with it.

    import d2csr

    upscaler = d2csr.Upscaler('experiments/D2C_x4/models/net_g_latest.pth')  # or the authors' MegEngine pickle
    sr = upscaler.enhance(img)  # (H, W[, C]) uint8 / uint16 / float array -> the same kind, s times the size

:class:`Upscaler` is what ``inference/inference_d2csr.py`` runs for every image (Real-ESRGAN's ``RealESRGANer``
plays the same part there): the model loaded by :func:`d2csr.loading.load_network` (a BasicSR checkpoint, its
``params_ema`` preferred, or the authors' pickle; ``network_g`` from ``options``, else from the options file
BasicSR saved beside a training checkpoint, else inferred from the weights) in eval mode on the chosen device,
and the command line's rules for each image:

- kinds: gray, colour and colour + alpha, 8-bit, 16-bit or float in ``[0, 1]``, out in the same kind (alpha
  upscaled bicubically; :mod:`d2csr.utils.image_io`);
- precision: on a GPU fp16 under ``torch.autocast`` unless ``amp=None``; on the CPU fp32 unless ``amp='bf16'``;
  the weights stay fp32;
- memory: ``memory='exact'`` runs :func:`d2csr.tiling.tiled_forward` (equal to the untiled network up to float
  rounding; ``tile`` LR pixels per HR tile, ``tile=0``: the plain forward, no tiling); ``'bounded'`` runs
  :func:`d2csr.tiling.bounded_forward` (memory independent of the image's size beyond the output, approximate).
  Before any work the call's peak memory is predicted (:mod:`d2csr.memory`) and an image that would not fit is
  refused with :class:`~d2csr.memory.MemoryRefused` (what it needs, what is free, the largest size that fits); an
  allocation that fails anyway ends in :class:`~d2csr.memory.OutOfMemory`, with what to do, not a traceback.

Constructing an :class:`Upscaler` sets one process-wide allocator option on glibc (large buffers are returned to
the system when freed: :func:`d2csr.memory.release_large_allocations`); nothing else outside the object changes.
"""
import os.path as osp

import torch

from d2csr.loading import load_model, load_network
from d2csr.memory import (MemoryRefused, OutOfMemory, bytes_per_pixel, check_fits, predict_memory,
                          release_large_allocations, surely_fits)
from d2csr.tiling import BOUNDED_TILE, bounded_forward, tiled_forward
from d2csr.utils import resolve_device
from d2csr.utils.image_io import array_from_rgb, image_from_array, image_to_tensor, tensor_to_rgb
from d2csr.utils.precision import amp_dtype, amp_name, autocast

MEMORY_MODES = ('exact', 'bounded')


def default_amp(device, amp='auto'):
    """The precision a call runs in: ``'auto'`` is fp16 on a GPU and fp32 (``None``) on the CPU
    (Real-ESRGAN's convention); otherwise ``amp`` as given (``None`` / ``'fp32'``, ``'bf16'``, ``'fp16'``)."""
    if amp == 'auto':
        return 'fp16' if torch.device(device).type == 'cuda' else None
    return amp_name(amp) if amp_dtype(amp, 'amp') is not None else None


class Upscaler:
    """A trained D2C-SR model, ready to super-resolve images (see the module docstring).

    Args:
        model_path (str): a BasicSR checkpoint (``net_g_*.pth``) or the authors' MegEngine pickle.
        options (str or dict, optional): an options file with ``network_g`` (or the ``network_g`` dict itself);
            default: the file BasicSR saved beside a training checkpoint, else inferred from the weights.
        device (str or torch.device): ``'auto'`` (default), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
        param_key (str, optional): checkpoint entry; default ``params_ema`` when present, else ``params``.
        scale (int, optional): the expected scale (checked against the model).
        tile (int): LR pixels per tile of the exact mode's HR half; ``0``: the plain forward, no tiling.
        tile_pad (int, optional): context per tile in LR pixels (default and minimum: the exact radius).
        memory (str): ``'exact'`` (default) or ``'bounded'`` (approximate; see :func:`~d2csr.tiling.bounded_forward`).
        bounded_tile (int): LR pixels per tile of the bounded mode. Default: 512.
        passes (int): passes of the bounded mode (statistics passes + 1). Default: 2.
        amp (str): ``'auto'`` (default: fp16 on a GPU, fp32 on the CPU), ``None`` / ``'fp32'``, ``'bf16'``,
            ``'fp16'``.
        check_memory (bool): predict each call's peak memory and refuse what would not fit. Default: True.

    Attributes: ``net`` (the :class:`~d2csr.archs.D2CSR`, eval mode, on ``device``), ``scale``, ``device``,
    ``amp``, ``network_options`` (its ``network_g``) and ``options_source`` (where they came from).
    """

    def __init__(self, model_path, options=None, device='auto', param_key=None, scale=None, tile=128, tile_pad=None,
                 memory='exact', bounded_tile=BOUNDED_TILE, passes=2, amp='auto', check_memory=True):
        if memory not in MEMORY_MODES:
            raise ValueError(f'memory must be one of {MEMORY_MODES}, got {memory!r}')
        self.device = resolve_device(device)
        self.amp = default_amp(self.device, amp)
        if isinstance(options, dict):
            net, opts = load_model(model_path, dict(options, type=options.get('type', 'D2CSR')), scale, param_key)
            source = 'given'
        else:
            net, opts, source = load_network(model_path, options, scale, param_key)
        if net.head.in_channels != 3:
            raise ValueError(f'the model takes {net.head.in_channels} input channels; images give RGB (3)')
        self.net = net.eval().to(self.device)
        self.network_options, self.options_source = opts, source
        self.model_path = model_path
        self.tile, self.tile_pad, self.memory = tile, tile_pad, memory
        self.bounded_tile, self.passes = bounded_tile, passes
        self.check_memory = check_memory
        release_large_allocations()  # freed band / tile buffers go back to the system (glibc; see d2csr.memory)
        self._per_pixel = {}  # bytes per LR pixel of the plain forward / the LR half in one piece (quick checks)

    @property
    def scale(self):
        return self.net.upscale

    @property
    def mode(self):
        """The memory mode a call runs: ``'exact'``, ``'bounded'`` or ``'whole'`` (``tile=0``: no tiling)."""
        if self.memory == 'bounded':
            return 'bounded'
        return 'whole' if self.tile <= 0 else 'exact'

    def describe(self):
        """One line: the model, where its options came from, device and precision (the script prints it)."""
        from d2csr.loading import describe_param_key

        opts = ', '.join(f'{k}={v}' for k, v in self.network_options.items() if k != 'type')
        amp = amp_name(self.amp)
        return (f'D2CSR x{self.scale} from {self.model_path}{describe_param_key(self.net)}, network_g '
                f'{self.options_source}: {opts}\ndevice {self.device}, precision {amp}'
                + (' (torch.autocast, weights fp32)' if self.amp else '') + f', memory mode {self.mode}')

    # ----------------------------------------------------------------------------------------------
    def predict(self, height, width, channels=3, itemsize=1, return_branches=False):
        """:class:`~d2csr.memory.Prediction` of one call on an LR image of ``height`` x ``width`` pixels
        (``channels`` and ``itemsize``: the decoded file's, for what the caller holds of it)."""
        return predict_memory(self.net, height, width, self.device, mode=self.mode, tile=self.tile,
                              tile_pad=self.tile_pad, amp=self.amp, channels=channels, itemsize=itemsize,
                              return_branches=return_branches, bounded_tile=self.bounded_tile, passes=self.passes)

    def _surely_fits(self, kind, height, width):
        """The quick check (:func:`~d2csr.memory.surely_fits`) for the plain forward (``'whole'``) or the exact
        mode with the LR half in one piece (``'whole-lr'``)."""
        if kind not in self._per_pixel:
            plan = dict(mode='exact', lr='whole', tile=self.tile, tile_pad=self.tile_pad) if kind == 'whole-lr' else {}
            self._per_pixel[kind] = bytes_per_pixel(self.net, self.amp, **plan)
        return surely_fits(self._per_pixel[kind], height, width, self.scale, self.device)

    def lr_half(self, height, width):
        """How the exact mode runs the LR half of an image: in one piece (``'whole'``, about 1.3x faster on the
        CPU) when that surely fits in the memory available, else in bands (``'banded'``, the least memory)."""
        if self.mode == 'exact' and not self._surely_fits('whole-lr', height, width):
            return 'banded'
        return 'whole'

    def check(self, height, width, channels=3, itemsize=1, return_branches=False, what='this image', lr=None):
        """Raise :class:`~d2csr.memory.MemoryRefused` when the call would not fit in the memory available now;
        returns the :class:`~d2csr.memory.Prediction` (``None`` when a quick bound shows it fits). ``lr``: the
        exact mode's LR half as the call will run it (default: :meth:`lr_half`)."""
        if self.mode == 'exact' and (lr or self.lr_half(height, width)) == 'whole':
            return None
        if self.mode != 'exact' and self._surely_fits('whole', height, width):
            return None
        prediction = self.predict(height, width, channels, itemsize, return_branches)

        def device_need(h, w):
            return self.predict(h, w, channels, itemsize, return_branches).device_bytes

        check_fits(prediction, self.device, height, width, device_need, what, self._hints())
        return prediction

    def _hints(self):
        hints = []
        if self.mode != 'bounded':
            hints.append("memory='bounded' (--memory bounded: memory independent of the image size, approximate; "
                         'see the inference docs for its measured deviation)')
        if self.mode == 'whole':
            hints.append('tiling (--tile 128)')
        if self.device.type == 'cuda':
            hints.append('the CPU (--device cpu), usually with more memory' + ('' if self.amp else ', or fp16'))
        return (' Options: ' + '; '.join(hints) + '.') if hints else ''

    # ----------------------------------------------------------------------------------------------
    def forward(self, x, return_branches=False, progress=None, lr=None):
        """Super-resolve ``x`` ``(1, 3, h, w)`` float in ``[0, 1]`` (any device): a
        :class:`~d2csr.tiling.TiledOutput` on the CPU (``sr`` ``(1, 3, s*h, s*w)`` float32; ``branches`` with
        ``return_branches``). ``lr``: the exact mode's LR half, ``'whole'`` or ``'banded'`` (default:
        :meth:`lr_half`). No memory check here (see :meth:`check`); a failed allocation raises
        :class:`~d2csr.memory.OutOfMemory`."""
        lr = lr or self.lr_half(*x.shape[-2:])
        x = x.to(self.device)
        try:
            with torch.no_grad(), autocast(self.device, self.amp):
                if self.mode == 'bounded':
                    return bounded_forward(self.net, x, self.bounded_tile, self.tile_pad, self.passes, self.tile,
                                           return_branches=return_branches, output_device='cpu',
                                           progress=progress)
                return tiled_forward(self.net, x, self.tile, self.tile_pad, return_branches=return_branches,
                                     output_device='cpu', progress=progress,
                                     lr=lr)
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            del err
            if self.device.type == 'cuda':
                torch.cuda.empty_cache()
            raise OutOfMemory(f'ran out of memory on {self.device} upscaling a {x.shape[-1]}x{x.shape[-2]} image '
                              '(other programs may have taken memory since it was checked).'
                              + self._hints()) from None

    def upscale_image(self, image, return_branches=False, progress=None, what='this image'):
        """An :class:`~d2csr.utils.image_io.Image` -> ``(sr, branches)``, ``(s*H, s*W, 3)`` float32 RGB arrays in
        ``[0, 1]`` (``branches`` a list with ``return_branches``, else ``None``), after the memory check."""
        h, w = image.rgb.shape[:2]
        lr = self.lr_half(h, w)  # decided once: the check and the run agree
        if self.check_memory:
            channels = {'gray': 1, 'rgb': 3, 'rgba': 4}[image.mode]
            self.check(h, w, channels, image.dtype.itemsize, return_branches, what, lr)
        out = self.forward(image_to_tensor(image), return_branches, progress, lr)
        branches = [tensor_to_rgb(b) for b in out.branches] if return_branches else None
        return tensor_to_rgb(out.sr), branches

    def enhance(self, img, order='RGB', return_branches=False):
        """Super-resolve an image array: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``, ``uint8``,
        ``uint16`` or float in ``[0, 1]``, colour channels in ``order`` (``'RGB'``, or ``'BGR'`` for OpenCV's
        arrays). Returns an array of the same kind (channels, sample type, order), ``s`` times the size; with
        ``return_branches`` also the list of the ``P`` divergent branches in that kind."""
        image = image_from_array(img, order)
        sr, branches = self.upscale_image(image, return_branches)
        result = array_from_rgb(sr, image, order)
        if img.ndim == 3 and img.shape[2] == 1:
            result = result[..., None]
        if not return_branches:
            return result
        return result, [array_from_rgb(b, image, order) for b in branches]

    def __repr__(self):
        return (f'Upscaler(x{self.scale}, {osp.basename(str(self.model_path))!r}, device={str(self.device)!r}, '
                f'amp={self.amp!r}, memory={self.memory!r}, tile={self.tile})')


def is_out_of_memory(err):
    """Whether ``err`` is a failed allocation (CPU or GPU), not another error."""
    if isinstance(err, MemoryError) or type(err).__name__ == 'OutOfMemoryError':
        return True
    text = str(err).lower()
    return any(s in text for s in ('out of memory', "can't allocate memory", 'not enough memory',
                                   'failed to allocate'))


__all__ = ['Upscaler', 'MemoryRefused', 'OutOfMemory', 'default_amp']
