"""Documentation stays in step with the code, and every reference points inside the repository.

- Generated docs (state diagrams, truth table) equal what the code generates now.
- Every reference to a ``*.md`` file in mpsim/, tests/, docs/, notebooks/, benchmarks/ and
  README.md names a file of this repository: relative to the repository root, to the citing
  file's folder, or (a bare name) to docs/. Output files that the benchmarks write at run time
  are the only exception (OUTPUT_NAMES).
- Every "docs/design.md section N", "docs/protocols.md N.N" (also "sections 3.6 and 5",
  "4.3, 5 and 8.6") and every quoted heading of a doc in docs/ (docs/design.md, "Components by
  name") lands on a heading that exists.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from mpsim.experiment import docgen

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ["mpsim", "tests", "docs", "notebooks", "benchmarks", "README.md"]
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".txt", ".cfg"}
#: Files the benchmarks write into their output folder (mpsim/bench/__init__.py), named in
#: docstrings and --help texts; not documents of the repository.
OUTPUT_NAMES = {"simulator.md", "sweep.md", "stem.md", "kernel_world.md"}

MD_REFERENCE = re.compile(r"(?<![\w.-])(/?(?:[\w.-]+/)*\w[\w.-]*\.md)(?!\w)")
URL = re.compile(r"https?://\S+")
_SEP = r"(?:\s|#:?)+"  # spaces, and the comment marks of a citation continued on the next line
_NUMBER = r"\d+(?:\.\d+)*"
NUMBERED_CITATION = re.compile(
    rf"(design|protocols|kernel-facts)\.md,?(?:{_SEP}(?:sections?|§))?{_SEP}({_NUMBER}(?:\([a-z]\))?"
    rf"(?:\s*(?:,|and|/)(?:{_SEP}(?:sections?{_SEP})?){_NUMBER}(?![\w.]\w)(?:\([a-z]\))?)*)")
QUOTED_CITATION = re.compile(r"([\w-]+)\.md,?\s+\"([^\"\n]+)\"")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.MULTILINE)
HEADING_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?(?:\s|$)")


def scanned_files(root: pathlib.Path) -> list[pathlib.Path]:
    """The files to check; this test file is left out, its fabricated references are on purpose."""
    files: list[pathlib.Path] = []
    for name in SCANNED:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES
                      and ".ipynb_checkpoints" not in p.parts and "__pycache__" not in p.parts]
    return [p for p in files if p.resolve() != pathlib.Path(__file__).resolve()]


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def missing_md_references(root: pathlib.Path) -> list[str]:
    bad = []
    for path in scanned_files(root):
        text = path.read_text(errors="replace")
        text = URL.sub(lambda m: " " * len(m.group()), text)  # web addresses are not repository files
        for match in MD_REFERENCE.finditer(text):
            ref = match.group(1)
            directory, _, name = ref.rpartition("/")
            if name in OUTPUT_NAMES and directory in {"", "out_dir"}:
                continue
            candidates = [root / ref, path.parent / ref] + ([root / "docs" / ref] if not directory else [])
            inside = [c for c in candidates if c.resolve().is_relative_to(root.resolve())]
            if ref.startswith("/") or not any(c.is_file() for c in inside):
                bad.append(f"{path.relative_to(root)}:{_line(text, match.start())}: {ref} is not a file of the repository")
    return bad


def headings(doc: pathlib.Path) -> tuple[set[str], list[str]]:
    """The section numbers and the heading texts (lower case) of a markdown file."""
    titles = HEADING.findall(doc.read_text())
    numbers = {m.group(1) for t in titles if (m := HEADING_NUMBER.match(t))}
    return numbers, [t.lower() for t in titles]


def broken_citations(root: pathlib.Path) -> list[str]:
    bad = []
    docs = {name: root / "docs" / f"{name}.md" for name in ("design", "protocols", "kernel-facts")}
    for path in scanned_files(root):
        text = path.read_text(errors="replace")
        for match in NUMBERED_CITATION.finditer(text):
            doc = docs[match.group(1)]
            if not doc.is_file():
                continue  # reported by missing_md_references
            numbers, _ = headings(doc)
            for number in re.findall(_NUMBER, match.group(2)):
                if number not in numbers:
                    bad.append(f"{path.relative_to(root)}:{_line(text, match.start())}: docs/{doc.name} has no "
                               f"section {number}")
        for match in QUOTED_CITATION.finditer(text):
            doc = root / "docs" / f"{match.group(1)}.md"
            if not doc.is_file():
                continue
            _, titles = headings(doc)
            if not any(match.group(2).lower() in title for title in titles):
                bad.append(f"{path.relative_to(root)}:{_line(text, match.start())}: docs/{doc.name} has no "
                           f"heading {match.group(2)!r}")
    return bad


def test_every_md_reference_names_a_file_of_the_repository():
    bad = missing_md_references(ROOT)
    assert not bad, "\n".join(bad)


def test_every_section_citation_lands_on_a_heading():
    bad = broken_citations(ROOT)
    assert not bad, "\n".join(bad)


def test_the_cited_docs_exist_and_are_numbered():
    for name, first in [("design", "1"), ("protocols", "1.3"), ("kernel-facts", None)]:
        numbers, titles = headings(ROOT / "docs" / f"{name}.md")
        assert titles, name
        assert first is None or first in numbers, (name, sorted(numbers))


def _fake_repo(tmp_path: pathlib.Path, source: str) -> pathlib.Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "mpsim").mkdir()
    (tmp_path / "docs" / "design.md").write_text("# d\n\n## 1. One idea\n\n## 8. Components by name\n")
    (tmp_path / "docs" / "protocols.md").write_text("# p\n\n## 5. Base TCP\n\n### 8.6 Middleboxes\n")
    (tmp_path / "mpsim" / "module.py").write_text(source)
    return tmp_path


@pytest.mark.parametrize("source", [
    '"""See DESIGN.md."""\n',
    '"""See docs/nowhere.md."""\n',
    '"""See reference/protocols.md."""\n',  # a bare docs/ name must not rescue a path elsewhere
    '# (/work/shared/reference/kernel-testbed.md)\n',  # outside the repository, even if it exists here
    '# ../../outside.md\n',
])
def test_a_reference_to_a_missing_file_fails(tmp_path, source):
    assert len(missing_md_references(_fake_repo(tmp_path, source))) == 1


@pytest.mark.parametrize(("source", "missing"), [
    ('"""docs/design.md section 12"""', ["section 12"]),
    ('"""(docs/design.md 4)"""', ["section 4"]),
    ('"""docs/design.md sections 1 and 3"""', ["section 3"]),
    ('"""(docs/protocols.md 8.6 item 5, 4.9)"""', []),  # "item 5, 4.9" are item numbers, not sections
    ('"""(docs/protocols.md 4.3, 5 and 8.6 items 5, 6 and 8)"""', ["section 4.3"]),
    ('"""docs/protocols.md section 3.6 / 5, [I]"""', ["section 3.6"]),
    ('#: text (docs/protocols.md\n#: sections 8.7 and 5, [I])\n', ["section 8.7"]),
    ('"""docs/protocols.md 2.4(b), [U]"""', ["section 2.4"]),
    ('"""(docs/design.md, "Components by name")"""', []),
    ('"""(docs/design.md, "How to add a scheme")"""', ["heading 'How to add a scheme'"]),
])
def test_a_citation_of_a_missing_section_fails(tmp_path, source, missing):
    bad = broken_citations(_fake_repo(tmp_path, source))
    assert len(bad) == len(missing) and all(m in b for m, b in zip(missing, bad)), bad


def test_references_that_exist_pass(tmp_path):
    root = _fake_repo(tmp_path, '"""docs/design.md section 1; protocols.md 5 and 8.6; design.md; '
                                'https://example.org/README.md; out_dir/sweep.md."""\n')
    assert missing_md_references(root) == [] and broken_citations(root) == []


@pytest.mark.parametrize("name", sorted(docgen.GENERATED))
def test_generated_doc_is_current(name):
    committed = (docgen.DOCS / name).read_text()
    assert committed == docgen.GENERATED[name](), (
        f"docs/{name} is stale: run `python -m mpsim.experiment.docgen` and commit the result")


def test_state_diagrams_cover_every_state():
    text = docgen.state_diagrams_markdown()
    from mpsim.proto import convert, mptcp, tcp

    for state in [*tcp.TcpState, *mptcp.MptcpState, *convert.SessionState]:
        assert f"{state.name} -->" in text or f"--> {state.name}" in text, state
