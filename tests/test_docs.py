"""The documentation site: its reference pages are generated from the code and must match it, it builds in
strict mode (a broken link or anchor, or a page left out of the navigation, fails the build), and the
README stays short, with links that lead somewhere. Its commands run in tests/test_readme.py."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

MKDOCS = Path(sys.executable).parent / "mkdocs"
README_MAX_LINES = 150


def build_site(project: Path, site: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2, on every build
    return subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(project / "mkdocs.yml"), "--site-dir",
                           str(site)], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_the_reference_pages_match_the_code(tmp_path):
    proc = subprocess.run([sys.executable, "docs/gen_reference.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    committed = ROOT / "docs" / "reference"
    assert sorted(p.name for p in committed.glob("*.md")) == sorted(p.name for p in tmp_path.glob("*.md")), \
        "docs/reference/ holds other pages than docs/gen_reference.py writes: run `make docs`"
    for fresh in sorted(tmp_path.glob("*.md")):
        old = (committed / fresh.name).read_text(encoding="utf-8").splitlines()
        diff = list(difflib.unified_diff(old, fresh.read_text(encoding="utf-8").splitlines(),
                                         f"docs/reference/{fresh.name}", "generated now", lineterm="", n=0))
        assert not diff, (f"docs/reference/{fresh.name} is stale: run `make docs` and commit it\n"
                          + "\n".join(diff[:40]))


def test_the_site_builds_strictly_with_every_page(tmp_path):
    proc = build_site(ROOT, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    site = tmp_path / "site"
    assert "train.micro_batch_size" in (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    # bench/RESULTS.md is included, not copied: a snippet that stopped resolving would show its marker.
    results = (site / "benchmarks" / "results" / "index.html").read_text(encoding="utf-8")
    assert "Bonsai vs TRL" in results and "--8&lt;--" not in results
    assert (site / "report_planted.png").is_file() and not (site / "gen_reference.py").exists()


def test_a_broken_link_or_a_page_out_of_the_nav_fails_the_build(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy(ROOT / "mkdocs.yml", project)
    (project / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "RESULTS.md", project / "bench")
    with open(project / "docs" / "how-to" / "evaluate.md", "a", encoding="utf-8") as page:
        page.write("\nSee [the old page](../no-such-page.md) and [a lost section](../getting-started.md#nowhere).\n")
    (project / "docs" / "orphan.md").write_text("# Not in the navigation\n", encoding="utf-8")
    proc = build_site(project, tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr and "#nowhere" in proc.stderr and "orphan.md" in proc.stderr, \
        proc.stderr[-3000:]


def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, "the README is read in five minutes: move details to docs/"
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert len(targets) >= 20, "the README links into the docs"
    broken = [t for t in targets if not t.startswith(("http://", "https://")) and not (ROOT / t).exists()]
    assert not broken, broken
