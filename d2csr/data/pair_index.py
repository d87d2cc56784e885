"""Find the LR/HR pairs of real-world SR data sets in the layouts they are downloaded in.

Every function returns a list of pairs ``{'key': str, 'gt_path': str, 'lq_path': str}`` sorted by key (for LMDB
also ``'gt_shape'`` / ``'lq_shape'``), and raises :class:`DataError` naming what is wrong: a missing folder, a
scale the layout does not have, an empty folder, or (all at once) every HR without its LR and every LR without
its HR. Nothing here reads pixels; sizes are checked by :mod:`d2csr.data.pair_align`.

Layouts (``s`` is the scale)::

    RealSR (V3; older versions store LR at HR size)   root/{Canon,Nikon}/{Train,Test}/s/Canon_001_HR.png
                                                                                    /Canon_001_LRs.png
    DRealSR                                           root/xs/{Train,Test}_xs/{train,test}_HR/DSC_1454_xs.png
                                                                             /{train,test}_LR/DSC_1454_x1.png
      (the public naming; ``_x1`` HR with ``_xs`` LR is read too: names pair without their ``_x<n>`` token and
      the larger image of a pair is the HR, whichever folder holds it)
    D2CRealSR (x8 only)                               root/{train,test}_HR/001.png  root/{train,test}_LR/001.png
    authors' text list                                one "lr_path hr_path" per line
    generic folder pair                               dataroot_gt/ + dataroot_lq/, names matched by a template
                                                      ("{}_LR4") or a regular expression with a group
"""
import os
import os.path as osp
import re

from d2csr.utils.errors import UserError
from d2csr.utils.image_io import IMG_EXTENSIONS, header_size, image_names

REALSR_SCALES = (2, 3, 4)
REALSR_CAMERAS = ('Canon', 'Nikon')
DREALSR_SCALES = (2, 3, 4)
D2CREALSR_SCALES = (8, )
# pairs per split and scale as their authors publish them (RealSR V3: Canon + Nikon together)
PUBLISHED_COUNTS = {
    'realsr': {'train': {2: 459, 3: 459, 4: 459}, 'test': {2: 100, 3: 100, 4: 100}},
    'drealsr': {'train': {2: 884, 3: 783, 4: 840}, 'test': {2: 83, 3: 84, 4: 93}},
    'd2crealsr': {'train': {8: 100}, 'test': {8: 15}},
}
LAYOUT_NAMES = {'realsr': 'RealSR (V3)', 'drealsr': 'DRealSR', 'd2crealsr': 'D2CRealSR'}


class DataError(UserError, ValueError):
    """A data set on disk does not match what the options describe; the message says what to fix."""


def check_split(split):
    split = str(split).lower()
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}.")
    return split


def list_images(folder, what='images'):
    """Entries named like image files (by extension, hidden ones skipped) directly in ``folder``, sorted."""
    if not osp.isdir(folder):
        raise DataError(f'{what}: folder {folder!r} does not exist.')
    # entries named like images that are not image files (broken links, folders) are kept: the size check
    # names them with the reason, instead of their partners being reported as "HR without LR"
    names = image_names(folder)
    if not names:
        raise DataError(f'{what}: folder {folder!r} contains no images ({", ".join(IMG_EXTENSIONS)}).')
    return names


