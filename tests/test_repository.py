"""The repository's own rules that code review would otherwise have to remember."""

from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_tests_reach_their_helpers_through_the_tests_package():
    # Helpers are imported as tests.<dir>.<module> (every test directory is a package); no test
    # edits sys.path to find them.
    edits = ("sys.path." + "insert", "sys.path." + "append")  # split: this file is not an offender
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
                 if any(e in p.read_text() for e in edits)]
    assert offenders == []
    missing = [str(d.relative_to(ROOT)) for d in (ROOT / "tests").rglob("*")
               if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert missing == []


def test_top_level_holds_only_the_project_files():
    allowed = {"pyproject.toml", "graphattn", "tests", "notebooks", "README.md", ".ci", ".gitignore", "LICENSE",
               ".git"}
    tracked = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name in allowed}
    extra = {name for name in tracked if name not in allowed}
    # Local, untracked build and cache folders are not the repository's content.
    assert extra <= {"build", "dist", ".pytest_cache", ".hypothesis", "__pycache__"} | {
        n for n in extra if n.endswith(".egg-info")}, extra
