"""d2csr's classes in BasicSR's registries, without taking a name from anyone.

BasicSR's five registries (``basicsr.utils.registry``: arch, model, loss, dataset, metric) are global and refuse
a second class of a name (``AssertionError: An object named 'RDN' was already registered``). d2csr never inserts
into them. Its classes go into the registries of this module, which have BasicSR's decorator::

    from d2csr.utils.registry import ARCH_REGISTRY      # instead of basicsr.utils.registry

    @ARCH_REGISTRY.register()
    class RDN(nn.Module):
        ...

and each of BasicSR's registries gets a ``get`` of its own (an attribute of that one registry object; BasicSR's
``Registry`` class is untouched) that looks a name up exactly as BasicSR does, and only where BasicSR's lookup
would fail (neither ``name`` nor ``name_basicsr`` registered there) gives d2csr's class:

- ``RDN`` (a short name, as d2csr's option files write it): whoever registered ``RDN`` in BasicSR's registry,
  before or after ``import d2csr``; d2csr's ``RDN`` when nobody did;
- ``d2csr.RDN`` (the owned name): always d2csr's. No class can be registered under it by ``register()``.

So a user's own ``RDN`` (or a later BasicSR release's) registers without error and BasicSR builds it for
``type: RDN``, in every order. When the options of a D2C run (:func:`report_shadowing`) ask for a name whose d2csr
class is shadowed that way, BasicSR's log says so once, with the owned name to use.
"""
import logging

from basicsr.utils import registry as _basicsr_registry

OWNED_PREFIX = 'd2csr.'
_SHADOW_REPORTING = {'on': False, 'done': set()}


class GuestRegistry:
    """d2csr's names for one of BasicSR's registries (``host``), with BasicSR's ``register`` API."""

    def __init__(self, host):
        self.host = host
        self._obj_map = {}
        _install_get(host, self)

    @property
    def name(self):
        return self.host._name

    def register(self, obj=None, suffix=None):
        """Register ``obj`` (or, as ``@register()``, the decorated class / function) under its ``__name__``
        (``name_suffix`` with ``suffix``) in d2csr's table; BasicSR's registry is not written."""
        def add(item):
            name = item.__name__ if suffix is None else f'{item.__name__}_{suffix}'
            if name in self._obj_map:
                raise KeyError(f"d2csr registers two objects named {name!r} in the '{self.name}' registry")
            self._obj_map[name] = item
            return item

        return add if obj is None else add(obj)

    def own(self, name):
        """d2csr's object for ``name`` (short or ``d2csr.``-owned), or ``None``."""
        if not isinstance(name, str):
            return None
        return self._obj_map.get(name[len(OWNED_PREFIX):] if name.startswith(OWNED_PREFIX) else name)

    def taken(self, name, suffix='basicsr'):
        """Whether BasicSR's own lookup of ``name`` succeeds (someone registered ``name`` or ``name_suffix``)."""
        obj_map = self.host._obj_map
        return isinstance(name, str) and (name in obj_map or f'{name}_{suffix}' in obj_map)

    def resolves_to_d2csr(self, name):
        """Whether ``host.get(name)`` gives d2csr's object."""
        return not self.taken(name) and self.own(name) is not None

    def shadowed(self, name):
        """The object registered in BasicSR's registry under d2csr's short name ``name`` by someone else, or
        ``None``."""
        own = self._obj_map.get(name) if isinstance(name, str) else None
        other = self.host._obj_map.get(name) if own is not None else None
        return other if other is not None and other is not own else None

    def get(self, name, suffix='basicsr'):
        return self.host.get(name, suffix)

    def keys(self):
        return self._obj_map.keys()

    def __contains__(self, name):
        return self.own(name) is not None

    def __iter__(self):
        return iter(self._obj_map.items())