class NamePattern:
    """Which file names (without extension) belong to one side of a pair, and under which key.

    ``regex`` must match the whole name and have at least one group; the key is the tuple of its groups.
    ``fmt`` (``str.format`` with positional fields, optional) rebuilds a name from a key, for error messages.
    """

    def __init__(self, regex, fmt=None, what='regex'):
        try:
            self.regex = re.compile(regex)
        except re.error as err:
            raise DataError(f'{what} {regex!r} is not a valid regular expression: {err}.') from None
        if self.regex.groups < 1:
            raise DataError(f'{what} {regex!r} needs a group, e.g. "(.+)_LR4": files whose groups are equal '
                            'form a pair.')
        self.fmt = fmt

    @classmethod
    def from_template(cls, tmpl, what='filename_tmpl'):
        """``'{}_LR4'``: the ``{}`` is the part an LR name shares with its HR name (BasicSR's filename_tmpl)."""
        if not isinstance(tmpl, str) or tmpl.count('{}') != 1:
            raise DataError(f'{what} {tmpl!r} must contain "{{}}" exactly once (e.g. "{{}}" or "{{}}_LR4").')
        prefix, suffix = tmpl.split('{}')
        return cls(f'{re.escape(prefix)}(.+){re.escape(suffix)}', fmt=f'{prefix}{{0}}{suffix}', what=what)

    def key(self, stem):
        match = self.regex.fullmatch(stem)
        return None if match is None else tuple(g or '' for g in match.groups())

    def name(self, key):
        return None if self.fmt is None else self.fmt.format(*key)


def _describe(what, names):
    return f'  {what} ({len(names)}): ' + ', '.join(names)


def match_pairs(gt_items, lq_items, gt_pattern, lq_pattern, where, share_folder=False):
    """Pair ``gt_items`` with ``lq_items`` (lists of ``(name, path)``) by their pattern keys.

    Raises :class:`DataError` listing, all at once, every HR without LR, every LR without HR, names matching
    no pattern and names two files share. ``share_folder``: HR and LR live in one folder (RealSR), so a name
    is tried against both patterns.
    """
    gt_by_key, lq_by_key = {}, {}
    unknown, duplicates = [], []
    for items, pattern, by_key, other in ((gt_items, gt_pattern, gt_by_key, lq_pattern),
                                          (lq_items, lq_pattern, lq_by_key, gt_pattern)):
        for name, path in items:
            key = pattern.key(osp.splitext(name)[0])
            if key is None:
                if not share_folder or other.key(osp.splitext(name)[0]) is None:
                    unknown.append(name)
                continue
            if key in by_key:
                duplicates.append(f'{osp.basename(by_key[key])} and {name}')
                continue
            by_key[key] = path
    unknown = sorted(set(unknown))

    def expected(pattern, key):
        name = pattern.name(key)
        return f' (expected {name}.*)' if name else ''

    no_lq = [osp.basename(gt_by_key[k]) + expected(lq_pattern, k) for k in sorted(gt_by_key.keys() - lq_by_key.keys())]
    no_gt = [osp.basename(lq_by_key[k]) + expected(gt_pattern, k) for k in sorted(lq_by_key.keys() - gt_by_key.keys())]
    if no_lq or no_gt or unknown or duplicates:
        lines = [f'{where}: not every HR image has exactly one LR image (all problems are listed):']
        if no_lq:
            lines.append(_describe('HR without LR', no_lq))
        if no_gt:
            lines.append(_describe('LR without HR', no_gt))
        if unknown:
            lines.append(_describe('names matching neither the HR nor the LR pattern', unknown))
        if duplicates:
            lines.append(_describe('files with the same pair key', duplicates))
        lines.append('Add the missing partners or move these files out of the folder.')
        raise DataError('\n'.join(lines))
    pairs = [dict(key=''.join(k), gt_path=gt_by_key[k], lq_path=lq_by_key[k]) for k in sorted(gt_by_key)]
    if not pairs:
        raise DataError(f'{where}: no LR/HR pairs found.')
    return pairs


def _pairs_in_folders(gt_dir, lq_dir, gt_pattern, lq_pattern, where):
    share = osp.abspath(gt_dir) == osp.abspath(lq_dir)
    gt_names = list_images(gt_dir, f'{where}, HR')
    lq_names = gt_names if share else list_images(lq_dir, f'{where}, LR')
    return match_pairs([(n, osp.join(gt_dir, n)) for n in gt_names], [(n, osp.join(lq_dir, n)) for n in lq_names],
                       gt_pattern, lq_pattern, where, share_folder=share)


