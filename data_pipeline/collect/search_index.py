"""The search domain's corpus and its BM25 index (tantivy), built once into a cache and reused.

The corpus is real text already on a Debian machine, addressed by the URLs it has on the web so
results read like web results:
  debian  the long descriptions of every package apt knows (`apt-cache dumpavail`)
          -> https://packages.debian.org/<suite>/<package>
  python  the Python documentation sources (apt: python3-doc)
          -> https://docs.python.org/3/<path>.html
  man     manual pages under /usr/share/man -> https://manpages.debian.org/<suite>/<name>.<section>
  dirs    any folder of .md/.txt/.rst/.html files a user names (collect.search.corpus_dirs)
          -> file://<absolute path>
Each document is stored whole (url, title, body, date, kind, path) so `page(url)` needs no
second store. The cache key hashes the sources and their files' sizes and mtimes, so an apt
update or an edited folder builds a new index; concurrent workers build it once under a lock.
"""

from __future__ import annotations

import fcntl
import glob
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import tantivy

PYTHON_DOCS = Path("/usr/share/doc/python3-doc/html/_sources")
MAN_ROOT = Path("/usr/share/man")
APT_LISTS = Path("/var/lib/apt/lists")
DOC_EXTS = (".md", ".txt", ".rst", ".html", ".htm")
INDEX_VERSION = 2   # bump when the document layout changes (2: URLs name the release, not its security archive)


@dataclass
class Doc:
    url: str
    title: str
    body: str
    date: str
    kind: str        # debian | python | man | file: how page() renders it
    path: str = ""   # the source file, for pages rendered on demand


# --- readers ---------------------------------------------------------------------------------

def _apt_date() -> tuple[str, str]:
    """(suite, YYYY-MM-DD) of the apt lists: the release's codename and the date its package
    index was published. The release itself (bookworm), not an archive on top of it
    (bookworm-security, bookworm-updates), whose list files sort first by name."""
    found = []
    for release in sorted(APT_LISTS.glob("*InRelease")):
        text = release.read_text(errors="replace")
        name = re.search(r"^Codename: (\S+)", text, re.M) or re.search(r"^Suite: (\S+)", text, re.M)
        date = re.search(r"^Date: (.+)$", text, re.M)
        if date:
            when = time.strptime(date.group(1).strip().replace(" UTC", ""), "%a, %d %b %Y %H:%M:%S")
            found.append((name.group(1) if name else "stable", time.strftime("%Y-%m-%d", when)))
    if not found:
        return "stable", ""
    return min(found, key=lambda f: ("-" in f[0], f[0]))


def _mdate(path: Path) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))


def fetch_descriptions(cache_dir: str) -> Path:
    """Download apt's English long descriptions (Translation-en) into the cache, leaving the
    system's apt lists alone (Debian images often set Acquire::Languages "none"). Needs network;
    run once as setup: `python -m data_pipeline.collect.search_index --fetch`."""
    lists = Path(cache_dir).expanduser() / "apt-lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "update", "-qq", f"-oDir::State::Lists={lists}",
                    "-oAcquire::Languages=en",
                    "-oAPT::Sandbox::User=root"], check=True)
    return lists


def _long_descriptions(lists: list[Path]) -> dict[str, str]:
    """Description-md5 -> long description, from every Translation-en file found."""
    out: dict[str, str] = {}
    for d in lists:
        for f in sorted(d.glob("*_i18n_Translation-en*")):
            text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(f)],
                                  capture_output=True, text=True, check=True).stdout
            for stanza in text.split("\n\n"):
                md5 = re.search(r"^Description-md5: (\S+)", stanza, re.M)
                desc = stanza.split("\nDescription-en: ", 1)
                if md5 and len(desc) == 2:
                    out[md5.group(1)] = desc[1].partition("\n")[2]
    return out


def read_debian(cache_dir: str = "") -> Iterator[Doc]:
    suite, date = _apt_date()
    lists = [APT_LISTS] + ([Path(cache_dir).expanduser() / "apt-lists"] if cache_dir else [])
    long_by_md5 = _long_descriptions(lists)
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout
    for stanza in out.split("\n\n"):
        fields, last = {}, None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line[1:]
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        name, desc = fields.get("Package"), fields.get("Description")
        if not name or not desc:
            continue
        short, _, long = desc.partition("\n")
        long = long or long_by_md5.get(fields.get("Description-md5", ""), "")
        long = "\n".join("" if l.strip() == "." else l.strip() for l in long.splitlines())
        meta = {k: fields[k] for k in ("Version", "Section", "Depends", "Homepage", "Maintainer")
                if k in fields}
        body = long + "\n\n" + json.dumps(meta)
        yield Doc(f"https://packages.debian.org/{suite}/{name}", f"{name} - {short}", body,
                  date, "debian")


