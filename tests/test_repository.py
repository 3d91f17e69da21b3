"""The repository stands on its own: a user has only its files, so nothing in them may
point to documents outside it (design notes beside the checkout, tracker numbers).
User documentation lives in docs/.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Written so that this file does not match itself: [/] is a slash, \. a dot.
POINTER = re.compile(r"\.\./shared|shared[/]docs|(ALGORITHMS|ARCHITECTURE|DATA|ROS2|BENCH|STYLE)\.md|[Ii]ssue ?#?[0-9]+")


def repository_files() -> list[str]:
    """Tracked files, and new ones git does not ignore (so a pointer is caught before it is committed)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the repository's files")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return sorted(set(filter(None, out.split("\0"))))


def read_text(path: Path) -> str | None:
    """The file as text, or None for binary files (images, archives)."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):  # deleted in the working tree, or a submodule
        return None
    if b"\0" in raw[:8192]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def pointer_hits(root: Path, files: list[str]) -> list[str]:
    hits = []
    for rel in files:
        text = read_text(root / rel)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            match = POINTER.search(line)
            if match:
                hits.append(f"{rel}:{number}: {match.group(0)!r} in {line.strip()[:160]!r}")
    return hits


def test_no_file_points_outside_the_repository():
    files = repository_files()
    assert "README.md" in files and "pyproject.toml" in files, "git listed no repository files"
    hits = pointer_hits(REPO, files)
    assert not hits, ("files point to documents outside the repository (design notes, tracker numbers); "
                      "point to docs/ instead or drop the number:\n" + "\n".join(hits))


def test_the_pointer_check_finds_each_kind(tmp_path):
    # each example is split in two, so that this file itself stays free of them
    lines = ["see ../sha" + "red/", "in sha" + "red/docs", "as in ALGORITHMS" + ".md", "the store (iss" + "ue 4)",
             "Iss" + "ue #12 says", "DATA" + ".md"]
    for i, line in enumerate(lines):
        (tmp_path / f"f{i}.md").write_text(f"fine line\n{line}\n")
    (tmp_path / "ok.md").write_text("docs/store.md and docs/algorithms.md; issues are welcome\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\0iss" + b"ue 4")
    hits = pointer_hits(tmp_path, [*(f"f{i}.md" for i in range(len(lines))), "ok.md", "image.png", "gone.md"])
    assert [h.split(":")[0] for h in hits] == [f"f{i}.md" for i in range(len(lines))]
    assert all(":2:" in h for h in hits)


def test_docs_named_by_the_code_exist():
    """Docstrings point users to docs/<name>.md; each of those pages exists."""
    named = set()
    for rel in repository_files():
        text = read_text(REPO / rel) if rel.endswith((".py", ".md", ".toml", ".cfg", ".yaml")) else None
        named.update(re.findall(r"\bdocs/([a-z0-9_]+\.md)", text or ""))
    assert {"store.md", "algorithms.md", "ros2.md"} <= named
    missing = sorted(name for name in named if not (REPO / "docs" / name).is_file())
    assert not missing, f"docs/ lacks {missing}, which the code or the docs point to"
