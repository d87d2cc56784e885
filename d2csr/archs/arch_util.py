"""Small helpers shared by d2csr's architectures (as ``basicsr/archs/arch_util.py`` is BasicSR's)."""


def check_int(label, value, minimum=1, note=''):
    """Raise ``ValueError('<label> must be an integer >= <minimum><note>, got <value>')`` unless ``value`` is an
    ``int`` (not a ``bool``) of at least ``minimum``; ``label`` names the option (e.g. ``'network_g:depth'``,
    ``'RDN: num_feat'``), ``note`` says why the minimum (e.g. ``' (first, middle and last layer)'``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{label} must be an integer >= {minimum}{note}, got {value!r}')
    return value
