"""Reading and writing real images for inference, keeping each image's kind.

8-bit and 16-bit images, colour, grayscale and colour + alpha: :func:`read_image` gives the colour part as
an RGB float32 array in ``[0, 1]`` (grayscale replicated to three channels) plus what is needed to write the
result in the same kind with :func:`write_image` (grayscale converted back, the alpha channel upscaled
bicubically, same bit depth).
"""
import os
import os.path as osp
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
MAX_PIXELS = 1 << 30  # OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS); larger headers are refused before decoding
_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


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
    """
    rgb: np.ndarray
    dtype: np.dtype
    mode: str
    alpha: Optional[np.ndarray] = None


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


def read_image(path):
    """Read ``path`` (8/16-bit; gray, colour or colour + alpha). Raises :class:`UnreadableImage`."""
    img = decode_image(path, cv2.IMREAD_UNCHANGED)
    if img.dtype not in _MAX_VALUE:
        raise UnreadableImage(f'samples of type {img.dtype} are not supported (8-bit or 16-bit images only)')
    scale = _MAX_VALUE[img.dtype]
    img_f = img.astype(np.float32) / scale
    if img.ndim == 2 or img.shape[2] == 1:
        gray = img_f.reshape(img.shape[0], img.shape[1])
        return Image(np.repeat(gray[..., None], 3, axis=2), img.dtype, 'gray')
    if img.shape[2] == 3:
        return Image(np.ascontiguousarray(img_f[..., ::-1]), img.dtype, 'rgb')
    if img.shape[2] == 4:
        return Image(np.ascontiguousarray(img_f[..., 2::-1]), img.dtype, 'rgba', img_f[..., 3])
    raise UnreadableImage(f'{img.shape[2]} channels are not supported (1, 3 or 4)')


def image_to_tensor(image):
    """:class:`Image` -> ``(1, 3, H, W)`` float32 tensor."""
    return torch.from_numpy(image.rgb.transpose(2, 0, 1).copy()).unsqueeze(0)


def tensor_to_rgb(tensor):
    """``(1, 3, H, W)`` or ``(3, H, W)`` tensor -> ``(H, W, 3)`` float32 RGB array clipped to ``[0, 1]``."""
    arr = tensor.detach().float().cpu().squeeze(0).clamp_(0, 1).numpy()
    return arr.transpose(1, 2, 0)


def write_image(path, rgb, like):
    """Write ``rgb`` (``(sH, sW, 3)`` float in ``[0, 1]``) to ``path`` in the kind of ``like`` (an :class:`Image`).

    Grayscale inputs are written as grayscale (BT.601 luma of the RGB result), RGBA inputs get their alpha
    channel upscaled bicubically to the output size, and the bit depth is the input's (JPEG and other 8-bit-only
    formats are written with 8 bits). Raises ``OSError`` when the file cannot be written.
    """
    dtype = like.dtype
    if osp.splitext(path)[1].lower() in ('.jpg', '.jpeg', '.webp', '.bmp'):
        dtype = np.dtype(np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32)
    if like.mode == 'gray':
        out = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    elif like.mode == 'rgba':
        h, w = bgr.shape[:2]
        alpha = cv2.resize(like.alpha, (w, h), interpolation=cv2.INTER_CUBIC)
        out = np.concatenate([bgr, alpha[..., None]], axis=2)
    else:
        out = bgr
    out = (np.clip(out, 0, 1) * _MAX_VALUE[dtype]).round().astype(dtype)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if dtype == np.uint8 and path.lower().endswith(('.jpg', '.jpeg')) else []
    if not cv2.imwrite(path, out, params):
        raise OSError(f'could not write {path!r} (check the folder and the extension)')
