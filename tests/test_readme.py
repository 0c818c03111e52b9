"""The README and the docs it links are self-contained: every relative link resolves to a file inside the repository."""

import re
from pathlib import Path

import pytest

from tests.run_utils import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(markdown: Path) -> list[str]:
    targets = LINK.findall(markdown.read_text())
    return [t for t in targets if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]  # not http:, mailto:, anchors


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_relative_link_resolves_inside_the_repository(doc):
    for target in relative_links(doc):
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_readme_links_the_design_and_the_demo_picture():
    links = relative_links(ROOT / "README.md")
    assert "docs/design.md" in links and "docs/grpo_demo.png" in links
    assert "../" not in (ROOT / "README.md").read_text(), "no paths outside the repository"
    assert (ROOT / "docs" / "grpo_demo.png").stat().st_size < 200_000


def test_design_doc_has_the_step_and_the_rules():
    design = (ROOT / "docs" / "design.md").read_text()
    for topic in ("wake_up", "reload_weights", "lockstep", "normalisation is global", "Temperature is part of the policy",
                  "complete or absent"):
        assert topic in design, topic
