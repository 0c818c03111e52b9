"""The README is the front door (short, in a fixed order, linking every page of docs/), and the README and the docs are
self-contained: every relative link resolves to a file inside the repository, and every #anchor to a heading there."""

import re
from pathlib import Path

import pytest

from tests.run_utils import ROOT

LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_SECTIONS = ["Quick start", "Results", "Install", "Train and evaluate", "Fork a script for a new task", "Layout",
                   "Read more"]


def links(markdown: Path) -> list[tuple[str, str]]:
    """(text, target) of every relative link: not http:, mailto:, nor code (inside backticks or a fenced block)."""
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*\]\([^`\n]*`", "", text)  # `[x](y)` written as code
    return [(t, target) for t, target in LINK.findall(text) if not re.match(r"^[a-z]+:", target)]


def relative_links(markdown: Path) -> list[str]:
    return [target for _, target in links(markdown)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation and backticks dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(markdown: Path) -> dict[str, str]:
    """The text under each heading (up to the next heading of any level), keyed by the heading's anchor."""
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S)  # a `# comment` in a code block is no heading
    parts = re.split(r"^#{1,6} (.+)$", text, flags=re.M)
    return {slug(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_relative_link_resolves_inside_the_repository(doc):
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"
        if anchor and path.suffix == ".md":
            assert anchor in sections(path), f"{doc.name} links to a missing heading: {target}"


def test_readme_is_short_and_in_order():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"the README has {len(lines)} lines; measurements and history go to docs/"
    headings = [line[3:] for line in lines if line.startswith("## ")]
    order = [next((i for i, h in enumerate(headings) if h.startswith(s)), None) for s in README_SECTIONS]
    assert None not in order and order == sorted(order), f"the README's sections: {headings}, in the order {README_SECTIONS}"


def test_readme_links_every_doc_and_the_demo_picture():
    targets = {target.partition("#")[0] for target in relative_links(README)}
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in targets, f"the README does not link docs/{doc.name}"
    assert "docs/grpo_demo.png" in targets
    assert "../" not in README.read_text(), "no paths outside the repository"
    assert (ROOT / "docs" / "grpo_demo.png").stat().st_size < 200_000


def test_every_figure_of_the_results_table_links_to_its_command():
    """Each figure of the README's results table links to a docs section that holds that figure and the command that
    measures it."""
    results = README.read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
    figures = [(text, target) for text, target in LINK.findall(results) if re.search(r"\d", text)]
    assert figures, "the results table links its figures"
    for text, target in figures:
        file, _, anchor = target.partition("#")
        section = sections(ROOT / file)[anchor]
        assert "python benchmarks/" in section, f"{target} gives no command for {text!r}"
        for number in re.findall(r"\d+(?:\.\d+)?%?", text):
            assert number in section, f"{target} does not hold {number} ({text!r})"


def test_design_doc_has_the_step_and_the_rules():
    design = (ROOT / "docs" / "design.md").read_text()
    for topic in ("wake_up", "reload_weights", "lockstep", "normalisation is global", "Temperature is part of the policy",
                  "complete or absent"):
        assert topic in design, topic


def test_metrics_glossary_parses():
    """The end-to-end tests check every logged key against this table (tests/test_grpo_e2e.py, documented_keys)."""
    from tests.test_grpo_e2e import documented_keys

    keys = documented_keys()
    assert {"reward/mean", "train/pg_loss", "train/value_loss", "eval/accuracy", "time/<phase>_s",
            "reward/reason_<r>", "perf/peak_mem_gb"} <= keys, keys
