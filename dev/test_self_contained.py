"""The repository alone is enough: no tracked file refers to a path outside it (a user's
clone has nothing beside it)."""
import re
import subprocess
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Markdown links and relative paths written in prose or comments: `../x`, `../../x`.
RELATIVE = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-][\w./-]*)")
TEXT_SUFFIXES = {".md", ".rs", ".py", ".toml", ".yaml", ".yml", ".sh", ".ts", ".json", ""}


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.split()
    for name in names:
        path = ROOT / name
        if path.suffix in TEXT_SUFFIXES and path.is_file() and not name.endswith(".lock"):
            yield path


def outside_references(text, base):
    """Relative paths in `text` (of a file in folder `base`) that resolve outside the
    repository."""
    found = []
    for match in RELATIVE.finditer(text):
        target = (base / match.group(1)).resolve()
        if ROOT not in target.parents and target != ROOT:
            found.append(match.group(1))
    return found


class SelfContained(unittest.TestCase):
    def test_no_tracked_file_points_outside_the_repository(self):
        offenders = {str(p.relative_to(ROOT)): refs for p in tracked_text_files()
                     if p.name != Path(__file__).name
                     and (refs := outside_references(p.read_text(errors="replace"), p.parent))}
        self.assertEqual(offenders, {})

    def test_the_check_tells_inside_from_outside(self):
        docs = ROOT / "docs"
        self.assertEqual(outside_references("see [y](../README.md)", docs), [])
        self.assertEqual(outside_references("see [x](../../x/users-api.md)", docs), ["../../x/users-api.md"])


if __name__ == "__main__":
    unittest.main()
