"""Reading and writing real images for inference, keeping each image's kind.

8-bit and 16-bit images, colour, grayscale and colour + alpha: :func:`read_image` gives the colour part as
an RGB float32 array in ``[0, 1]`` (grayscale replicated to three channels) plus what is needed to write the
result in the same kind with :func:`write_image` (grayscale converted back, the alpha channel upscaled
bicubically, same bit depth). A file is decoded whole or refused (a JPEG cut short is not returned with a grey
band), turned upright by its EXIF orientation as image viewers show it, and written whole or not at all
(:func:`d2csr.utils.atomic.atomic_write`). :func:`image_from_array` / :func:`array_from_rgb` do the same for
arrays in memory (the Python API, :class:`d2csr.Upscaler`).
"""
import os
import os.path as osp
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch

from .atomic import write_bytes_atomic

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
MAX_PIXELS = 1 << 30  # OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS); larger headers are refused before decoding
_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
STRIP_PIXELS = 1 << 22  # output pixels converted at a time (a float copy of a strip, not of the whole image)

# EXIF orientation (tag 0x0112) -> what turns the stored pixels upright, and how it is described
ORIENTATIONS = {
    2: (lambda a: a[:, ::-1], 'mirrored left-right'),
    3: (lambda a: a[::-1, ::-1], 'rotated 180 degrees'),
    4: (lambda a: a[::-1], 'mirrored top-bottom'),
    5: (lambda a: a.swapaxes(0, 1), 'transposed'),
    6: (lambda a: np.rot90(a, -1), 'rotated 90 degrees clockwise'),
    7: (lambda a: a.swapaxes(0, 1)[::-1, ::-1], 'transversed'),
    8: (lambda a: np.rot90(a, 1), 'rotated 90 degrees counter-clockwise'),
}


class UnreadableImage(Exception):
    """An image file cannot be read (or is of a kind inference does not handle)."""


@dataclass
class Image:
    """An image read by :func:`read_image`.

    Attributes:
        rgb: ``(H, W, 3)`` float32 RGB in ``[0, 1]``.
        dtype: the file's sample type (``uint8`` or ``uint16``).
        mode: ``'gray'``, ``'rgb'`` or ``'rgba'``.
        alpha: ``(H, W)`` float32 in ``[0, 1]`` for ``'rgba'``, else ``None``.
        note: what was done to the file's pixels on reading (e.g. its EXIF orientation applied), or ``''``.
    """
    rgb: np.ndarray
    dtype: np.dtype
    mode: str
    alpha: Optional[np.ndarray] = None
    note: str = ''


def image_names(folder):
    """Names in ``folder`` that look like images (extension in :data:`IMG_EXTENSIONS`, not hidden), sorted.
    Nothing is opened: a folder or a broken link named like an image is listed too."""
    return sorted(n for n in os.listdir(folder) if not n.startswith('.') and n.lower().endswith(IMG_EXTENSIONS))


