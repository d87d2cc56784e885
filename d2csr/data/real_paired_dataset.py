"""Real-world SR pairs read in the layouts they are downloaded in, registered into BasicSR's DATASET_REGISTRY.

Every data set returns what BasicSR's ``PairedImageDataset`` returns, so ``D2CModel`` (and ``SRModel``) use it
unchanged: ``{'lq': Tensor (3, h, w), 'gt': Tensor (3, scale*h, scale*w), 'lq_path': str, 'gt_path': str}``,
RGB in ``[0, 1]`` (training: ``gt_size`` crops, flips and rotations).

========================  =====================================================================================
``type``                  what it reads
========================  =====================================================================================
``RealSRDataset``         ``dataroot`` = RealSR as downloaded (V3, or older with ``lq_at_gt_size: bicubic``)
``DRealSRDataset``        ``dataroot`` = DRealSR as downloaded (``x2``/``x3``/``x4``)
``D2CRealSRDataset``      ``dataroot`` = D2CRealSR as downloaded (x8)
``PairListDataset``       ``meta_info_file`` = the authors' text list (``lr_path hr_path`` per line)
``PairedFolderDataset``   ``dataroot_gt`` / ``dataroot_lq`` folders (or BasicSR LMDBs), names matched by
                          ``filename_tmpl`` / ``gt_filename_tmpl`` or ``lq_regex`` / ``gt_regex``
========================  =====================================================================================

Common options (BasicSR's names): ``scale`` and ``phase`` (set by BasicSR), ``io_backend`` (``disk``; ``lmdb``
for ``PairedFolderDataset``), ``gt_size``, ``use_hflip``, ``use_rot``, ``color: y``, ``mean`` / ``std``, and

* ``split`` (raw layouts): ``train`` or ``test``; default ``train`` for the training set, ``test`` otherwise.
* ``lq_at_gt_size``: ``~`` (default: an LR stored at HR size is an error) or ``bicubic`` (downsample it).
* ``check_sizes`` (default true): read every pair's size from the file headers when the data set is built,
  so that a wrong ratio fails at once (listing every such pair) instead of in the middle of training.

HR images a few pixels larger than ``scale x`` LR are cropped to it (top left), with one warning per data set.
"""
import os.path as osp

from torch.utils import data
from torchvision.transforms.functional import normalize

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, get_root_logger, imfrombytes, img2tensor
from d2csr.utils.registry import DATASET_REGISTRY  # d2csr's names, not BasicSR's table

from .pair_align import align_pair, check_lq_at_gt_size, check_pair_sizes
from .pair_index import (DataError, count_warning, d2crealsr_pairs, drealsr_pairs, folder_pairs, list_pairs,
                         lmdb_pairs, realsr_pairs)


def _expand(path):
    return None if path is None else osp.expanduser(str(path))


