"""Peak memory of inference, predicted before any work, and the memory that is available.

:func:`predict_memory` runs the very inference call that is about to happen as a plan on the ``meta`` device
(:func:`d2csr.tiling.tiled_forward` / :func:`~d2csr.tiling.bounded_forward` with ``plan=True``: the network's
copy and the input carry shapes, no data; one band and one tile of each pass) under :class:`LiveBytes`, which
follows every tensor the run creates and frees and records the peak of what is alive at once. That peak is the
run's tensor memory for this image size, mode and precision, whatever the backbone; the estimate adds what the
caller holds for the image itself (:func:`image_bytes`) and a margin for what tensors do not show (the
allocator's and oneDNN's / cuDNN's own buffers; measured in ``benchmarks/bench_inference.py``).

:func:`available_memory` is what the process may still take: on the CPU the smallest of the system's
``MemAvailable``, the room under a cgroup (container) limit and the room under ``ulimit -v``; on a GPU what the
driver reports free plus what PyTorch's cache holds unused. :func:`check_fits` compares the two and, when the
prediction exceeds what is available, raises :class:`MemoryRefused` with the prediction, what is free and the
largest image of the same shape that fits.
"""
import math
import os
import weakref
from collections import namedtuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from d2csr.banded import meta_copy
from d2csr.tiling import BOUNDED_TILE, bounded_forward, check_pad, tiled_run
from d2csr.utils.precision import amp_dtype

MODES = ('exact', 'bounded', 'whole')  # exact: banded LR half + HR tiles; whole: the plain forward (no tiling)
MARGIN = 1.10  # measured resident growth / planned tensor bytes: 1.00-1.01 at 1 LR megapixel (bench_inference.py)
OVERHEAD = 64 * 2**20  # per call: the allocator's slack, oneDNN scratchpads, Python objects

Prediction = namedtuple('Prediction', ['device_bytes', 'host_bytes', 'steps'])
Prediction.__doc__ = """Predicted peak bytes on the compute device and, when the outputs are assembled elsewhere
(a GPU run), on the host; ``steps``: bands and tiles of the run (for progress bars)."""


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive at once, followed through every ATen call inside the ``with`` block.

    Each storage an op returns is counted once, from its first appearance until the last tensor on it is gone
    (views and in-place results share their storage's count). Storages of ``external`` tensors (the input, the
    weights) are never counted. ``peak``: the most bytes alive at once.
    """

    def __init__(self, external=()):
        super().__init__()
        self.live = self.peak = 0
        self._refs = {}
        self._external = {t.untyped_storage()._cdata for t in external}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, tensor):
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._external:
            return
        entry = self._refs.get(key)
        if entry is None:
            entry = self._refs[key] = [0, storage.nbytes()]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key):
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]


def image_bytes(height, width, scale, channels=3, itemsize=1):
    """What the caller holds for one image besides the network's run: the decoded file, its float RGB copy
    and the input tensor; then the output's conversion back to the file's kind (one float and one integer
    copy of the result, done in row strips by :func:`d2csr.utils.image_io.array_from_rgb`) and its encoding."""
    lr, hr = height * width, height * width * scale * scale
    return lr * (channels * itemsize + 12 + 12) + hr * channels * (itemsize * 2)


def plan_run(net, shape, mode='exact', tile=128, tile_pad=None, amp=None, return_branches=False,
             return_weights=False, bounded_tile=BOUNDED_TILE, passes=2, band_rows=None, plan_outputs=True, lr='banded'):
    """Peak tensor bytes and steps of one inference call on an input of ``shape`` ``(N, C, h, w)``, from a plan
    on the ``meta`` device. ``mode``: ``'exact'`` (:func:`~d2csr.tiling.tiled_forward` with ``lr``, ``band_rows``),
    ``'bounded'`` or ``'whole'`` (the plain forward); ``amp``: ``None``, ``'bf16'`` or ``'fp16'`` (or the dtype;
    the maps then take 2 bytes a value); ``plan_outputs=False``: without the output-side buffers, as for a GPU
    run whose outputs go to the host."""
    meta = meta_copy(net)
    if amp_dtype(amp) is not None:
        meta = meta.to(amp_dtype(amp))
    x = torch.empty(shape, dtype=next(meta.parameters()).dtype, device='meta')
    steps = 0
    with torch.no_grad(), LiveBytes(external=[x, *meta.parameters(), *meta.buffers()]) as live:
        if mode == 'exact':
            _, steps = tiled_run(meta, x, tile, check_pad(meta, tile_pad), return_branches, return_weights,
                                 x.device, lr, band_rows, plan=True, plan_outputs=plan_outputs,
                                 keep_predictions=True if not plan_outputs else None)
        elif mode == 'bounded':
            bounded_forward(meta, x, bounded_tile, tile_pad, passes, tile, return_branches, return_weights,
                            plan=True, plan_outputs=plan_outputs)
        elif mode == 'whole':
            meta(x)
        else:
            raise ValueError(f'memory mode must be one of {MODES}, got {mode!r}')
    return live.peak, steps


def predict_memory(net, height, width, device='cpu', mode='exact', tile=128, tile_pad=None, amp=None,
                   channels=3, itemsize=1, return_branches=False, bounded_tile=BOUNDED_TILE, passes=2):
    """:class:`Prediction` of one image's inference (``height`` x ``width`` LR pixels; ``channels`` and
    ``itemsize`` of the decoded file). On a GPU the outputs are assembled on the host (as the inference script
    and :class:`d2csr.Upscaler` do); the device figure is then the plan without them."""
    device = torch.device(device)
    shape = (1, net.head.in_channels, height, width)
    io = image_bytes(height, width, net.upscale, channels, itemsize)
    kwargs = dict(mode=mode, tile=tile, tile_pad=tile_pad, amp=amp, return_branches=return_branches,
                  bounded_tile=bounded_tile, passes=passes)
    if device.type == 'cpu':
        peak, steps = plan_run(net, shape, **kwargs)
        return Prediction(int(peak * MARGIN + io + OVERHEAD), 0, steps)
    peak, steps = plan_run(net, shape, plan_outputs=False, **kwargs)
    s2 = net.upscale**2
    outputs = height * width * s2 * 4 * (3 + (3 * net.num_branches if return_branches or mode == 'exact' else 0))
    return Prediction(int(peak * MARGIN + OVERHEAD), int(outputs + io + OVERHEAD), steps)


def release_large_allocations(threshold=4 * 2**20):
    """On glibc, serve allocations of ``threshold`` bytes or more from their own memory mappings, returned to the
    system as soon as they are freed (``mallopt(M_MMAP_THRESHOLD)``; process-wide, once is enough; no-op
    elsewhere). glibc's default raises that threshold up to 32 MB as large buffers are freed, so the band and tile
    buffers of :func:`d2csr.tiling.tiled_forward` (tens of MB, allocated and freed over and over) come from the
    heap, whose fragments are kept: measured, resident memory then grew 1.5x the live tensors instead of 1.1x.
    The inference script and :class:`d2csr.Upscaler` call it. Returns whether it took effect."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library('c')
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------------------------
def _meminfo_available():
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room():
    """Room under a cgroup v2 memory limit (containers), or ``None``."""
    try:
        with open('/sys/fs/cgroup/memory.max') as f:
            limit = f.read().strip()
        if limit == 'max':
            return None
        with open('/sys/fs/cgroup/memory.current') as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError):
        return None


