"""The README and docs/ pages: every relative link leads to a file that exists and, with a #anchor, to a
heading of that page; the README lists every page of docs/."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [
    REPO / "README.md",
    *sorted(DOCS.glob("*.md")),
    REPO / "deploy" / "README.md",
    REPO / "grafana" / "README.md",
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation but `-` and `_` dropped, spaces to `-`; a
    repeated heading gets `-1`, `-2`, ... Lines in fenced code blocks are no headings."""
    anchors: set[str] = set()
    for line in FENCE.sub("", markdown).splitlines():
        if match := re.match(r"#{1,6} +(.*?) *#* *$", line):
            anchor = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            n, unique = 0, anchor
            while unique in anchors:
                n += 1
                unique = f"{anchor}-{n}"
            anchors.add(unique)
    return anchors


def relative_links(markdown: str) -> list[str]:
    """The link targets outside code (fenced blocks and `spans`) that are no URLs."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", markdown))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page.read_text()):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file}")
    return broken


def test_every_relative_link_leads_to_a_file_and_a_heading():
    assert len(PAGES) > 3
    broken = {str(page.relative_to(REPO)): b for page in PAGES if (b := broken_links(page))}
    assert broken == {}


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Known: heading_1\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#known-heading_1) [ok](#page) [url](https://example.com/x.md#y)\n"
        "`[code](nowhere.md)` [gone](missing.md) [bad](other.md#not-a-heading) [bad](#nope)\n"
    )
    assert [b.split(":")[0] for b in broken_links(page)] == ["missing.md", "other.md#not-a-heading", "#nope"]


def test_github_anchors():
    assert heading_anchors(
        "# Input: the canonical event\n## Asterisk queue_log\n## Asterisk queue_log\n"
    ) == {"input-the-canonical-event", "asterisk-queue_log", "asterisk-queue_log-1"}


def test_the_readme_lists_every_docs_page():
    listed = {t.partition("#")[0] for t in relative_links((REPO / "README.md").read_text())}
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md") if p.name != "README.md"}
    assert pages and pages <= listed, pages - listed
