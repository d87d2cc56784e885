"""Options files are data: the one YAML loader of every options file d2csr's programs read.

``d2csr/train.py``, ``d2csr/test.py``, the inference and visualize scripts (``-opt`` and the options file BasicSR
saved beside a checkpoint) and the benchmarks read option files with :func:`load_options`, which

- keeps BasicSR's ordering (mappings are ``OrderedDict``, as BasicSR's ``ordered_yaml`` loader makes them);
- accepts YAML's standard tags (``!!float 1e-4``, ``!!str``, ``!!int``, ``!!bool``, ``!!null``, ``!!seq``,
  ``!!map``, ``!!set``, ``!!omap``, ``!!pairs``, ``!!binary``, ``!!timestamp``), anchors, aliases and merge keys;
- constructs no Python object: a ``!!python/...`` tag (or any other tag) is refused with the file, line and tag,
  before anything of the file is built, so nothing in it runs;
- refuses a file over :data:`MAX_BYTES`, a document that expands (through aliases) to more than
  :data:`MAX_VALUES` values ("billion laughs"), an alias inside its own anchor, and nesting deeper than
  :data:`MAX_DEPTH`, each within a fraction of a second;
- raises :class:`OptionsFileError` (a ``ValueError``) whose message names the file, the line and the fix.

:class:`SafeOptionsLoader` is the loader itself (a PyYAML ``SafeLoader``, pure Python: its limits hold on any
input, where libyaml's C composer can overflow the C stack on deeply nested input); ``d2csr/train.py`` also
hands it to BasicSR's ``parse_options``. BasicSR's own scripts keep BasicSR's loader.
"""
import os
from collections import OrderedDict

import yaml

from d2csr.utils.errors import UserError

MAX_BYTES = 1_000_000  # an options file is a few kB; BasicSR's largest are under 10 kB
MAX_VALUES = 10_000  # values of the document with every alias expanded (an options file has a few hundred)
MAX_DEPTH = 64  # nesting of mappings / lists (an options file nests 5 deep)

_STANDARD = 'tag:yaml.org,2002:'
_MERGE_TAGS = (_STANDARD + 'merge', _STANDARD + 'value')  # ``<<`` and ``=`` keys, resolved within the mapping


class OptionsFileError(UserError, ValueError):
    """An options file that cannot be read as data: missing, too large, not YAML, or refused content."""


class UnsafeOptionsError(OptionsFileError):
    """An options file refused for what it holds: a Python (or unknown) tag, an alias bomb, a self-reference,
    too deep, too large. Such a file is never passed over silently."""


def _short_tag(tag):
    return '!!' + tag[len(_STANDARD):] if tag.startswith(_STANDARD) else tag