_RST_HEAD = re.compile(r"^(?P<title>\S.*)\n(?P<rule>([=\-~^\"'*#+])\3{2,})\s*$", re.M)
_RST_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_META = re.compile(r"^\.\. (module|moduleauthor|sectionauthor|index|currentmodule|_[^:]+)::?.*\n"
                       r"(?:   :\w+:.*\n)*", re.M)
_RST_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`_+")


def rst_to_markdown(text: str) -> str:
    """Light reStructuredText to Markdown: headings, roles, links; the rest reads as is."""
    levels: list[str] = []

    def heading(m):
        ch = m.group("rule")[0]
        if ch not in levels:
            levels.append(ch)
        return "#" * min(levels.index(ch) + 1, 6) + " " + m.group("title").strip()
    text = re.sub(r"^([=\-~^\"'*#+])\1{2,}\n(?=\S.*\n\1{3,})", "", text, flags=re.M)  # overlines
    text = _RST_HEAD.sub(heading, text)
    text = _RST_META.sub("", text)
    text = _RST_LINK.sub(r"[\1](\2)", text)
    return _RST_ROLE.sub(r"`\1`", text).replace("``", "`")


def read_python() -> Iterator[Doc]:
    for path in sorted(PYTHON_DOCS.rglob("*.rst.txt")):
        rel = path.relative_to(PYTHON_DOCS).as_posix()[: -len(".rst.txt")]
        text = path.read_text(errors="replace")
        head = _RST_HEAD.search(text)
        title = _RST_ROLE.sub(r"\1", head.group("title")).replace(" --- ", " — ").strip() \
            if head else rel
        yield Doc(f"https://docs.python.org/3/{rel}.html", title, text, _mdate(path), "python",
                  str(path))


_ROFF_ESC = re.compile(r"\\f[BIRP1-9]|\\f\(..|\\\(..|\\[&|^e]|\\s[-+]?\d")


def _roff_text(raw: str) -> str:
    lines = []
    for line in raw.splitlines():
        if line.startswith((".\\\"", "'\\\"")):
            continue
        if line.startswith("."):  # a macro: keep its arguments (.SH NAME, .B word)
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 else ""
        lines.append(_ROFF_ESC.sub("", line.replace("\\-", "-")).replace("\\", ""))
    text = "\n".join(lines)
    # Skip the macro preamble many generators emit: the page proper starts at its NAME section.
    start = re.search(r'^"?NAME"?\s*$', text, re.M)
    return text[start.start():] if start else text


def read_man() -> Iterator[Doc]:
    suite, _ = _apt_date()
    for path in sorted(MAN_ROOT.glob("man[1-8]/*.gz")):
        if path.is_symlink():
            continue
        try:
            raw = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        if raw.startswith(".so "):
            continue  # an alias page
        text = _roff_text(raw)
        name = re.search(r"^\"?NAME\"?\s*\n(.+)", text, re.M)
        page = path.name[: -len(".gz")]
        title = name.group(1).strip() if name else page
        yield Doc(f"https://manpages.debian.org/{suite}/{page}", title, text, _mdate(path),
                  "man", str(path))


def read_dir(root: str) -> Iterator[Doc]:
    for path in sorted(Path(root).expanduser().resolve().rglob("*")):
        if not path.is_file() or path.suffix.lower() not in DOC_EXTS:
            continue
        text = path.read_text(errors="replace")
        if path.suffix.lower() in (".html", ".htm"):
            m = re.search(r"<title>(.*?)</title>", text, re.S | re.I)
            title = html.unescape(m.group(1)).strip() if m else path.stem
            text = html_to_text(text)
        else:
            first = next((l for l in text.splitlines() if l.strip()), path.stem)
            title = first.lstrip("#").strip()[:120]
        yield Doc(path.as_uri(), title, text, _mdate(path), "file", str(path))