class RealPairedDataset(data.Dataset):
    """Base class: subclasses implement :meth:`scan` (the list of pairs); reading and augmenting are shared."""

    layout = 'pairs'
    count_layout = None  # key of pair_index.PUBLISHED_COUNTS: the number of pairs its authors publish
    supports_lmdb = False
    checks_own_sizes = True  # sizes are checked (and HR cropped) here, see d2csr.data.eval_check

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        if 'scale' not in opt:
            raise DataError(f'{type(self).__name__}: `scale` is missing (BasicSR sets it from the top-level scale).')
        self.scale = int(opt['scale'])
        self.phase = opt.get('phase', 'train')
        self.name = opt.get('name', self.layout)
        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        if self.io_backend_opt['type'] == 'lmdb' and not self.supports_lmdb:
            raise DataError(f'{type(self).__name__} reads {self.layout} as downloaded (io_backend: disk). For LMDB, '
                            'run scripts/prepare_dataset.py --lmdb and use PairedFolderDataset or PairedImageDataset.')
        self.lq_at_gt_size = check_lq_at_gt_size(opt.get('lq_at_gt_size'))
        self.mean, self.std = opt.get('mean'), opt.get('std')
        self.file_client = None

        self.pairs = self.scan()
        self._report_pairs()
        if opt.get('check_sizes', True):
            groups = check_pair_sizes(self.pairs, self.scale, self.lq_at_gt_size, where=f'{self.name} ({self.layout})')
            logger = get_root_logger()
            if groups['crop_gt']:
                example = groups['crop_gt'][0]
                logger.warning(f'{self.name}: {len(groups["crop_gt"])} of {len(self.pairs)} HR images are larger than '
                               f'{self.scale} x LR (e.g. {osp.basename(example["gt_path"])}); they are cropped to '
                               f'{self.scale} x LR at the top left, as the authors do.')
            if groups['lq_at_gt_size']:
                logger.info(f'{self.name}: {len(groups["lq_at_gt_size"])} LR images are stored at HR size; '
                            f'downsampling them by {self.scale} ({self.lq_at_gt_size}).')
            if self.phase == 'train':
                self._check_gt_size()
        self.paths = [dict(lq_path=p['lq_path'], gt_path=p['gt_path']) for p in self.pairs]
        self._warned_crop = False

    def _report_pairs(self):
        """Warn when the data set has another number of pairs than its authors publish (a camera missing from
        a RealSR download tests 50 images instead of 100), and say which pairs were taken the other way round
        (the file in the LR folder was the larger)."""
        logger = get_root_logger()
        if self.count_layout is not None:
            warning = count_warning(self.count_layout, self.split(), self.scale, len(self.pairs),
                                    self.opt.get('cameras'))
            if warning:
                logger.warning(f'{self.name}: {warning}')
        swapped = [p for p in self.pairs if p.get('swapped')]
        if swapped:
            logger.warning(f'{self.name}: {len(swapped)} pair(s) whose file in the LR folder is the larger one are '
                           f'taken with it as HR (e.g. {osp.basename(swapped[0]["gt_path"])}).')

    def _check_gt_size(self):
        """``gt_size`` a multiple of the scale and no larger than the smallest HR (after alignment), checked
        here rather than at the first batch (where BasicSR's message says to delete the image)."""
        gt_size = self.opt.get('gt_size')
        if not isinstance(gt_size, int) or isinstance(gt_size, bool) or gt_size <= 0 or gt_size % self.scale:
            raise DataError(f'{self.name}: gt_size must be a positive multiple of the scale {self.scale} (the LR '
                            f'patch is gt_size / scale), got {gt_size!r}.')
        small = [p for p in self.pairs if min(p.get('lq_hw') or (gt_size, )) * self.scale < gt_size]
        if small:
            smallest = min(min(p['lq_hw']) for p in small) * self.scale
            names = ', '.join(f'{osp.basename(str(p["gt_path"]))} ({p["lq_hw"][0] * self.scale}x'
                              f'{p["lq_hw"][1] * self.scale})' for p in small[:5])
            raise DataError(f'{self.name}: gt_size {gt_size} is larger than {len(small)} HR image(s) (after '
                            f'cropping to {self.scale} x LR), e.g. {names}. Lower gt_size to at most '
                            f'{smallest // self.scale * self.scale} (a multiple of {self.scale}).')

    def scan(self):
        """The pairs: a list of ``{'key', 'gt_path', 'lq_path'}`` (see :mod:`d2csr.data.pair_index`)."""
        raise NotImplementedError

    def split(self):
        return self.opt.get('split') or ('train' if self.phase == 'train' else 'test')

    def _read(self, path, client_key):
        content = self.file_client.get(path, client_key)
        if content is None:
            raise DataError(f'{self.name}: key {path!r} is not in the {client_key} LMDB.')
        img = imfrombytes(content, float32=False)
        if img is None:
            raise DataError(f'{self.name}: cannot decode {path} (corrupt or not an image); replace or remove it.')
        return img.astype('float32') / 255.

    def __getitem__(self, index):
        if self.file_client is None:
            backend = dict(self.io_backend_opt)
            self.file_client = FileClient(backend.pop('type'), **backend)
        gt_path, lq_path = self.paths[index]['gt_path'], self.paths[index]['lq_path']
        # HWC, BGR, float32 in [0, 1]
        img_gt, img_lq = self._read(gt_path, 'gt'), self._read(lq_path, 'lq')
        img_gt, img_lq, rel = align_pair(img_gt, img_lq, self.scale, self.lq_at_gt_size, gt_path, lq_path)
        if rel == 'crop_gt' and not self._warned_crop and not self.opt.get('check_sizes', True):
            self._warned_crop = True
            get_root_logger().warning(f'{self.name}: HR {osp.basename(gt_path)} is larger than {self.scale} x LR; '
                                      'cropped at the top left (warned once).')

        if self.phase == 'train':
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.opt['gt_size'], self.scale, gt_path)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', True))

        if self.opt.get('color') == 'y':
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]

        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': lq_path, 'gt_path': gt_path}

    def __len__(self):
        return len(self.paths)


