"""Settings of the search collection environment."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SearchEnvConfig:
    action_timeout_s: float = 30.0           # one search or page fetch
    # Built-in corpora (debian: apt package descriptions; python: python3-doc; man: man pages).
    sources: list[str] = field(default_factory=lambda: ["debian", "python", "man"])  # built-in corpora
    corpus_dirs: list[str] = field(default_factory=list)  # extra folders of .md/.txt/.rst/.html
    cache_dir: str = "~/.cache/lwm/search"   # the index is built once here and reused
    top_k: int = 5                           # web_search results per query by default
    max_batch: int = 8                       # queries per batched web_search call
    max_page_chars: int = 8000               # web_extractor truncates longer pages