class SafeOptionsLoader(yaml.SafeLoader):
    """PyYAML's ``SafeLoader`` with BasicSR's ordered mappings and the limits of this module.

    ``SafeOptionsLoader(stream_or_text, name=None)``; ``name`` (default: the stream's ``name``) is the file
    named in messages. Usable as ``yaml.load(f, Loader=SafeOptionsLoader)``.
    """

    def __init__(self, stream, name=None):
        name = name or getattr(stream, 'name', '<options>')
        if hasattr(stream, 'read'):
            text = stream.read(MAX_BYTES + 1)
            if len(text) > MAX_BYTES:
                raise UnsafeOptionsError(_too_large(name))
            stream = text
        super().__init__(stream)
        self.name = str(name)  # the marks of errors name the file
        self._depth = 0
        self._total = 0
        self._sizes = {}  # id(node) -> values of the node with its aliases expanded (finished nodes only)

    # --- limits, checked while the document is composed, before anything is constructed ---------------------
    def _refuse(self, mark, what):
        line = f', line {mark.line + 1}' if mark is not None else ''
        raise UnsafeOptionsError(f'{self.name}{line}: {what}')

    def fetch_flow_collection_start(self, token_class):
        if self.flow_level >= MAX_DEPTH:
            self._refuse(self.get_mark(), f'lists / mappings nested more than {MAX_DEPTH} deep; an options file '
                         'nests a few levels. Refused.')
        return super().fetch_flow_collection_start(token_class)

    def _count(self, values, mark):
        self._total += values
        if self._total > MAX_VALUES:
            self._refuse(mark, f'the document expands to more than {MAX_VALUES} values (aliases such as *name '
                         'repeat what their anchor holds; an options file has a few hundred values). Refused as an '
                         'alias bomb / oversized file: write the values out.')

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # the anchored node (or PyYAML's undefined-alias error)
            if id(node) not in self._sizes:
                self._refuse(event.start_mark, f'the alias *{event.anchor} is inside its own anchor &{event.anchor} '
                             '(a value that contains itself). Refused.')
            self._count(self._sizes[id(node)], event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(self.peek_event().start_mark, f'values nested more than {MAX_DEPTH} deep; an options file '
                         'nests a few levels. Refused.')
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._check_tag(node)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = ()
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        self._count(1, node.start_mark)
        return node

    def _check_tag(self, node):
        tag = node.tag
        if tag in self.yaml_constructors or tag in _MERGE_TAGS:
            return
        if tag.startswith(_STANDARD + 'python/'):
            self._refuse(node.start_mark, f'the tag {_short_tag(tag)} is refused: options files are data, and this '
                         'tag would make Python objects (or run code) while the file is read. Nothing was run; '
                         'write the plain value instead.')
        self._refuse(node.start_mark, f'the tag {_short_tag(tag)} is not a standard YAML tag; options files may use '
                     '!!float, !!int, !!str, !!bool, !!null, !!seq, !!map (and !!set, !!omap, !!pairs, !!binary, '
                     '!!timestamp). Remove it.')


def _construct_ordered_mapping(loader, node):
    loader.flatten_mapping(node)  # merge keys (<<: *defaults)
    return OrderedDict(loader.construct_pairs(node))


SafeOptionsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_ordered_mapping)


def _too_large(path):
    return (f'{path} is over {MAX_BYTES // 1_000_000} MB; an options file is a few kB. Refused (is it the right '
            'file?).')


def parse_options_text(text, name='<options>'):
    """The document of ``text`` (YAML) under this module's rules; ``name`` is used in messages."""
    if len(text) > MAX_BYTES:
        raise UnsafeOptionsError(_too_large(name))
    loader = SafeOptionsLoader(text, name=name)
    try:
        return loader.get_single_data()
    except OptionsFileError:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark is not None else ''
        problem = ' '.join(p for p in (err.context, err.problem) if p)
        raise OptionsFileError(f'{name} is not valid YAML ({where}{problem}). Fix the file (indentation, a missing '
                               '":" or quote).') from None
    except (yaml.YAMLError, RecursionError, TypeError, ValueError) as err:
        raise OptionsFileError(f'{name}: cannot be read as YAML data ({type(err).__name__}: '
                               f'{str(err).splitlines()[0] if str(err) else ""}).') from None
    finally:
        loader.dispose()


def load_options(path, require_mapping=True):
    """The options file ``path`` as data (an ``OrderedDict`` when ``require_mapping``); see the module doc.

    Raises :class:`OptionsFileError` (missing, unreadable, not UTF-8, not YAML, not a mapping) or
    :class:`UnsafeOptionsError` (refused content), each naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = 'is a folder' if os.path.isdir(path) else 'does not exist'
        raise OptionsFileError(f'options file {path!r} {what} (-opt expects a YAML file such as '
                               'options/train_D2C_div_x4.yml).')
    try:
        with open(path, 'rb') as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise OptionsFileError(f'options file {path!r} cannot be read ({err.strerror or err}).') from None
    if len(raw) > MAX_BYTES:
        raise UnsafeOptionsError(_too_large(path))
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as err:
        raise OptionsFileError(f'{path} is not a UTF-8 text file (byte {err.start}); is it an options file?') from None
    opt = parse_options_text(text, name=path)
    if require_mapping and not isinstance(opt, dict):
        raise OptionsFileError(f'{path} holds a {type(opt).__name__}, not a mapping of options (name: ..., '
                               'network_g: ...).')
    return opt