def html_to_text(text: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", "", text, flags=re.S | re.I)
    text = re.sub(r"<h([1-6])[^>]*>(.*?)</h\1>", lambda m: "\n" + "#" * int(m.group(1)) + " "
                  + m.group(2) + "\n", text, flags=re.S | re.I)
    text = re.sub(r"<(br|p|div|li|tr)\b[^>]*>", "\n", text, flags=re.I)
    return re.sub(r"\n{3,}", "\n\n", html.unescape(re.sub(r"<[^>]+>", "", text))).strip()


READERS = {"debian": read_debian, "python": read_python, "man": read_man}


# --- the index ---------------------------------------------------------------------------------

def _schema() -> tantivy.Schema:
    b = tantivy.SchemaBuilder()
    b.add_text_field("url", stored=True, tokenizer_name="raw")
    b.add_text_field("title", stored=True, tokenizer_name="en_stem")
    b.add_text_field("body", stored=True, tokenizer_name="en_stem")
    for name in ("date", "kind", "path"):
        b.add_text_field(name, stored=True, tokenizer_name="raw", index_option="basic")
    return b.build()


def _source_key(sources: list[str], dirs: list[str], cache_dir: str = "") -> str:
    """Changes when a source's files change (apt update, python3-doc upgrade, edited folder)."""
    stamp = [INDEX_VERSION, sorted(sources)]
    watched = {"debian": [str(APT_LISTS / "*Packages*"), "/var/lib/dpkg/status"],
               "python": [str(PYTHON_DOCS)], "man": [str(MAN_ROOT / "man1")]}
    if cache_dir:
        watched["debian"].append(str(Path(cache_dir).expanduser() / "apt-lists" / "*Translation*"))
    for s in sorted(sources):
        for pattern in watched[s]:
            stamp += [(p, os.stat(p).st_size, int(os.stat(p).st_mtime)) for p in glob.glob(pattern)]
    for d in sorted(dirs):
        files = [p for p in Path(d).expanduser().resolve().rglob("*") if p.is_file()]
        stamp += [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(files)]
    return hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]


def build(dest: Path, sources: list[str], dirs: list[str], cache_dir: str = "") -> int:
    """Index every document of the sources into `dest`; returns the document count."""
    unknown = set(sources) - set(READERS)
    if unknown:
        raise ValueError(f"unknown search sources {sorted(unknown)} (known: {sorted(READERS)})")
    if "python" in sources and not PYTHON_DOCS.is_dir():
        raise FileNotFoundError(f"{PYTHON_DOCS} missing: apt-get install python3-doc")
    dest.mkdir(parents=True)
    index = tantivy.Index(_schema(), path=str(dest))
    writer = index.writer(heap_size=200_000_000)
    n, seen = 0, set()
    streams = [read_debian(cache_dir) if s == "debian" else READERS[s]() for s in sources]
    streams += [read_dir(d) for d in dirs]
    for stream in streams:
        for doc in stream:
            if doc.url in seen:
                continue
            seen.add(doc.url)
            writer.add_document(tantivy.Document(url=doc.url, title=doc.title, body=doc.body,
                                                 date=doc.date, kind=doc.kind, path=doc.path))
            n += 1
    writer.commit()
    writer.wait_merging_threads()
    return n


def open_index(cache_dir: str, sources: list[str], dirs: list[str]) -> tantivy.Index:
    """The cached index for these sources, built first if missing (once across processes)."""
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"index-{_source_key(sources, dirs, cache_dir)}"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "done.json").exists():
            tmp = root / f".building-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            start = time.monotonic()
            n = build(tmp, sources, dirs, cache_dir)
            (tmp / "done.json").write_text(json.dumps(
                {"docs": n, "sources": sources, "dirs": dirs,
                 "build_s": round(time.monotonic() - start, 2)}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    return tantivy.Index(_schema(), path=str(final), reuse=True)


def plain_text(body: str, kind: str) -> str:
    """The body as prose for snippets: markup, directives and metadata dropped."""
    if kind == "debian":
        return body.split('\n\n{"', 1)[0]
    if kind == "python":
        body = rst_to_markdown(body)
        body = re.sub(r"^(\s*\.\. .*|\s*:\w+:.*|[-=*~^]{4,}|#+ .*)$", "", body, flags=re.M)
    return body.replace('"', "") if kind == "man" else body


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Fetch apt long descriptions and build the index.")
    ap.add_argument("--cache-dir", default="~/.cache/lwm/search")
    ap.add_argument("--fetch", action="store_true", help="download Translation-en first (network)")
    ap.add_argument("--sources", default="debian,python,man")
    a = ap.parse_args()
    if a.fetch:
        fetch_descriptions(a.cache_dir)
    open_index(a.cache_dir, a.sources.split(","), [])
    print(sorted(Path(a.cache_dir).expanduser().glob("index-*/done.json"))[-1].read_text())