def _check_scale(scale, scales, layout, hint=''):
    if scale not in scales:
        raise DataError(f'{layout} has scales {", ".join(map(str, scales))}, not {scale}; set `scale` to one of '
                        f'them{hint}.')


def _check_root(root, layout, expected):
    if not root or not osp.isdir(root):
        raise DataError(f'{layout}: dataroot {root!r} does not exist; point it at the folder that holds '
                        f'{expected}.')


def realsr_pairs(root, scale, split='train', cameras=None):
    """RealSR pairs: ``root/<Camera>/<Split>/<scale>/<Camera>_NNN_HR.png`` with ``<Camera>_NNN_LR<scale>.png``.

    ``root`` is the downloaded folder (``RealSR(V3)``, holding ``Canon``/``Nikon``) or one camera folder
    (holding ``Train``/``Test``). ``cameras=None`` takes the cameras present.
    """
    layout = 'RealSR'
    scale, split = int(scale), check_split(split)
    _check_scale(scale, REALSR_SCALES, layout, ' (D2CRealSR is the x8 data set)')
    _check_root(root, layout, 'Canon/ and Nikon/ (or Train/ and Test/)')
    split_dir = split.capitalize()
    if cameras is None and osp.isdir(osp.join(root, split_dir)):
        camera_dirs = [root]
    else:
        names = list(cameras) if cameras is not None else [c for c in REALSR_CAMERAS if osp.isdir(osp.join(root, c))]
        if not names:
            raise DataError(f'{layout}: {root!r} has neither Canon/ nor Nikon/ nor {split_dir}/; is it the RealSR '
                            'folder as downloaded (e.g. "RealSR(V3)")?')
        camera_dirs = [osp.join(root, c) for c in names]
        missing = [d for d in camera_dirs if not osp.isdir(d)]
        if missing:
            raise DataError(f'{layout}: camera folders {missing} do not exist; fix `cameras` or dataroot.')
    pairs, problems = [], []
    for cam_dir in camera_dirs:  # every camera is checked before anything is reported
        folder = osp.join(cam_dir, split_dir, str(scale))
        if not osp.isdir(folder):
            present = sorted(d for d in os.listdir(osp.join(cam_dir, split_dir))) \
                if osp.isdir(osp.join(cam_dir, split_dir)) else []
            problems.append(f'{layout}: {folder!r} does not exist (scale {scale}, split {split}); '
                            f'{osp.join(cam_dir, split_dir)!r} has {present or "nothing"}.')
            continue
        try:
            pairs += _pairs_in_folders(folder, folder, NamePattern(r'(.+)_HR', '{0}_HR'),
                                       NamePattern(rf'(.+)_LR{scale}', f'{{0}}_LR{scale}'),
                                       f'{layout} x{scale} ({folder})')
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise DataError('\n'.join(problems))
    return sorted(pairs, key=lambda p: p['key'])


def _first_existing(root, candidates):
    for gt, lq in candidates:
        if osp.isdir(osp.join(root, gt)) or osp.isdir(osp.join(root, lq)):
            return osp.join(root, gt), osp.join(root, lq)
    return None


