"""Progress over a list of images: a tqdm bar on a terminal, whole lines anywhere else.

Written to a pipe or a log file, a progress bar is a run of carriage returns and escape codes. Scripts that
process images one by one use :class:`ImageProgress`: on a terminal it shows tqdm's bar (and an inner bar, e.g.
tiles, through :meth:`ImageProgress.inner`); otherwise it prints one plain line per finished image and nothing
else.
"""
import sys

from tqdm import tqdm


class ImageProgress:
    """``for index, item in progress:`` over ``items`` (1-based ``index``); ``done(index, text)`` when an item is
    finished, ``note(text)`` for a message (a skipped image), ``inner(unit)`` for a bar inside one item.

    Args:
        items (list): what is processed, in order.
        unit (str): tqdm's unit for the bar (``'img'``).
        stream: where progress goes (default ``sys.stderr``); a terminal gets a bar, anything else lines.
    """

    def __init__(self, items, unit='img', stream=None):
        self.items = list(items)
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, 'isatty', lambda: False)())
        self.bar = tqdm(self.items, unit=unit, disable=not self.interactive, file=self.stream)

    def __iter__(self):
        return enumerate(self.bar, 1)

    def __len__(self):
        return len(self.items)

    def label(self, text):
        """Show ``text`` (e.g. the file name) beside the bar; nothing elsewhere."""
        if self.interactive:
            self.bar.set_postfix_str(text)

    def done(self, index, text):
        """Item ``index`` is finished: a line ``[index/total] text`` where there is no bar."""
        if not self.interactive:
            print(f'[{index}/{len(self.items)}] {text}', flush=True)

    def note(self, text):
        """A message that must not break the bar (tqdm.write on a terminal, a plain line elsewhere)."""
        if self.interactive:
            tqdm.write(text, file=self.stream)
        else:
            print(text, flush=True)

    def inner(self, unit='tile'):
        """A bar for the parts of one item (``update_to(done, total)`` to move it, ``close()`` at the end);
        silent where there is no terminal."""
        return _InnerBar(unit, self.interactive, self.stream)

    def close(self):
        self.bar.close()


class _InnerBar:
    def __init__(self, unit, interactive, stream):
        self.bar = tqdm(total=0, unit=unit, leave=False, disable=not interactive, file=stream)

    def update_to(self, done, total):
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()
