"""What the README and docs/ tell users to import exists, and every link in them lands."""
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "benchmarks" / "README.md"]   # pages whose links are checked
NAMED = [README, *DOCS]                                       # pages whose Python names are checked
README_MAX_LINES = 300


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def _names(text: str) -> set:
    names = set()
    for module, items in re.findall(r"from (mobileclip[\w.]*) import ([\w, ]+)", text):
        names |= {f"{module}.{n.strip()}" for n in items.split(",") if n.strip()}
    names |= set(re.findall(r"`(mobileclip(?:\.\w+)+)", text))                # `mobileclip.distill.LOSSES`
    names |= {m.rstrip("(") for m in re.findall(r"\b(mobileclip\.\w+)\(", text)}  # mobileclip.create_model(
    return names


def test_every_import_and_name_in_the_docs_resolves():
    assert DOCS, "docs/*.md is missing"
    where = {}
    for page in NAMED:
        for n in _names(page.read_text()):
            where.setdefault(n, []).append(page.relative_to(ROOT).as_posix())
    assert len(where) > 15
    missing = []
    for n in sorted(where):
        try:
            _resolve(n)
        except (AttributeError, ModuleNotFoundError):
            missing.append(f"{n} ({', '.join(where[n])})")
    assert not missing, f"named in the README or docs/ but not importable: {missing}"


# --- links -------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _without_fences(text: str) -> str:
    """The text with fenced code blocks blanked (the line count kept)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)[0] * 3
            elif m.group(1).startswith(fence):
                fence = None
            out.append("")
            continue
        out.append("" if fence else line)
    return "\n".join(out)


def _outside_code(text: str) -> str:
    """The text without code: fenced blocks blanked, inline code spans removed."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation other than
    '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)     # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).lower()                    # inline HTML tags
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(text: str) -> set:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen, anchors = {}, set()
    for line in _without_fences(text).split("\n"):     # inline code stays: it is part of the anchor
        m = re.match(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", line)
        if not m:
            continue
        base = _slug(m.group(1))
        n = seen.get(base, -1) + 1
        seen[base] = n
        anchors.add(base if n == 0 else f"{base}-{n}")
    return anchors


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _links(text: str):
    """(line, target) of every inline link outside code."""
    clean = _outside_code(text)
    for m in _LINK.finditer(clean):
        yield clean.count("\n", 0, m.start(1)) + 1, m.group(1)


def test_slug_follows_github():
    assert _slug("Released models (Apple's and open_clip's MobileCLIP / MobileCLIP2)") == \
        "released-models-apples-and-open_clips-mobileclip--mobileclip2"
    assert _slug("Latency benchmarks (`mobileclip bench`)") == "latency-benchmarks-mobileclip-bench"
    assert _slug("Trust: right or refused") == "trust-right-or-refused"
    assert _anchors("# A\n## A\n```\n# A\n```\n### A\n") == {"a", "a-1", "a-2"}


def test_every_relative_link_points_to_an_existing_file_and_heading():
    anchors = {}
    broken, checked = [], 0
    for page in PAGES:
        for line, target in _links(page.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):       # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT).as_posix()}:{line}: {target}"
            checked += 1
            if not dest.exists():
                broken.append(f"{where} (no such file)")
                continue
            if anchor:
                if dest.suffix != ".md" or dest.is_dir():
                    broken.append(f"{where} (an anchor into a file that is not Markdown)")
                    continue
                if dest not in anchors:
                    anchors[dest] = _anchors(dest.read_text())
                if anchor not in anchors[dest]:
                    broken.append(f"{where} (no heading with that anchor)")
    assert checked > 20
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the reference belongs in docs/"


def test_every_docs_page_has_a_title_and_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in DOCS:
        assert page.read_text().startswith("# "), f"{page.name} does not start with a '# Title' line"
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"
            assert f"](docs/{page.name})" in README.read_text(), f"README.md does not link docs/{page.name}"


def test_every_public_name_of_the_documented_packages_imports():
    """What a package lists in ``__all__`` (what the docs may tell users to import from it) exists; the distill
    package holds the sources its documented ``build_cache(teachers, source, ...)`` needs."""
    import importlib

    for name in ("mobileclip", "mobileclip.distill", "mobileclip.export", "mobileclip.runtime"):
        mod = importlib.import_module(name)
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, (name, missing)
    import mobileclip.distill as distill

    assert {"build_cache", "CaptionPairs", "WebDatasetPairs", "SyntheticPairs", "ImageFiles", "TextLines"} <= set(
        distill.__all__)
