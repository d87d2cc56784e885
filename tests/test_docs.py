"""The README and docs/ as a user meets them: every relative link leads somewhere, and the README stays short."""
import re

import pytest

from conftest import ROOT

DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md')), ROOT / 'datasets' / 'README.md']
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)')


def heading_anchors(path):
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to dashes)."""
    anchors = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith('```'):
            in_code = not in_code
        if not in_code and line.startswith('#'):
            title = line.lstrip('#').strip().lower()
            anchors.add(re.sub(r'[^\w\- ]', '', title).replace(' ', '-'))
    return anchors


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    text = doc.read_text()
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r'[a-z]+:', target):  # https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(f'{target} (no such file)')
        elif anchor and resolved.suffix == '.md' and anchor not in heading_anchors(resolved):
            broken.append(f'{target} (no heading #{anchor})')
    assert not broken, f'{doc.relative_to(ROOT)}: {broken}'


def test_links_are_found_at_all():
    """The link pattern sees the README's links (a pattern that matched nothing would pass every doc)."""
    targets = [m.group(1) or m.group(2) for m in LINK.finditer((ROOT / 'README.md').read_text())]
    assert 'docs/training.md' in targets and 'docs/demo_panel.png' in targets


def test_the_readme_is_for_users_and_short():
    text = (ROOT / 'README.md').read_text()
    assert len(text.splitlines()) <= 300
    for section in ('## Quick start', '## Your own photos', '## Training and testing', "## The authors' released weights",
                    '## Differences from the paper', '## Citation'):
        assert section in text, section