def drealsr_pairs(root, scale, split='train'):
    """DRealSR pairs: ``root/x<s>/<Split>_x<s>/<split>_HR/`` and ``<split>_LR/``, as downloaded.

    ``root`` holds ``x2``/``x3``/``x4``, or is one of them. Names carry a scale token: the public download names
    the HR ``NAME_x<s>.png`` and the LR ``NAME_x1.png``; the reverse (HR ``_x1``, LR ``_x<s>``) is read too. A
    pair is the two files whose names are equal without the token (a suffix after it, ``NAME_x1_12`` for
    sub-images, is part of the key), and its larger image (by ``scale`` in each side, read from the file headers)
    is the HR, whichever folder holds it: the folders only give the default.
    """
    layout = 'DRealSR'
    scale, split = int(scale), check_split(split)
    _check_scale(scale, DREALSR_SCALES, layout)
    _check_root(root, layout, 'x2/, x3/ and x4/')
    base = osp.join(root, f'x{scale}') if osp.isdir(osp.join(root, f'x{scale}')) else root
    sub = f'{split.capitalize()}_x{scale}'
    found = _first_existing(base, [(osp.join(sub, f'{split}_HR'), osp.join(sub, f'{split}_LR')),
                                   (f'{split}_HR', f'{split}_LR')])
    if found is None:
        raise DataError(f'{layout}: no {sub}/{split}_HR and {split}_LR under {base!r} (scale {scale}, split {split}); '
                        f'{root!r} should hold x{scale}/{sub}/{split}_HR.')
    gt_dir, lq_dir = found
    token = rf'_x(?:1|{scale})'
    pairs = _pairs_in_folders(gt_dir, lq_dir, NamePattern(rf'(.+){token}((?:_.*)?)', f'{{0}}_x{scale}{{1}}'),
                              NamePattern(rf'(.+){token}((?:_.*)?)', '{0}_x1{1}'),
                              f'{layout} x{scale} ({osp.dirname(gt_dir)})')
    return orient_by_size(pairs, scale)


def orient_by_size(pairs, scale):
    """Swap ``gt_path`` and ``lq_path`` of every pair whose "LR" file is at least ``scale`` times its "HR" file
    in both sides (read from the headers; unreadable files are left for the size check to name); such a pair
    gets ``'swapped': True``. The sizes read are kept (``gt_shape`` / ``lq_shape``), so the size check does not
    read the headers again. Returns ``pairs``."""
    for pair in pairs:
        try:
            gt_hw, lq_hw = header_size(pair['gt_path']), header_size(pair['lq_path'])
        except Exception:  # noqa: BLE001  (unreadable: reported by the size check)
            continue
        if gt_hw and lq_hw and lq_hw[0] >= gt_hw[0] * scale and lq_hw[1] >= gt_hw[1] * scale:
            pair['gt_path'], pair['lq_path'] = pair['lq_path'], pair['gt_path']
            pair['swapped'] = True
            gt_hw, lq_hw = lq_hw, gt_hw
        if gt_hw and lq_hw:
            pair['gt_shape'], pair['lq_shape'] = gt_hw, lq_hw
    return pairs


def count_warning(layout, split, scale, count, cameras=None):
    """A sentence when ``count`` pairs differ from what the data set's authors publish for ``layout`` /
    ``split`` / ``scale`` (:data:`PUBLISHED_COUNTS`), else ``None``."""
    published = PUBLISHED_COUNTS.get(layout, {}).get(split, {}).get(int(scale))
    if published is None or count == published:
        return None
    name = LAYOUT_NAMES[layout]
    hint = ''
    if layout == 'realsr':
        hint = (f' (published: Canon and Nikon together; cameras {", ".join(cameras)} selected)' if cameras else
                ' (published: Canon and Nikon together; is one camera missing from the download?)')
    return (f'{name} x{scale} {split}: {count} pairs found, its authors publish {published}{hint}. Results on '
            'another set of images are not comparable with the paper\'s; check the download if that is not '
            'intended.')