def list_images(path):
    """``path`` itself if it is a file, else the image files in the folder ``path`` (:func:`image_names` that
    are files; sorted, not recursive)."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'input {path!r} is neither an image file nor a folder')
    return [osp.join(path, name) for name in image_names(path) if osp.isfile(osp.join(path, name))]


def header_size(path):
    """``(h, w)`` from the file's header (Pillow, nothing decoded), or ``None`` when Pillow does not know the
    format. Raises :class:`UnreadableImage` for a header claiming more than :data:`MAX_PIXELS` pixels."""
    import warnings

    from PIL import Image as PILImage, UnidentifiedImageError

    limit = PILImage.MAX_IMAGE_PIXELS
    try:  # Pillow's own bomb check would hide the size; MAX_PIXELS is checked below instead
        PILImage.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', PILImage.DecompressionBombWarning)
            with PILImage.open(path) as img:
                w, h = img.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, PILImage.DecompressionBombError):
        return None
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit
    if w * h > MAX_PIXELS:
        raise UnreadableImage(f'its header claims a huge image ({w}x{h} pixels, more than the {MAX_PIXELS:,} that '
                              'can be decoded); refused before decoding')
    return h, w


def _is_truncated_jpeg(path):
    """A JPEG whose header is intact but whose data is cut short (OpenCV fills the rest with grey)."""
    from PIL import Image as PILImage

    with open(path, 'rb') as f:
        if f.read(2) != b'\xff\xd8':
            return False
    try:
        with PILImage.open(path) as img:
            img.load()
    except OSError:
        return True
    return False


def decode_image(path, flags=cv2.IMREAD_UNCHANGED, strict=False):
    """``cv2.imread(path, flags)`` that never raises anything but :class:`UnreadableImage` (with the reason):
    the header is checked first (a huge claimed size is refused before any memory is taken), decoder errors
    (``cv2.error``) become a skip, and with ``strict`` a JPEG whose data is cut short is refused instead of
    being returned with a grey band."""
    header_size(path)
    try:
        img = cv2.imread(str(path), flags)
    except cv2.error as err:
        raise UnreadableImage(f'the decoder failed ({str(err).strip().splitlines()[-1][:160]})') from None
    if img is None:
        raise UnreadableImage('not a readable image (empty, truncated or of an unknown format)')
    if strict and _is_truncated_jpeg(path):
        raise UnreadableImage('a truncated JPEG (its data ends early; decoded, part of it would be grey)')
    return img


def exif_orientation(path):
    """The EXIF orientation (1-8) a file records, or 1 (none, or no EXIF, or not readable by Pillow)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as img:
            value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  (no EXIF to speak of: the pixels are taken as stored)
        return 1
    return value if value in ORIENTATIONS else 1


def read_image(path):
    """Read ``path`` (8/16-bit; gray, colour or colour + alpha) upright as viewers show it (EXIF orientation
    applied, said in ``note``). Raises :class:`UnreadableImage`, also for a JPEG whose data is cut short."""
    img = decode_image(path, cv2.IMREAD_UNCHANGED, strict=True)
    orientation = exif_orientation(path)
    if orientation != 1:
        turn, how = ORIENTATIONS[orientation]
        img = np.ascontiguousarray(turn(img))
    image = _image(img, 'BGR')
    if orientation != 1:
        image.note = f'EXIF orientation {orientation} applied ({how}, as image viewers show it)'
    return image


def _image(img, order):
    """:class:`Image` of a decoded array (``order``: ``'RGB'`` or ``'BGR'``, the colour channels' order)."""
    dtype = img.dtype
    if dtype not in _MAX_VALUE:
        if dtype.kind != 'f':
            raise UnreadableImage(f'samples of type {dtype} are not supported (8-bit or 16-bit integers, or floats '
                                  'in [0, 1])')
        dtype = np.dtype(np.float32)
    img_f = img.astype(np.float32) / _MAX_VALUE[dtype]
    if dtype.kind == 'f':
        img_f = np.clip(img_f, 0, 1)
    if img.ndim == 2 or img.shape[2] == 1:
        gray = img_f.reshape(img.shape[0], img.shape[1])
        return Image(np.repeat(gray[..., None], 3, axis=2), dtype, 'gray')
    if img.shape[2] not in (3, 4):
        raise UnreadableImage(f'{img.shape[2]} channels are not supported (1, 3 or 4)')
    colour = img_f[..., 2::-1] if order == 'BGR' else img_f[..., :3]
    alpha = img_f[..., 3] if img.shape[2] == 4 else None
    return Image(np.ascontiguousarray(colour), dtype, 'rgba' if alpha is not None else 'rgb',
                 None if alpha is None else np.ascontiguousarray(alpha))


def image_from_array(array, order='RGB'):
    """:class:`Image` of an image array in memory: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``,
    ``uint8``, ``uint16`` or float in ``[0, 1]``; ``order``: ``'RGB'`` (numpy, Pillow, scikit-image, matplotlib)
    or ``'BGR'`` (OpenCV) for the colour channels. Raises ``ValueError`` for anything else."""
    if order not in ('RGB', 'BGR'):
        raise ValueError(f"order must be 'RGB' or 'BGR', got {order!r}")
    array = np.asarray(array)
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1 or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f'an image array is (H, W) or (H, W, C) with C = 1, 3 or 4; got shape {array.shape}')
    if array.dtype.kind == 'f' and not np.isfinite(array).all():
        raise ValueError('the image array holds NaN or infinite values')
    try:
        return _image(array, order)
    except UnreadableImage as err:
        raise ValueError(str(err)) from None


