"""The repository stands alone: every file its tests read is inside it, nothing names a folder beside it."""
import re
import subprocess

from conftest import OFFICIAL_FIXTURE, ROOT


def test_official_fixture_is_inside_the_repository():
    assert OFFICIAL_FIXTURE.resolve().is_relative_to(ROOT.resolve())
    for name in ('checkpoint.pkl', 'input.npy', 'branches.npy', 'sr.npy', 'target.npy', 'config.json'):
        assert (OFFICIAL_FIXTURE / name).is_file(), name


def test_no_tracked_file_names_a_folder_outside_the_repository():
    files = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    suffixes = ('.py', '.sh', '.md', '.yml', '.ini', '.cfg', '.txt', '.json', '.pth')
    outside = re.compile(r"\.\./shared|parent / ['\"]shared|/work/(shared|main|wt)\b")
    offenders = []
    for rel in files:
        path = ROOT / rel
        if not path.is_file() or path.suffix not in suffixes:
            continue
        text = path.read_text(errors='replace')
        offenders += [f'{rel}: {m.group(0)}' for m in outside.finditer(text)]
    assert not offenders, 'files that refer to folders outside the repository:\n' + '\n'.join(offenders)