@DATASET_REGISTRY.register()
class RealSRDataset(RealPairedDataset):
    """RealSR (Cai et al., ICCV 2019) as downloaded: ``dataroot/{Canon,Nikon}/{Train,Test}/<scale>/``.

    Options: ``dataroot`` (the ``RealSR(V3)`` folder, or one camera's), ``split``, ``cameras`` (default: those
    present), ``lq_at_gt_size: bicubic`` for versions before V3 (LR stored at HR size).
    """
    layout = 'RealSR'
    count_layout = 'realsr'

    def scan(self):
        return realsr_pairs(_expand(self.opt.get('dataroot')), self.scale, self.split(), self.opt.get('cameras'))


@DATASET_REGISTRY.register()
class DRealSRDataset(RealPairedDataset):
    """DRealSR (Wei et al., ECCV 2020) as downloaded: ``dataroot/x<s>/{Train,Test}_x<s>/{train,test}_{HR,LR}/``.

    Names as published: ``test_HR/NAME_x<s>.png`` with ``test_LR/NAME_x1.png`` (``_x1`` HR with ``_x<s>`` LR is
    read too; the larger image of a pair is its HR, see :func:`d2csr.data.pair_index.drealsr_pairs`). Options:
    ``dataroot``, ``split``.
    """
    layout = 'DRealSR'
    count_layout = 'drealsr'

    def scan(self):
        return drealsr_pairs(_expand(self.opt.get('dataroot')), self.scale, self.split())


@DATASET_REGISTRY.register()
class D2CRealSRDataset(RealPairedDataset):
    """D2CRealSR (the paper's x8 set) as downloaded: ``dataroot/{train,test}_{HR,LR}/``. Options: ``dataroot``,
    ``split``."""
    layout = 'D2CRealSR'
    count_layout = 'd2crealsr'

    def scan(self):
        return d2crealsr_pairs(_expand(self.opt.get('dataroot')), self.scale, self.split())


@DATASET_REGISTRY.register()
class PairListDataset(RealPairedDataset):
    """The authors' text lists: ``meta_info_file`` with one ``lr_path hr_path`` per line.

    Relative paths are taken from ``dataroot`` (default: the list's folder).
    """
    layout = 'pair list'

    def scan(self):
        return list_pairs(_expand(self.opt.get('meta_info_file')), _expand(self.opt.get('dataroot')))


@DATASET_REGISTRY.register()
class PairedFolderDataset(RealPairedDataset):
    """HR and LR folders (one folder is fine) whose names are matched by a template or a regular expression.

    Options: ``dataroot_gt``, ``dataroot_lq``; either ``filename_tmpl`` (LR name, BasicSR's meaning, e.g.
    ``'{}_LR4'``) and ``gt_filename_tmpl`` (HR name, e.g. ``'{}_HR'``), both default ``'{}'``, or ``lq_regex``
    and ``gt_regex`` (e.g. ``'(.+)_LR4'`` / ``'(.+)_HR'``): files whose groups are equal form a pair. With
    ``io_backend: {type: lmdb}`` the roots are BasicSR LMDBs (``*.lmdb`` with ``meta_info.txt``).
    """
    layout = 'folder pair'
    supports_lmdb = True

    def scan(self):
        gt, lq = _expand(self.opt.get('dataroot_gt')), _expand(self.opt.get('dataroot_lq'))
        names = dict(filename_tmpl=self.opt.get('filename_tmpl', '{}'),
                     gt_filename_tmpl=self.opt.get('gt_filename_tmpl', '{}'), lq_regex=self.opt.get('lq_regex'),
                     gt_regex=self.opt.get('gt_regex'))
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [lq, gt]
            self.io_backend_opt['client_keys'] = ['lq', 'gt']
            return lmdb_pairs(gt, lq, **names)
        return folder_pairs(gt, lq, **names)
