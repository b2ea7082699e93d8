"""The project's text records experiments by date and commit (or the setting that changed), like a lab notebook,
never by the work period that happened to make them: no README, config or source comment may name one by its
number or as this or the next one. Reads the files only; no imports of ours run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("attnwsi", "conf", "experiments", "tests")
SUFFIXES = {".md", ".py", ".yaml"}
SKIPPED = {".venv", "outputs", "multirun"}

# Built from pieces so that this file's own source does not match it.
_WORD = "sess" + "ion"
FORBIDDEN = re.compile(rf"\b{_WORD}s? ?[0-9]+|this {_WORD}|next {_WORD}", re.IGNORECASE)


def project_text_files() -> list[Path]:
    """The root README.md and every *.md, *.py, *.yaml under the project's folders, outside hidden folders
    (.venv, .git, ...) and run outputs (outputs/, multirun/)."""
    files = [ROOT / "README.md"]
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            if any(part in SKIPPED or part.startswith(".") for part in parts):
                continue
            files.append(path)
    return files


def test_the_scan_sees_the_project():
    files = {path.relative_to(ROOT).as_posix() for path in project_text_files()}
    assert {"README.md", "experiments/haystack/README.md", "conf/model/attention.yaml",
            "tests/test_docs.py"} <= files
    assert not any(part.startswith(".") for name in files for part in name.split("/"))


def test_the_pattern_bites():
    assert FORBIDDEN.search(f"as in {_WORD} 4")
    assert FORBIDDEN.search(f"the {_WORD.upper()}S 7-11 default")
    assert FORBIDDEN.search(f"re-measured this {_WORD}")
    assert not FORBIDDEN.search("experiments/haystack/README.md, 2026-12-06, commit 45dec88")


def test_no_text_names_a_work_session():
    hits = []
    for path in project_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    assert not hits, (
        "name the date and commit (or the setting that changed) instead, e.g. "
        "'experiments/haystack/README.md, 2026-12-06, commit 45dec88':\n" + "\n".join(hits))