def d2crealsr_pairs(root, scale=8, split='train'):
    """D2CRealSR (x8) pairs: ``root/<split>_HR/NAME.png`` with ``root/<split>_LR/NAME.png``.

    Also reads ``root/<split>/{HR,LR}`` and ``root/<Split>/{HR,LR}``. Names may carry ``_HR`` / ``_LR``
    (``_LR8``, ``_x1`` / ``_x8``) suffixes; the rest of the name pairs them.
    """
    layout = 'D2CRealSR'
    scale, split = int(scale), check_split(split)
    _check_scale(scale, D2CREALSR_SCALES, layout, ' (RealSR and DRealSR have x2, x3, x4)')
    _check_root(root, layout, f'{split}_HR/ and {split}_LR/')
    found = _first_existing(root, [(f'{split}_HR', f'{split}_LR'), (osp.join(split, 'HR'), osp.join(split, 'LR')),
                                   (osp.join(split.capitalize(), 'HR'), osp.join(split.capitalize(), 'LR'))])
    if found is None:
        raise DataError(f'{layout}: {root!r} has no {split}_HR/ and {split}_LR/ folders (split {split}).')
    gt_dir, lq_dir = found
    return _pairs_in_folders(gt_dir, lq_dir, NamePattern(r'(.+?)(?:_HR|_hr|_x1)?', '{0}'),
                             NamePattern(r'(.+?)(?:_LR8|_LR|_lr8|_lr|_x8)?', '{0}'), f'{layout} x8 ({root})')


