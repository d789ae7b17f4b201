"""`builtin:wikipedia`: the English Wikipedia sample that ships inside the gensim wheel, as plain prose.

The dump (`enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`, 106 articles after
redirects are dropped) is real human text that needs no network. Wikitext is stripped with
mwparserfromhell; what `strip_code` would leave behind as noise (reference bodies, image captions
such as `thumb|220px|...`, table cells, category and interlanguage links, template residue, the
reference/external-link sections) is removed first. Parsing takes seconds, so the cleaned
articles are cached under `data/cache/` keyed by a hash of everything that changes them.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import cache_root

DUMP_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Bump when the cleaning rules change: the cache key includes it, so stale caches are not reused.
CLEANER_VERSION = 5

# Level-2 sections that are lists of links or citations, not prose.
_DROPPED_SECTIONS = {
    "references", "external links", "see also", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes", "notes and references", "references and notes",
    "works cited", "literature", "selected works", "gallery", "discography", "filmography",
}
# Links whose "text" is a caption or a pointer elsewhere, never running prose.
_DROPPED_LINK_PREFIX = re.compile(r"^\s*:?\s*(file|image|category|media|wikt|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
# Tags whose contents are citations, maths, code or layout, not sentences of the article.
_DROPPED_TAGS = {"ref", "references", "math", "gallery", "table", "timeline", "imagemap", "score", "code",
                 "source", "syntaxhighlight", "chem", "ce", "hiero", "div"}
_RESIDUE = re.compile(r"\||\{\{|\}\}|\[\[|\]\]|^\s*[!*#:;=]|thumb|px\b|^\W*$")
_LEFTOVER_REF = re.compile(r"<ref[^>]*?/>|<ref[^>]*>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
_LEFTOVER_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>")
_MIN_PARAGRAPH_CHARS = 40  # shorter leftovers are headings, list stubs or broken markup


def dump_path() -> Path:
    """The bz2 dump inside the installed gensim package (the `demo` extra installs gensim)."""
    try:
        from importlib.resources import files

        path = Path(str(files("gensim") / "test" / "test_data" / DUMP_NAME))
    except ModuleNotFoundError:
        raise UserError("corpus.source: builtin:wikipedia needs gensim (pip install -e '.[demo]'); "
                        "or use hf:NAME, files:GLOB or builtin:reference-language") from None
    if not path.is_file():
        raise UserError(f"corpus.source: builtin:wikipedia: {path} is missing from the installed gensim; reinstall gensim>=4.3")
    return path


def iter_articles(path: Path):
    """(title, wikitext) of every main-namespace, non-redirect page, in dump order."""
    with bz2.open(path, "rb") as stream:
        for _, element in ET.iterparse(stream, events=("end",)):
            if element.tag.rsplit("}", 1)[-1] != "page":
                continue
            namespace = element.findtext("{*}ns")
            is_redirect = element.find("{*}redirect") is not None
            text = element.findtext("{*}revision/{*}text") or ""
            if namespace == "0" and not is_redirect and text:
                yield element.findtext("{*}title") or "", text
            element.clear()  # the dump is streamed; keep memory flat


def clean_wikitext(wikitext: str) -> list[str]:
    """Plain-prose paragraphs of one article, in order."""
    import mwparserfromhell

    text = _render(mwparserfromhell.parse(wikitext).nodes, top_level=True)
    # Malformed markup (say, unbalanced '' inside a <ref>) leaves tags as plain text: remove them here.
    text = _LEFTOVER_REF.sub("", text)
    text = _LEFTOVER_TAG.sub("", text)
    text = re.sub(r"'{2,}", "'", text)  # bold/italic quote runs the parser could not pair
    text = re.sub(r"\n{3,}", "\n\n", text)
    return [p for p in (_tidy(block) for block in re.split(r"\n\s*\n", text)) if _is_prose(p)]


def _render(nodes, top_level: bool = False) -> str:
    """Visible text of parsed wikitext, without the noise listed in the module docstring.

    One pass over the tree. (Wikicode.remove() searches the whole tree per call, which made
    cleaning quadratic: ~12 s for the dump instead of ~3 s.)
    """
    from mwparserfromhell import nodes as kinds

    parts: list[str] = []
    skipping_section = False
    for node in nodes:
        if isinstance(node, kinds.Heading):
            if top_level and node.level <= 2:
                title = _render(node.title.nodes).strip().lower()
                skipping_section = node.level == 2 and title in _DROPPED_SECTIONS
            parts.append("\n")  # headings themselves are not prose
        elif skipping_section or isinstance(node, (kinds.Template, kinds.Comment, kinds.Argument)):
            continue
        elif isinstance(node, kinds.Text):
            parts.append(node.value)
        elif isinstance(node, kinds.HTMLEntity):
            parts.append(node.normalize())
        elif isinstance(node, kinds.Wikilink):
            if not _DROPPED_LINK_PREFIX.match(str(node.title)):
                parts.append(_render((node.text if node.text is not None else node.title).nodes))
        elif isinstance(node, kinds.ExternalLink):
            if node.brackets and node.title is not None:  # bare URLs are not prose
                parts.append(_render(node.title.nodes))
        elif isinstance(node, kinds.Tag):
            parts.append(_render_tag(node))
    return "".join(parts)


def _render_tag(tag) -> str:
    name = str(tag.tag).lower()
    if name in _DROPPED_TAGS or tag.wiki_markup == "{|":
        return ""
    if tag.wiki_markup in ("*", "#", ":", ";"):
        return tag.wiki_markup  # a list marker: keeps the line recognisable as a list (dropped by _tidy)
    if tag.self_closing or tag.contents is None:
        return "\n" if name == "br" else ""
    return _render(tag.contents.nodes)


def _tidy(paragraph: str) -> str:
    lines = [line.strip() for line in paragraph.splitlines()]
    text = " ".join(line for line in lines if line and not _RESIDUE.search(line))
    text = re.sub(r"\(\s*[;,]?\s*\)", "", text)  # "( )" left where templates were inside brackets
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _is_prose(paragraph: str) -> bool:
    letters = sum(ch.isalpha() for ch in paragraph)
    return len(paragraph) >= _MIN_PARAGRAPH_CHARS and letters >= 0.6 * len(paragraph)


def group_paragraphs(paragraphs: list[str], min_chars: int) -> list[str]:
    """Consecutive paragraphs joined ("\\n\\n") into documents of at least `min_chars` characters.

    A short tail joins the previous group, so no document is shorter than `min_chars`; an article
    shorter than `min_chars` in total yields nothing. `min_chars` 0 keeps one document per article.
    """
    if min_chars <= 0:
        return ["\n\n".join(paragraphs)] if paragraphs else []
    groups: list[list[str]] = []
    current: list[str] = []
    for paragraph in paragraphs:
        current.append(paragraph)
        if len("\n\n".join(current)) >= min_chars:
            groups.append(current)
            current = []
    if current and groups:
        groups[-1].extend(current)
    return ["\n\n".join(group) for group in groups]


def load_wikipedia(min_chars: int, cache_dir: Path | None = None) -> list[str]:
    """Cleaned articles cut into paragraph groups (see `group_paragraphs`), cached on disk."""
    path = dump_path()
    articles = _cached_articles(path, cache_dir or cache_root())
    return [doc for paragraphs in articles for doc in group_paragraphs(paragraphs, min_chars)]


def _cached_articles(path: Path, cache_dir: Path) -> list[list[str]]:
    # Grouping is cheap, so the cache holds paragraphs per article and every min_chars shares it.
    stat = path.stat()
    key = hashlib.sha256(json.dumps([DUMP_NAME, stat.st_size, CLEANER_VERSION]).encode()).hexdigest()[:16]
    cache_file = cache_dir / f"wikipedia-{key}.json"
    if cache_file.is_file():
        try:
            return json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # a corrupt cache is rebuilt below
    articles = [paragraphs for _, wikitext in iter_articles(path) if (paragraphs := clean_wikitext(wikitext))]
    _write_atomically(cache_file, json.dumps(articles, ensure_ascii=False))
    return articles


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