def image_to_tensor(image):
    """:class:`Image` -> ``(1, 3, H, W)`` float32 tensor."""
    return torch.from_numpy(image.rgb.transpose(2, 0, 1).copy()).unsqueeze(0)


def tensor_to_rgb(tensor):
    """``(1, 3, H, W)`` or ``(3, H, W)`` tensor -> ``(H, W, 3)`` float32 RGB array clipped to ``[0, 1]`` (a view
    of ``tensor`` when it is a float32 CPU tensor: clipped in place, no copy of a large output)."""
    arr = tensor.detach().float().cpu().squeeze(0).clamp_(0, 1).numpy()
    return arr.transpose(1, 2, 0)


def array_from_rgb(rgb, like, order='RGB', dtype=None):
    """``rgb`` (``(sH, sW, 3)`` float in ``[0, 1]``) as an array of ``like``'s kind (an :class:`Image`):
    grayscale as its BT.601 luma ``(sH, sW)``, colour + alpha with ``like``'s alpha upscaled bicubically,
    ``like``'s sample type (or ``dtype``), channels in ``order``. Converted in row strips, so a large result
    needs one output array and a strip of floats."""
    dtype = np.dtype(dtype or like.dtype)
    height, width = rgb.shape[:2]
    channels = {'gray': 1, 'rgb': 3, 'rgba': 4}[like.mode]
    out = np.empty((height, width) if channels == 1 else (height, width, channels), dtype)
    alpha = None
    if like.mode == 'rgba':
        alpha = cv2.resize(like.alpha, (width, height), interpolation=cv2.INTER_CUBIC)
    step = max(1, STRIP_PIXELS // max(width, 1))
    for r0 in range(0, height, step):
        r1 = min(r0 + step, height)
        strip = np.ascontiguousarray(rgb[r0:r1], dtype=np.float32)
        if like.mode == 'gray':
            strip = cv2.cvtColor(strip, cv2.COLOR_RGB2GRAY)
        else:
            if order == 'BGR':
                strip = np.ascontiguousarray(strip[..., ::-1])
            if alpha is not None:
                strip = np.concatenate([strip, alpha[r0:r1, :, None]], axis=2)
        np.clip(strip, 0, 1, out=strip)
        if dtype.kind == 'f':
            out[r0:r1] = strip
        else:
            out[r0:r1] = np.rint(strip * _MAX_VALUE[dtype])
    return out


def write_image(path, rgb, like):
    """Write ``rgb`` (``(sH, sW, 3)`` float in ``[0, 1]``) to ``path`` in the kind of ``like`` (an :class:`Image`).

    Grayscale inputs are written as grayscale (BT.601 luma of the RGB result), RGBA inputs get their alpha
    channel upscaled bicubically to the output size, and the bit depth is the input's (JPEG and other 8-bit-only
    formats are written with 8 bits). The file appears whole or not at all (encoded in memory, then written with
    :func:`~d2csr.utils.atomic.write_bytes_atomic`). Raises ``OSError`` when the file cannot be written.
    """
    ext = osp.splitext(path)[1].lower()
    dtype = like.dtype if like.dtype != np.float32 else np.dtype(np.uint16)
    if ext in ('.jpg', '.jpeg', '.webp', '.bmp'):
        dtype = np.dtype(np.uint8)
    out = array_from_rgb(rgb, like, 'BGR', dtype)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if dtype == np.uint8 and ext in ('.jpg', '.jpeg') else []
    write_encoded(path, out, params)


def write_encoded(path, array, params=()):
    """Encode ``array`` (an OpenCV image: BGR / BGRA / gray) in the format of ``path``'s extension and write it
    whole or not at all (:func:`~d2csr.utils.atomic.write_bytes_atomic`). Raises ``OSError`` naming the file when
    it cannot be encoded or written."""
    ext = osp.splitext(path)[1].lower()
    try:
        ok, buf = cv2.imencode(ext, array, list(params))
    except cv2.error:
        ok = False
    if not ok:
        raise OSError(f'could not encode {path!r} as {ext or "(no extension)"} (check the extension)')
    try:
        write_bytes_atomic(path, buf)
    except OSError as err:
        raise OSError(f'could not write {path!r} ({err.strerror or err}); nothing was left there') from None
