"""The documentation a newcomer reads: its reference tables are the code's, its links
lead somewhere, and nothing in the repository sends the reader outside it."""

from __future__ import annotations

import fnmatch
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from stack import reference

REPO = Path(__file__).resolve().parents[1]


# --- (a) generated blocks ---------------------------------------------------------------


def test_every_generated_block_matches_its_source():
    assert reference.problems() == []


def test_every_table_is_shown_on_its_page():
    expected = {
        "config": "docs/configuration.md",
        "metrics": "docs/metrics.md",
        "alerts": "docs/alerts.md",
        "time-to-detect": "docs/alerts.md",
        "capacity": "docs/capacity.md",
    }
    assert set(expected) == set(reference.GENERATORS)
    for name, page in expected.items():
        text = (REPO / page).read_text()
        match = next(m for m in reference.BLOCK.finditer(text) if m["name"] == name)
        assert match["body"].startswith("| "), (page, name)


def _copy_docs(tmp_path: Path) -> Path:
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    return tmp_path


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stack.reference", "--check", "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_names_the_page_that_drifted_and_a_rewrite_fixes_it(tmp_path):
    root = _copy_docs(tmp_path)
    assert _check(root).returncode == 0
    page = root / "docs" / "metrics.md"
    page.write_text(page.read_text().replace("| `worker_jobs_total` | counter |", "| x | y |"))
    done = _check(root)
    assert done.returncode == 1
    assert "docs/metrics.md" in done.stderr
    assert "docs/alerts.md" not in done.stderr
    rewrite = subprocess.run(
        [sys.executable, "-m", "stack.reference", "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rewrite.stdout.strip() == "rewrote docs/metrics.md"
    assert _check(root).returncode == 0
    assert page.read_text() == (REPO / "docs" / "metrics.md").read_text()


def test_a_threshold_changed_in_config_libsonnet_makes_the_alerts_page_stale():
    tables = {name: gen() for name, gen in reference.GENERATORS.items()}
    tables["alerts"] = reference.alerts_table(
        {"alerts": {"HighJobFailureRate": {"threshold": 0.2}}}
    )
    assert "threshold: 0.2" in tables["alerts"]
    assert reference.problems(tables=tables) == ["docs/alerts.md: generated blocks are stale"]


def test_a_removed_block_and_an_unknown_block_are_reported(tmp_path):
    root = _copy_docs(tmp_path)
    page = root / "docs" / "capacity.md"
    page.write_text(page.read_text().replace("GENERATED: capacity", "GENERATED: capacty"))
    done = _check(root)
    assert done.returncode == 1
    assert "docs/capacity.md: unknown generated block 'capacty'" in done.stderr
    assert "no page has a generated block 'capacity'" in done.stderr


def test_the_config_table_shows_a_field_description_and_its_bounds():
    table = reference.config_table()
    assert (
        "| `RETRY_JITTER` | `0.2` | 0 to 0.5 | Half-width of the random factor each retry "
        "delay is multiplied by. |" in table
    )
    assert "| `REDIS_URL` (secret) | (required) |" in table
    assert "| `ENVIRONMENT` or `NODE_ENV` | `development` |" in table


def test_every_setting_has_a_description():
    from worker.config import Settings

    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


# --- (b) links and anchors ----------------------------------------------------------------

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_MD = MarkdownIt("commonmark").enable("table")


def _slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    tokens = _MD.parse(path.read_text())
    found: set[str] = set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            text = "".join(child.content for child in tokens[i + 1].children or [])
            slug, n = _slug(text), 1
            while slug in found:  # a repeated heading gets -1, -2, ...
                slug, n = f"{_slug(text)}-{n}", n + 1
            found.add(slug)
    return found


def _links(path: Path) -> list[str]:
    links = []
    for token in _MD.parse(path.read_text()):
        for child in token.children or []:
            if child.type == "link_open":
                links.append(child.attrs["href"])
            elif child.type == "image":
                links.append(child.attrs["src"])
    return links


def _broken(path: Path, root: Path = REPO) -> list[str]:
    broken = []
    for href in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", href):  # http:, https:, mailto: ...
            continue
        target, _, anchor = href.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.is_relative_to(root) or not resolved.exists():
            broken.append(f"{href}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{href}: no heading with anchor #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert _broken(page) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    root = _copy_docs(tmp_path)
    page = root / "docs" / "probe.md"
    page.write_text(
        "# Probe\n\n[ok](#probe) [ok](alerts.md#time-to-detect) [gone](nothing.md) "
        "[bad anchor](alerts.md#no-such-heading) ![img](img/none.png) [out](../../x.md)\n"
    )
    (tmp_path / "x.md").write_text("# Outside docs/ but inside the root\n")
    (tmp_path.parent / "x.md").write_text("# Outside the root\n")
    assert _broken(page, root) == [
        "nothing.md: no such file",
        "alerts.md#no-such-heading: no heading with anchor #no-such-heading",
        "img/none.png: no such file",
        "../../x.md: no such file",
    ]
    assert _broken(root / "docs" / "alerts.md", root) == []


#: The README's first lines: the two commands, as they always were.
COMMANDS = [
    "```sh",
    "./scripts/up      # bring up the stack: Docker Compose when an engine runs, "
    "else the same topology as local processes",
    "./scripts/test    # install what is missing (venv, redis-server, prometheus, "
    "alertmanager, rabbitmq-server), lint, run every test",
    "```",
]


def test_the_readme_is_a_landing_page_that_links_every_docs_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    start = lines.index(COMMANDS[0])
    assert start < 10 and lines[start : start + 4] == COMMANDS
    linked = {href.partition("#")[0] for href in _links(REPO / "README.md")}
    pages = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")}
    assert pages <= linked, pages - linked


def _map_of(readme: str, package: str) -> list[str]:
    """The lines of the README's map of the tree (``## The parts``) about ``package``: its
    own line and the indented lines below it."""
    block = readme.split("## The parts", 1)[1].split("```", 2)[1].splitlines()
    start = next(i for i, line in enumerate(block) if line.startswith(f"{package}/"))
    end = next(
        (i for i in range(start + 1, len(block)) if block[i][:1] not in ("", " ")), len(block)
    )
    return block[start:end]


def unmapped(readme: str, package: str) -> list[str]:
    """Modules of ``package`` the README's map names neither by file (``config.py``,
    ``brokers/redis.py``, ``twin_*.py``) nor by their folder (``middleware/``)."""
    lines = _map_of(readme, package)
    names = set(
        re.findall(r"[\w*/.-]+\.py|[\w-]+/", "\n".join([lines[0][len(package) + 1 :]] + lines[1:]))
    )
    modules = sorted(
        str(path.relative_to(REPO / package))
        for path in (REPO / package).rglob("*.py")
        if not path.name.startswith("__")
    )
    return [
        module
        for module in modules
        if not any(
            fnmatch.fnmatch(module, name) or (name.endswith("/") and module.startswith(name))
            for name in names
        )
    ]


@pytest.mark.parametrize("package", ["worker", "stack"])
def test_the_readme_maps_every_module(package):
    assert unmapped((REPO / "README.md").read_text(), package) == []


def test_the_map_check_finds_a_module_left_out():
    readme = (REPO / "README.md").read_text()
    edited = readme.replace("  metrics.py  ", "  m.py  ", 1)
    assert set(unmapped(edited, "worker")) - set(unmapped(readme, "worker")) == {"metrics.py"}


# --- (c) nothing points outside the repository --------------------------------------------

# Built from parts so that this file does not match itself.
OUTSIDE = ("DESIGN" + ".md", "../" + "shared", "/work/" + "shared")


@functools.cache
def _repository_texts() -> dict[str, str]:
    """Every text file of the checkout (tracked or new, not ignored), by path."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    texts = {}
    for name in files:
        path = REPO / name
        if path.is_file():
            try:
                texts[name] = path.read_text()
            except UnicodeDecodeError:
                continue  # images
    return texts


def test_no_file_points_outside_the_repository():
    found = [
        f"{name}: {word}"
        for name, text in _repository_texts().items()
        for word in OUTSIDE
        if word in text
    ]
    assert found == []


def test_every_docs_page_a_file_cites_exists():
    """Comments in the compose file, the configs and the code send readers to docs/ pages
    (not to README sections: the README is a landing page)."""
    found = [
        f"{name}: {page}"
        for name, text in _repository_texts().items()
        # Vendored upstream files cite their own projects' docs/ pages.
        if not name.startswith("deploy/kubernetes/schema/")
        for page in re.findall(r"\bdocs/[\w/.-]+\.md", text)
        if not (REPO / page).is_file()
    ]
    assert found == []


# --- paths and modules the pages name ---------------------------------------------------

#: Top-level folders of the repository: a code span starting with one names a file of it.
TOP = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")} - {
    "build",
}
_PATH = re.compile(r"[\w.-]+(/[\w.*-]*)+")
_MODULE = re.compile(r"(?:worker|stack|alerts|dashboards|tests|bench)(\.\w+)+")


def _code_words(path: Path) -> list[str]:
    """Inline code spans whole, and the words of code blocks (commands name files too)."""
    words = []
    for token in _MD.parse(path.read_text()):
        if token.type in ("fence", "code_block"):
            words += token.content.split()
        words += [child.content for child in token.children or [] if child.type == "code_inline"]
    return words


def _module_exists(dotted: str) -> bool:
    """`worker.ratelimit.RateLimiter` exists when worker/ratelimit.py does (the rest may be
    attributes)."""
    first, second, *_ = dotted.split(".")
    package = REPO / first
    return (package / second).is_dir() or (package / f"{second}.py").is_file()


def _ignored(relative: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", relative], cwd=REPO, check=False)
    return done.returncode == 0


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_and_module_a_page_names_exists(page):
    missing = []
    for word in _code_words(page):
        if _PATH.fullmatch(word) and word.split("/")[0] in TOP:
            found = any(REPO.glob(word)) if "*" in word else (REPO / word).exists()
            if not found and not _ignored(word):
                missing.append(word)
        elif _MODULE.fullmatch(word) and not _module_exists(word):
            missing.append(word)
    assert missing == []