def list_pairs(list_file, root=None):
    """Pairs from the authors' text list: one ``lr_path hr_path`` per line (space or tab separated).

    Relative paths are taken from ``root`` (default: the list's folder); blank lines and ``#`` comments are
    skipped. Every missing file and malformed line is listed at once.
    """
    if not list_file or not osp.isfile(list_file):
        raise DataError(f'pair list {list_file!r} does not exist (meta_info_file: one "lr_path hr_path" per line).')
    root = root if root is not None else osp.dirname(osp.abspath(list_file))
    pairs, problems = [], []
    with open(list_file, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            fields = line.split()
            if len(fields) != 2:
                problems.append(f'line {number}: expected "lr_path hr_path", got {line!r}')
                continue
            lq_path, gt_path = (p if osp.isabs(p) else osp.join(root, p) for p in fields)
            missing = [p for p in (lq_path, gt_path) if not osp.isfile(p)]
            if missing:
                problems.append(f'line {number}: ' + ', '.join(f'{p} does not exist' for p in missing))
                continue
            pairs.append(dict(gt_path=gt_path, lq_path=lq_path))
    if problems:
        raise DataError(f'pair list {list_file}: {len(problems)} bad line(s), all listed:\n  ' + '\n  '.join(problems))
    if not pairs:
        raise DataError(f'pair list {list_file} lists no pairs.')
    for pair, key in zip(pairs, unique_keys([p['gt_path'] for p in pairs])):
        pair['key'] = key
    return pairs


def unique_keys(gt_paths):
    """A file-name-safe key per HR path: its name without the extension, led by folder names where needed."""
    stems = [re.sub(r'_(?:HR|hr|x1)$', '', osp.splitext(osp.basename(p))[0]) for p in gt_paths]
    if len(set(stems)) == len(stems):
        return stems
    common = osp.commonpath([osp.abspath(p) for p in gt_paths]) if len(gt_paths) > 1 else ''
    rel = [osp.splitext(osp.relpath(osp.abspath(p), common))[0] for p in gt_paths]
    return [re.sub(r'[^A-Za-z0-9_.-]+', '_', r) for r in rel]


def _patterns(filename_tmpl, gt_filename_tmpl, lq_regex, gt_regex):
    if lq_regex is not None or gt_regex is not None:
        if lq_regex is None or gt_regex is None:
            raise DataError('lq_regex and gt_regex go together: give both (each with the group(s) that pair names).')
        if filename_tmpl not in (None, '{}') or gt_filename_tmpl not in (None, '{}'):
            raise DataError('give either filename_tmpl / gt_filename_tmpl or lq_regex / gt_regex, not both.')
        return NamePattern(gt_regex, what='gt_regex'), NamePattern(lq_regex, what='lq_regex')
    return (NamePattern.from_template(gt_filename_tmpl or '{}', 'gt_filename_tmpl'),
            NamePattern.from_template(filename_tmpl or '{}', 'filename_tmpl'))


def folder_pairs(gt_dir, lq_dir, filename_tmpl='{}', gt_filename_tmpl='{}', lq_regex=None, gt_regex=None):
    """Pairs from two folders (or one), matched by templates or regular expressions.

    Templates: BasicSR's ``filename_tmpl`` names the LR (``'{}_LR4'``), ``gt_filename_tmpl`` the HR (``'{}_HR'``);
    the ``{}`` parts must be equal. Regexes (``lq_regex: '(.+)_LR4'``, ``gt_regex: '(.+)_HR'``) match the name
    without extension; files whose groups are equal form a pair.
    """
    gt_pattern, lq_pattern = _patterns(filename_tmpl, gt_filename_tmpl, lq_regex, gt_regex)
    if not gt_dir or not lq_dir:
        raise DataError('dataroot_gt and dataroot_lq must both be set (folders of HR and LR images).')
    return _pairs_in_folders(gt_dir, lq_dir, gt_pattern, lq_pattern, f'folder pair ({gt_dir}, {lq_dir})')


def read_lmdb_meta(lmdb_path):
    """``[(name, (h, w, c))]`` from a BasicSR LMDB's ``meta_info.txt`` (``name.png (h,w,c) level`` lines)."""
    if not lmdb_path:
        raise DataError('dataroot_gt and dataroot_lq must both be set (BasicSR LMDBs, "*.lmdb").')
    meta = osp.join(lmdb_path, 'meta_info.txt')
    if not str(lmdb_path).endswith('.lmdb') or not osp.isfile(meta):
        raise DataError(f'{lmdb_path!r} is not a BasicSR LMDB (a folder "*.lmdb" with meta_info.txt); make one with '
                        'scripts/prepare_dataset.py --lmdb or basicsr.utils.lmdb_util.make_lmdb_from_imgs.')
    entries = []
    with open(meta, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            match = re.fullmatch(r'\((\d+),(\d+),(\d+)\)', fields[1]) if len(fields) > 1 else None
            if match is None:
                raise DataError(f'{meta}, line {number}: expected "name.png (h,w,c) level", got {line.strip()!r}.')
            entries.append((fields[0], tuple(int(v) for v in match.groups())))
    if not entries:
        raise DataError(f'{meta} lists no images.')
    return entries


def lmdb_pairs(gt_lmdb, lq_lmdb, filename_tmpl='{}', gt_filename_tmpl='{}', lq_regex=None, gt_regex=None):
    """Like :func:`folder_pairs` for two BasicSR LMDBs; paths are LMDB keys, shapes come from meta_info.txt."""
    gt_pattern, lq_pattern = _patterns(filename_tmpl, gt_filename_tmpl, lq_regex, gt_regex)
    gt_meta, lq_meta = read_lmdb_meta(gt_lmdb), read_lmdb_meta(lq_lmdb)
    shapes = {('gt', osp.splitext(n)[0]): s for n, s in gt_meta}
    shapes.update({('lq', osp.splitext(n)[0]): s for n, s in lq_meta})
    pairs = match_pairs([(n, osp.splitext(n)[0]) for n, _ in gt_meta], [(n, osp.splitext(n)[0]) for n, _ in lq_meta],
                        gt_pattern, lq_pattern, f'LMDB pair ({gt_lmdb}, {lq_lmdb})')
    for pair in pairs:
        pair['gt_shape'] = shapes['gt', pair['gt_path']]
        pair['lq_shape'] = shapes['lq', pair['lq_path']]
    return pairs


LAYOUTS = {'realsr': realsr_pairs, 'drealsr': drealsr_pairs, 'd2crealsr': d2crealsr_pairs}


def layout_pairs(layout, root, scale, split='train', **kwargs):
    """Pairs of a named layout (``realsr``, ``drealsr``, ``d2crealsr``)."""
    if layout not in LAYOUTS:
        raise DataError(f'unknown layout {layout!r}; known: {", ".join(LAYOUTS)} (or a folder pair / pair list).')
    return LAYOUTS[layout](root, scale, split, **kwargs)