def _install_get(host, guest):
    """Give the registry object ``host`` a ``get`` that falls back to ``guest`` (once per registry)."""
    previous = host.get
    if getattr(previous, '__d2csr_guest__', None) is not None:  # this module imported twice: keep one layer
        previous = previous.__d2csr_previous__

    def get(name, suffix='basicsr'):
        if guest.taken(name, suffix):
            obj = previous(name, suffix)
            _report_shadow(guest, name, obj)
            return obj
        own = guest.own(name)
        return own if own is not None else previous(name, suffix)  # BasicSR's message and KeyError

    get.__d2csr_guest__, get.__d2csr_previous__ = guest, previous
    get.__doc__ = f'BasicSR\'s {host._name} registry lookup, then d2csr\'s names (d2csr.utils.registry).'
    host.get = get


def report_shadowing(on=True):
    """Log (once per name, in BasicSR's log) when a D2C run's options ask for a name whose d2csr object is
    shadowed by someone else's; set by d2csr's entry points and for D2C runs of BasicSR's scripts."""
    _SHADOW_REPORTING['on'] = bool(on)


def _report_shadow(guest, name, obj):
    if not _SHADOW_REPORTING['on'] or obj is guest.own(name) or guest.shadowed(name) is None:
        return
    from basicsr.utils.logger import initialized_logger

    key = (guest.name, name)
    if key in _SHADOW_REPORTING['done'] or 'basicsr' not in initialized_logger:  # the log file is not set up yet
        return
    _SHADOW_REPORTING['done'].add(key)
    logging.getLogger('basicsr').warning(
        f"d2csr: the {guest.name} name {name!r} is registered by {_describe(obj)}, which BasicSR uses here; d2csr's "
        f"{name} ({_describe(guest.own(name))}) is the {guest.name} '{OWNED_PREFIX}{name}' (write that name in "
        'the options to use it).')


def _describe(obj):
    return f'{getattr(obj, "__module__", "?")}.{getattr(obj, "__qualname__", getattr(obj, "__name__", obj))}'


ARCH_REGISTRY = GuestRegistry(_basicsr_registry.ARCH_REGISTRY)
MODEL_REGISTRY = GuestRegistry(_basicsr_registry.MODEL_REGISTRY)
LOSS_REGISTRY = GuestRegistry(_basicsr_registry.LOSS_REGISTRY)
DATASET_REGISTRY = GuestRegistry(_basicsr_registry.DATASET_REGISTRY)
METRIC_REGISTRY = GuestRegistry(_basicsr_registry.METRIC_REGISTRY)
REGISTRIES = (ARCH_REGISTRY, MODEL_REGISTRY, LOSS_REGISTRY, DATASET_REGISTRY, METRIC_REGISTRY)
TYPE_KEYS = ('type', 'model_type')  # where BasicSR's options name a registered object


def registered_names():
    """``{registry name: [d2csr's names]}`` (short names; each is also reachable as ``d2csr.<name>``)."""
    return {guest.name: sorted(guest.keys()) for guest in REGISTRIES}


def names_resolved_by(host):
    """Every name one of BasicSR's registry objects ``host`` resolves: its own entries and d2csr's short names
    (for "did you mean" suggestions)."""
    guest = getattr(host.get, '__d2csr_guest__', None)
    return sorted({name for name, _ in host} | set(guest.keys() if guest is not None else ()))


def _type_names(opt):
    """Every string under a ``type`` / ``model_type`` key of the nested options ``opt``."""
    stack, found = [opt], []
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in TYPE_KEYS and isinstance(value, str):
                    found.append(value)
                else:
                    stack.append(value)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def d2csr_names_in(opt):
    """The names in the options ``opt`` that BasicSR's registries resolve to d2csr's objects (sorted): a run
    whose options name none of them does not use d2csr."""
    return sorted({name for name in _type_names(opt) for guest in REGISTRIES if guest.resolves_to_d2csr(name)})


def shadowed_names_in(opt):
    """``[(registry name, name, the other object)]`` for the names in ``opt`` whose d2csr object is shadowed."""
    return sorted({(guest.name, name, _describe(guest.shadowed(name))) for name in _type_names(opt)
                   for guest in REGISTRIES if guest.shadowed(name) is not None})
