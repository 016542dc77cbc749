"""The README and the docs/ site: the site builds with no broken link or anchor, and nothing links outside
the repository (a reader of a clone, or of the built site offline, finds every page and picture)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
TEXTS = [REPO / "README.md", *PAGES]
# Hosts the text may name: this machine, and placeholders for the reader's own MLflow server.
OWN_HOSTS = {"", "127.0.0.1", "localhost", "mlflow", "mlflow.example.org"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # a Markdown link or image: its target
URL = re.compile(r"https?://([^/\s:`'\")\]]*)")
LEAVES_REPO = re.compile(r"(^|[\s(`'\"])\.\./")  # a relative path starting above the repository root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_site_builds_strict_and_lists_every_page(site):
    nav = (REPO / "mkdocs.yml").read_text()
    for page in PAGES:
        assert f" {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
        built = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (site / built).is_file()


def test_site_loads_nothing_from_other_hosts(site):
    for html in site.rglob("*.html"):
        assert not re.search(r'(src|href)="https?://', html.read_text()), html.relative_to(site)


def _anchors(html: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', html.read_text()))


def test_readme_links_resolve_to_files_and_anchors_of_the_site(site):
    targets = LINK.findall((REPO / "README.md").read_text())
    assert any(t.startswith("docs/") for t in targets)
    for target in targets:
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), f"README links to {target}, which is not in the repository"
        if anchor:
            page = Path(path).relative_to("docs").with_suffix("")
            assert anchor in _anchors(site / page / "index.html"), f"README links to a missing anchor: {target}"


@pytest.mark.parametrize("text", TEXTS, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_links_outside_the_repository(text):
    body = text.read_text()
    for target in LINK.findall(body):
        assert not re.match(r"[a-z]+:|/|\.\.", target), f"{text.name} links outside the repository: {target}"
    hosts = set(URL.findall(body))
    assert hosts <= OWN_HOSTS, f"{text.name} names other sites: {sorted(hosts - OWN_HOSTS)}"
    assert not LEAVES_REPO.search(body), f"{text.name} names a path above the repository"