def _address_space_room():
    """Room under ``ulimit -v`` (``RLIMIT_AS``), or ``None``."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmSize:'):
                    return max(soft - int(line.split()[1]) * 1024, 0)
    except (ImportError, OSError, ValueError):
        pass
    return None


def available_memory(device='cpu'):
    """Bytes this process may still allocate on ``device`` (``None`` when it cannot be told)."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != 'cpu':
        return None
    rooms = [r for r in (_meminfo_available(), _cgroup_room(), _address_space_room()) if r is not None]
    return min(rooms) if rooms else None


class MemoryRefused(MemoryError):
    """An image whose predicted peak memory exceeds what is available; the message says what to do."""


class OutOfMemory(MemoryError):
    """An allocation failed during inference anyway (other programs took the memory); the message says what
    to do."""


QUICK_SIDE = 256  # the plan behind the quick check: a 256 x 256 image


def bytes_per_pixel(net, amp=None, **kwargs):
    """Tensor bytes per LR pixel of one call (:func:`plan_run` ``kwargs``; default: the plain untiled forward)
    planned at 256 x 256: an upper bound of that call's growth with the image (its fixed part, tile buffers, is
    spread over the pixels), for a quick check that spares most images a plan of their own."""
    kwargs.setdefault('mode', 'whole')
    peak, _ = plan_run(net, (1, net.head.in_channels, QUICK_SIDE, QUICK_SIDE), amp=amp, **kwargs)
    return peak / QUICK_SIDE**2


def surely_fits(per_pixel, height, width, scale, device='cpu'):
    """Whether an image surely fits without planning it: ``per_pixel`` (:func:`bytes_per_pixel`) times its size
    (at least the 256 x 256 of that plan), with half of what is available to spare."""
    room = available_memory(device)
    if room is None:
        return True
    need = per_pixel * max(height * width, QUICK_SIDE**2) * MARGIN + image_bytes(height, width, scale, 4, 2) + OVERHEAD
    return need <= room / 2


def _gb(n):
    return f'{n / 2**30:.2f} GiB'


def largest_fitting(predict, height, width, room):
    """The largest ``(h, w)`` of the image's aspect ratio whose prediction ``predict(h, w)`` fits ``room``
    (``None`` when not even a tiny one fits). The need is nearly affine in the area: solved from two plans,
    then checked (shrunk by 5% steps until it fits)."""
    def need(k):
        return predict(max(1, round(height * k)), max(1, round(width * k)))

    small, full = need(0.25), need(1.0)
    area1, area0 = height * width, height * width / 16
    slope = (full - small) / max(area1 - area0, 1)
    if slope <= 0:
        return None
    k = math.sqrt(max((room - (small - slope * area0)) / slope, 0) / area1)
    while k > 0.01:
        if need(k) <= room:
            return max(1, round(height * k)), max(1, round(width * k))
        k *= 0.95
    return None


def check_fits(prediction, device, height, width, predict=None, what='this image', hints=''):
    """Raise :class:`MemoryRefused` when ``prediction`` (:class:`Prediction`) exceeds what is available on
    the device (and on the host for a GPU run). ``predict(h, w)`` -> device bytes, for the largest size that fits."""
    device = torch.device(device)
    checks = [(prediction.device_bytes, available_memory(device), device)]
    if device.type != 'cpu':
        checks.append((prediction.host_bytes, available_memory('cpu'), torch.device('cpu')))
    for need, room, where in checks:
        if room is None or need <= room:
            continue
        fits = largest_fitting(predict, height, width, room) if predict is not None and where == device else None
        size = (f'the largest image of this shape that fits is about {fits[1]}x{fits[0]} LR pixels'
                if fits else 'not even a small image of this shape fits')
        raise MemoryRefused(f'{what} ({width}x{height} LR pixels) needs about {_gb(need)} of memory on {where}, '
                            f'but only {_gb(room)} is available there: {size}.{hints}')
