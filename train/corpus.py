#!/usr/bin/env python3
"""Build the training corpus from permissively licensed software documentation.

Sources (see SOURCES / DEB_SOURCES below, and data/corpus.json for versions and sizes):

* the Rust documentation installed with the toolchain (`$(rustc --print sysroot)/share/doc/rust/html`,
  rustup's `rust-docs` component): The Rust Programming Language, Rust by Example (English pages
  only), The Rust Reference, the Rustonomicon, the Edition Guide, the Cargo, rustc and rustdoc
  books, the style guide, the unstable book, the compiler error index and the `std`, `core` and
  `alloc` API documentation (without the platform intrinsics). MIT / Apache-2.0 (COPYRIGHT.html
  next to them). The embedded book (text under CC-BY-SA) and the source viewer are not used;
* Debian documentation packages under permissive licences (PSF, PostgreSQL, public domain,
  MIT, BSD, Apache-2.0, Zsh): the Python 3.11 documentation, the PostgreSQL 15 manual, the
  SQLite documentation, Django, Node.js, Erlang/OTP, CMake, LLVM and Clang, the Apache HTTP
  Server manual, zsh, Sphinx and the manuals of a number of Python libraries (SQLAlchemy,
  Flask, pandas, SciPy, scikit-learn, ...). `fetch` downloads them with `apt-get download`
  (no root needed; run `apt-get update` first on a fresh machine) into --cache and unpacks them
  with `dpkg -x`. The licence of each package is the one its `copyright` file states for the
  documentation; packages whose documentation is under CC-BY-SA, GFDL or GPL are not used.

Stages (all run by default):

1. fetch: apt-get download + dpkg -x of the Debian packages (skipped when already unpacked).
2. extract: HTML -> markdown-like plain text. Only the main content region of a page is kept
   (mdBook <main>, rustdoc doc blocks, Sphinx's role="main" body, ...); navigation, buttons,
   sidebars, hidden example lines, anchors, maths and tables are dropped; long code blocks are
   dropped, short ones kept in ``` fences. Paragraphs repeated anywhere earlier are removed
   (the same text appears on many pages). Also builds question/answer pairs from section
   headings and from API items, rendered later with the Qwen3.6 chat template so that
   chat-mode prompts see familiar text.
3. tokenizer: trains the byte-level BPE (train/tokenizer.py) on the text.
4. tokens: encodes documents and chat pairs, shuffled with a fixed seed, each followed by
   <|endoftext|>, into uint16 token files: `train.bin.xz` (xz-compressed, read by train.py with
   Python's lzma) and `val.bin` (raw).

Outputs (under --out, default train/data): corpus.txt, chat.jsonl, docs.jsonl (regenerable,
ignored by git), train.bin.xz, val.bin, corpus.json (sources, versions, licences, sizes). The
tokenizer goes to --tokenizer-dir (default train/tokenizer).

Usage: python train/corpus.py [--docs DIR] [--cache DIR] [--out DIR] [--only-rust] [--stages ...]
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import lzma
import os
import random
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent

LICENCE = "MIT OR Apache-2.0 (Rust project documentation, see COPYRIGHT.html in the docs folder)"

# Rust docs: (name, folder under html/, kind). Order = order in corpus.txt.
SOURCES = [
    ("book", "book", "mdbook"),
    ("rust-by-example", "rust-by-example", "mdbook"),
    ("reference", "reference", "mdbook"),
    ("nomicon", "nomicon", "mdbook"),
    ("edition-guide", "edition-guide", "mdbook"),
    ("cargo", "cargo", "mdbook"),
    ("rustc", "rustc", "mdbook"),
    ("rustdoc", "rustdoc", "mdbook"),
    ("style-guide", "style-guide", "mdbook"),
    ("unstable-book", "unstable-book", "mdbook"),
    ("error-codes", "error_codes", "mdbook"),
    ("std", "std", "rustdoc"),
    ("core", "core", "rustdoc"),
    ("alloc", "alloc", "rustdoc"),
]

# Debian documentation packages: (name, package, HTML root inside the package, mode,
# path regex of pages to skip (relative to the root), licence of the documentation as the
# package's copyright file states it). Sphinx's `_modules` (highlighted source), `_sources`,
# generated indexes and search pages are skipped everywhere.
_U = "usr/share/doc/"
DEB_SOURCES = [
    ("python", "python3.11-doc", _U + "python3.11/html", "sphinx", r"^(whatsnew/changelog|about|bugs|license|copyright)\.html$",
     "PSF-2.0 (Python Software Foundation License; code examples 0BSD)"),
    ("postgresql", "postgresql-doc-15", _U + "postgresql-doc-15/html", "body", r"^(release-|bookindex|biblio|docguide)",
     "PostgreSQL License (BSD-like)"),
    ("sqlite", "sqlite3-doc", _U + "sqlite3", "body", r"^(releaselog/|changes\.html|chronology|doclist|sitemap|keyword_index|copyright|mostdeployed|famous|consortium|prosupport|support|news|download)",
     "public domain"),
    ("django", "python-django-doc", _U + "python-django-doc/html", "sphinx", r"^(releases/[0-3]\.[0-9]\.[0-9]|releases/1|internals/deprecation)",
     "BSD-3-Clause"),
    ("nodejs", "nodejs-doc", _U + "nodejs/api", "id:apicontent", r"^(all|index)\.html$", "MIT (Expat)"),
    ("erlang", "erlang-doc", _U + "erlang-doc", "id:content",
     r"(^lib/(wx|jinterface|megaco|diameter|snmp|eldap|odbc|os_mon|otp_mibs|et|reltool|observer|debugger|common_test/doc/html/ct_hooks_chapter|asn1|orber)|/notes\.html$|/java/|/pdf/)",
     "Apache-2.0"),
    ("cmake", "cmake-doc", _U + "cmake-data/html", "sphinx", r"^(release/|variable/CMAKE_[A-Z_]*_(POLICY_|COMPILER_|VISIBILITY|POSITION))",
     "BSD-3-Clause (cmake-data's copyright file; cmake-doc links its doc folder there)"),
    ("llvm", "llvm-15-doc", _U + "llvm-15-doc/html", "sphinx", r"^(AMDGPU|ReleaseNotes|doxygen)",
     "Apache-2.0 WITH LLVM-exception"),
    ("clang", "clang-15-doc", _U + "clang-15/html", "sphinx", r"^(ReleaseNotes|AttributeReference|DiagnosticsReference|ClangCommandLineReference|doxygen)",
     "Apache-2.0 WITH LLVM-exception"),
    ("apache-httpd", "apache2-doc", _U + "apache2-doc/manual/en", "id:page-content", r"^(mod/quickreference|sitemap|glossary|new_features|upgrading)",
     "Apache-2.0"),
    ("zsh", "zsh-doc", _U + "zsh-common/html", "body", r"^(index|zsh_toc|zsh_abt|Concept-Index|Variables-Index|Options-Index|Functions-Index|Editor-Functions-Index|Style-and-Tag-Index|The-Z-Shell-Manual)",
     "Zsh (MIT-like; zsh-common's copyright file)"),
    ("sphinx", "sphinx-doc", _U + "sphinx-doc/html", "sphinx", r"^(changes|examples)", "BSD-2-Clause"),
    ("sqlalchemy", "python-sqlalchemy-doc", _U + "python-sqlalchemy-doc/html", "sphinx", r"^(changelog/)", "MIT (Expat)"),
    ("flask", "python-flask-doc", _U + "python-flask-doc/html", "sphinx", r"^(changes|license)", "BSD-3-Clause"),
    ("werkzeug", "python-werkzeug-doc", _U + "python-werkzeug-doc/html", "sphinx", r"^(changes|license)", "BSD-3-Clause"),
    ("jinja", "python-jinja2-doc", _U + "python-jinja2-doc/html", "sphinx", r"^(changes|license)", "BSD-3-Clause"),
    ("click", "python-click-doc", _U + "python-click-doc/html", "sphinx", r"^(changes|license)", "BSD-3-Clause"),
    ("requests", "python-requests-doc", _U + "python-requests-doc/html", "sphinx", r"^(community/updates)", "Apache-2.0"),
    ("pytest", "python-pytest-doc", _U + "python-pytest-doc/html", "sphinx", r"^(announce/|changelog|contributing|backwards)", "MIT (Expat)"),
    ("setuptools", "python-setuptools-doc", _U + "python-setuptools-doc/html", "sphinx", r"^(history)", "MIT (Expat)"),
    ("kombu", "python-kombu-doc", _U + "python-kombu-doc/html", "sphinx", r"^(changelog)", "BSD-3-Clause"),
    ("tornado", "python-tornado-doc", _U + "python-tornado-doc/html", "sphinx", r"^(releases)", "Apache-2.0"),
    ("aiohttp", "python-aiohttp-doc", _U + "python-aiohttp-doc/html", "sphinx", r"^(changes|_snippets)", "Apache-2.0"),
    ("cryptography", "python-cryptography-doc", _U + "python-cryptography-doc/html", "sphinx", r"^(changelog|development/custom-vectors)",
     "Apache-2.0 OR BSD-3-Clause"),
    ("ipython", "python-ipython-doc", _U + "python-ipython-doc/html", "sphinx", r"^(whatsnew/(version[0-7]|github-stats))", "BSD-3-Clause"),
    ("scrapy", "python-scrapy-doc", _U + "python-scrapy-doc/html", "sphinx", r"^(news)", "BSD-3-Clause"),
    ("xarray", "python-xarray-doc", _U + "python-xarray-doc/html", "sphinx", r"^(whats-new|generated/)", "Apache-2.0"),
    ("dask", "python-dask-doc", _U + "python-dask-doc/html", "sphinx", r"^(changelog|generated/)", "BSD-3-Clause"),
    ("sympy", "python-sympy-doc", _U + "python-sympy-doc/html", "sphinx", r"^(modules/physics/quantum)", "BSD-3-Clause"),
    ("scipy", "python-scipy-doc", _U + "python-scipy-doc/html", "sphinx", r"^(release|reference/generated/scipy\.(special|stats\.[a-z_]+\.(pdf|cdf|logpdf|rvs|stats|ppf)))",
     "BSD-3-Clause"),
    ("pandas", "python-pandas-doc", _U + "python-pandas-doc/html", "sphinx", r"^(whatsnew/|reference/api/pandas\.[A-Za-z.]*\.(dt|str|cat|sparse|plot)\.|generated/)",
     "BSD-3-Clause"),
    ("scikit-learn", "python-sklearn-doc", _U + "python-sklearn-doc/html", "sphinx", r"^(whats_new|auto_examples/.*\.ipynb)", "BSD-3-Clause"),
    ("astropy", "python-astropy-doc", _U + "python-astropy-doc/html", "sphinx", r"^(changelog|whatsnew/[0-4])", "BSD-3-Clause"),
    ("twisted", "twisted-doc", _U + "twisted-doc/html", "sphinx", r"^(api/|.*/NEWS|.*historic)", "MIT (Expat)"),
    ("ghc-users-guide", "ghc-doc", _U + "ghc-doc/html/users_guide", "sphinx", r"^(\d|[0-9.]+-notes)", "BSD-3-Clause"),
    ("ironic", "ironic-doc", _U + "ironic-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("keystone", "keystone-doc", _U + "keystone-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("cinder", "cinder-doc", _U + "cinder-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("heat", "heat-doc", _U + "heat-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("neutron", "neutron-doc", _U + "neutron-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("glance", "glance-doc", _U + "glance-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("nova", "nova-doc", _U + "nova-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("manila", "manila-doc", _U + "manila-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("octavia", "octavia-doc", _U + "octavia-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("openstackclient", "python-openstackclient-doc", _U + "python-openstackclient-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("openstacksdk", "python-openstacksdk-doc", _U + "python-openstacksdk-doc/html", "sphinx", r"^(contributor/api|api/|admin/api|contributor/modules|configuration/.*sample|.*/autoindex)", "Apache-2.0"),
    ("numba", "numba-doc", _U + "numba-doc/html", "sphinx", r"^(release-notes)", "BSD-2-Clause"),
    ("borgbackup", "borgbackup-doc", _U + "borgbackup/html", "sphinx", r"^(changes|authors)", "BSD-3-Clause"),
    ("openvswitch", "openvswitch-doc", _U + "openvswitch-doc/html", "sphinx", r"^(faq/releases|internals/authors)", "Apache-2.0"),
    ("snakemake", "snakemake-doc", _U + "snakemake/html", "sphinx", r"^(project_info/history)", "MIT (Expat)"),
    ("varnish", "varnish-doc", _U + "varnish/html", "sphinx", r"^(whats-new/changes)", "BSD-2-Clause"),
    ("distributed", "python-distributed-doc", _U + "python-distributed-doc/html", "sphinx", r"^(changelog)", "BSD-3-Clause"),
    ("gevent", "python-gevent-doc", _U + "python-gevent-doc/html", "sphinx", r"^(changelog)", "MIT (Expat)"),
    ("cherrypy", "python-cherrypy3-doc", _U + "python-cherrypy3-doc/html", "sphinx", r"^(history|pkg/)", "BSD-3-Clause"),
    ("mpmath", "python-mpmath-doc", _U + "python-mpmath-doc/html", "sphinx", "", "BSD-3-Clause"),
    ("pyparsing", "python-pyparsing-doc", _U + "python-pyparsing-doc/html", "sphinx", r"^(CHANGES)", "MIT (Expat)"),
    ("rdflib", "python-rdflib-doc", _U + "python-rdflib-doc/html", "sphinx", r"^(apidocs/)", "BSD-3-Clause"),
    ("pytables", "python-tables-doc", _U + "python-tables-doc/html", "sphinx", r"^(release-notes|release_notes)", "BSD-3-Clause"),
    ("behave", "python-behave-doc", _U + "python-behave-doc/html", "sphinx", r"^(changelog)", "BSD-2-Clause"),
    ("pymongo", "python-pymongo-doc", _U + "python-pymongo-doc/html", "sphinx", r"^(changelog)", "Apache-2.0"),
    ("peewee", "python-peewee-doc", _U + "python-peewee-doc/html", "sphinx", "", "MIT (Expat)"),
    ("notebook", "python-notebook-doc", _U + "python-notebook-doc/html", "sphinx", r"^(changelog)", "BSD-3-Clause"),
    ("traitlets", "python-traitlets-doc", _U + "python-traitlets-doc/html", "sphinx", r"^(changelog)", "BSD-3-Clause"),
    ("selenium", "python-selenium-doc", _U + "python-selenium-doc/html", "sphinx", "", "Apache-2.0"),
    ("scikit-image", "python-skimage-doc", _U + "python-skimage-doc/html", "sphinx", r"^(release_notes|api/)", "BSD-3-Clause"),
    ("sortedcontainers", "python-sortedcontainers-doc", _U + "python-sortedcontainers-doc/html", "sphinx", r"^(history)", "Apache-2.0"),
    ("xonsh", "xonsh-doc", _U + "xonsh-doc/html", "sphinx", r"^(api/|changelog)", "BSD-2-Clause"),
    ("nim", "nim-doc", _U + "nim/html", "id:content", r"^(theindex|lib|overview)\.html$", "MIT (Expat)"),
    ("django-rest-framework", "python-djangorestframework-doc", _U + "python3-djangorestframework/html", "id:main-content",
     r"^(community/release-notes|community/(funding|jobs|kickstarter|mozilla))", "BSD-2-Clause"),
    ("docutils", "docutils-doc", _U + "docutils-doc/docs", "body", r"^(dev/todo|dev/release)", "public domain"),
    ("scons", "scons-doc", _U + "scons/HTML", "body", r"^(index|pr01)\.html$", "MIT (Expat)"),
    ("ant", "ant-doc", _U + "ant/manual", "body", r"^(api/|toc|tasklist|tasksoverview|anttaskslist|conceptstypeslist|developlist|installlist|cover)", "Apache-2.0"),
    ("swi-prolog", "swi-prolog-doc", "usr/share/swi-prolog/doc/Manual", "body", r"^(DocIndex|summary|sec-A|libpl|foreign|license)", "BSD-2-Clause"),
]
SPHINX_SKIP = re.compile(r"(^|/)(_modules|_sources|_static|_images|_downloads|_sphinx_design_static)/|(^|/)(genindex[-\w]*|search|py-modindex|np-modindex|objects)\.html$")

SKIP_FILES = {"print.html", "toc.html", "404.html", "searchindex.html", "all.html", "index.html"}
# rustdoc sub-trees that are nearly all machine-generated or platform intrinsics.
SKIP_DIRS = {"arch", "intrinsics", "simd", "os", "2018-edition", "first-edition", "second-edition"}

VOID = {"br", "hr", "img", "input", "meta", "link", "wbr", "area", "base", "col", "embed", "source", "track"}
BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "dt", "dd", "blockquote", "div", "section",
          "ul", "ol", "dl", "summary", "details", "table", "main", "article", "aside"}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
MAX_CODE_LINES = 30

# Classes / ids dropped in the documentation packages (navigation, sidebars, permalinks, maths).
SKIP_CLASSES = {
    "headerlink", "sphinxsidebar", "sphinxsidebarwrapper", "related", "footer", "toctree-wrapper",
    "prev-next-area", "prev-next-footer", "bd-sidebar", "bd-sidebar-primary", "bd-sidebar-secondary", "bd-toc",
    "bd-header", "bd-footer", "navbar", "rst-footer-buttons", "wy-breadcrumbs", "wy-nav-side", "viewcode-link",
    "copybtn", "math", "MathJax", "sphx-glr-download", "sphx-glr-footer", "sphx-glr-script-out",
    "sphx-glr-timing", "sphx-glr-thumbnails", "sphx-glr-signature", "navheader", "navfooter", "toc", "lot",
    "nosearch", "menu", "imgcontainer", "fancy_toc", "tagline", "toplang", "bottomlang", "up", "top",
    "title-anchors", "title-since", "leftnav-tube", "topbar", "header", "nav-panel", "api_stability_2",
    "version-switcher", "language_switcher_placeholder", "version_switcher_placeholder", "inline-search",
    "doc-anchor", "searchbox", "docs-navigation-links", "docs-sidebar", "docs-top-navigation",
    "pagination", "breadcrumb", "breadcrumbs", "edit-this-page", "sourcelink", "graphviz", "footnote-return",
    "navigate", "three",
}
SKIP_IDS = {"quickview", "footer", "page-header", "path", "toc", "gtoc", "column2", "leftnav", "searchmenu",
            "submenu", "tocRoot", "searchInputDiv", "global-links", "sidebarInclude", "table-of-contents",
            "mkdocs_search_modal", "docs-sidebar", "docs-top-navigation-container", "docs-bottom-navigation", "sidebar",
            "navigation", "sidebar-wrapper", "version_switcher", "page-footer", "sitemap"}


def region_start(mode: str, tag: str, a: dict, cls: list) -> bool:
    """Does this element open the page's main content in this mode?"""
    if mode == "mdbook":
        return tag == "main"
    if mode == "rustdoc":
        return tag == "div" and "docblock" in cls
    if mode == "sphinx":
        return (a.get("role") == "main" or (tag == "div" and ("body" in cls or a.get("id") == "docs-body"))
                or a.get("itemprop") == "articleBody" or (tag == "article" and "bd-article" in cls))
    if mode.startswith("id:"):  # the element with this id
        return a.get("id") == mode[3:]
    return tag == "body"  # "body" (minus navigation, headers, footers)


class Extract(HTMLParser):
    """HTML -> list of blocks (kind, text). kind: 'h1'..'h6', 'p', 'li', 'code', 'item' (rustdoc
    code header)."""

    def __init__(self, mode: str):
        super().__init__(convert_charrefs=True)
        self.mode = mode  # 'mdbook' | 'rustdoc'
        self.stack: list[tuple[str, bool, bool, bool]] = []  # (tag, skip, region, item header)
        self.skip = 0
        self.region = 0
        self.blocks: list[tuple[str, str]] = []
        self.buf: list[str] = []
        self.kind = "p"
        self.in_pre = 0
        self.lang = "en"
        self.title = ""
        self.in_title = False
        self.header_depth = 0  # inside rustdoc h4.code-header / Sphinx dt.sig
        self.header_buf: list[str] = []

    # -- helpers -------------------------------------------------------------------------------
    def flush(self):
        text = "".join(self.buf)
        self.buf = []
        if self.kind == "code":
            lines = [l.rstrip() for l in text.strip("\n").split("\n")]
            if lines and any(l.strip() for l in lines):
                self.blocks.append(("code", "\n".join(lines)))
        else:
            text = re.sub(r"\s+", " ", text).strip()
            if text:
                self.blocks.append((self.kind, text))
        self.kind = "p"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "html":
            self.lang = (a.get("lang") or "en").lower()
        if tag == "title":
            self.in_title = True
        if tag in VOID:
            if tag == "br" and self.active():
                self.buf.append("\n" if self.in_pre else " ")
            return
        skip = (
            tag in ("script", "style", "nav", "button", "noscript", "template", "table", "svg", "form")
            or "boring" in cls
            or "test-arrow" in cls
            or "doc-anchor" in cls
            or "rightside" in cls
            or "hideme" in cls
            or "since" in cls
            or "buttons" in cls
            or "stab" in cls  # rustdoc stability badges
            or "tooltip" in cls
            or "sidebar" in cls
            or a.get("aria-hidden") == "true"
        )
        if self.mode not in ("mdbook", "rustdoc"):
            skip = skip or tag in ("header", "footer", "math") or a.get("id") in SKIP_IDS or any(
                c in SKIP_CLASSES for c in cls) or a.get("role") in ("navigation", "search")
        region = region_start(self.mode, tag, a, cls)
        header = (self.mode == "rustdoc" and tag == "h4" and "code-header" in cls) or (
            self.mode == "sphinx" and tag == "dt" and "sig" in cls)
        self.header_depth += header
        self.stack.append((tag, skip, region, header))
        self.skip += skip
        self.region += region
        if not self.active():
            return
        if tag in BLOCKS or tag in HEADINGS:
            self.flush()
            if tag in HEADINGS:
                self.kind = tag
            elif tag == "li":
                self.kind = "li"
            elif tag == "pre":
                self.kind = "code"
                self.in_pre += 1
            elif tag in ("dt",):
                self.kind = "li"
        elif tag == "code" and not self.in_pre:
            self.buf.append("`")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in VOID:
            return
        # pop to the matching tag (tolerates a few unclosed inline tags)
        idx = None
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                idx = i
                break
        if idx is None:
            return
        while len(self.stack) > idx:
            t, skip, region, header = self.stack.pop()
            was_active = self.active()
            if was_active:
                if t in BLOCKS or t in HEADINGS:
                    self.flush()
                    if t == "pre":
                        self.in_pre = max(0, self.in_pre - 1)
                elif t == "code" and not self.in_pre:
                    self.buf.append("`")
            if header:
                self.header_depth -= 1
                if self.header_depth == 0:
                    h = re.sub(r"\s+", " ", "".join(self.header_buf)).strip()
                    self.header_buf = []
                    if h:
                        self.blocks.append(("item", h))
            self.skip -= skip
            self.region -= region

    def active(self):
        return self.region > 0 and self.skip == 0

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        if self.header_depth and self.skip == 0:
            self.header_buf.append(data)
        if self.active():
            self.buf.append(data)


def blocks_to_text(blocks):
    """Blocks -> markdown-like text. Long code blocks are dropped."""
    out = []
    for kind, text in blocks:
        if kind == "item":
            continue
        if kind in HEADINGS:
            text = re.sub(r"\s*[¶#]+$", "", text)  # permalink marks
            if text:
                out.append("#" * HEADINGS[kind] + " " + text)
        elif kind == "li":
            out.append("- " + text)
        elif kind == "code":
            if text.count("\n") + 1 > MAX_CODE_LINES:
                continue
            out.append("```\n" + text + "\n```")
        else:
            out.append(text)
    return out


def norm_key(par: str) -> str:
    return hashlib.sha1(re.sub(r"\s+", " ", par.lower()).strip().encode()).hexdigest()


def question_from_heading(h: str, rng: random.Random) -> str | None:
    h = h.strip().rstrip(".:¶#").strip()
    # section numbers ("2.6. Joins Between Tables", "F.3. amcheck", "Chapter 5. ...")
    h = re.sub(r"^(Chapter|Appendix|Part)?\s*([0-9]+|[A-Z]|[IVX]+)(\.[0-9]+)*\.?\s+", "", h).strip()
    if len(h) < 4 or len(h) > 80 or h.lower() in {"examples", "example", "panics", "errors", "safety",
                                                  "summary", "introduction", "foreword", "see also"}:
        return None
    if h.endswith("?"):
        return h
    forms = ["Tell me about {}.", "Explain {}.", "What should I know about {}?", "Can you describe {}?"]
    keep = {"Rust", "Cargo", "I", "Unicode", "Rustdoc", "Clippy", "Windows", "Linux", "macOS"}
    words = [w if (w in keep or not re.fullmatch(r"[A-Z][a-z]+", w)) else w.lower() for w in h.split()]
    return rng.choice(forms).format(" ".join(words))


def mdbook_pairs(blocks, rng):
    """Question/answer pairs: a section heading as the question, its first prose paragraphs
    (up to ~600 characters) as the answer."""
    pairs = []
    i = 0
    while i < len(blocks):
        kind, text = blocks[i]
        if kind in ("h1", "h2", "h3"):
            q = question_from_heading(text, rng)
            ans = []
            j = i + 1
            taking = True
            while j < len(blocks) and blocks[j][0] not in HEADINGS:
                if blocks[j][0] != "p":
                    taking = False
                elif taking and len(" ".join(ans)) < 600:
                    ans.append(blocks[j][1])
                j += 1
            while ans and ans[-1].endswith(":"):
                ans.pop()
            if q and ans and len(ans[0]) > 60:
                pairs.append({"q": q, "a": "\n\n".join(ans)})
            i = j
        else:
            i += 1
    return pairs


def rustdoc_pairs(title, path, blocks, rng):
    """'What does X::f do?' -> the first paragraph of f's docs; 'What is X?' -> the item's
    first paragraph."""
    pairs = []
    m = re.match(r"([\w]+) in ([\w:]+) - Rust", title)
    item = m.group(1) if m else None
    item_kind = path.name.split(".")[0] if "." in path.name else ""
    if item_kind not in ("struct", "enum", "trait", "fn", "macro", "type", "primitive", "union", "constant"):
        item = None
    last_item = None
    seen_top = False
    for kind, text in blocks:
        if kind == "item":
            fm = re.match(r".*?\bfn (\w+)", text)
            last_item = fm.group(1) if fm else None
            continue
        if kind != "p" or len(text) < 20 or text.endswith(":"):
            continue
        if not seen_top and item and last_item is None:
            noun = {"fn": "function", "type": "type alias", "primitive": "primitive type"}.get(item_kind, item_kind)
            q = rng.choice(["What is `{1}` in Rust?", "What is the {0} `{1}`?", "Explain `{1}`."])
            q = q.format(noun, item)
            pairs.append({"q": q, "a": text})
            seen_top = True
        elif last_item and item:
            q = rng.choice(["What does `{0}::{1}` do?", "How does `{1}` on `{0}` work?",
                            "What is `{0}::{1}` for?"]).format(item, last_item)
            pairs.append({"q": q, "a": text})
            last_item = None
    return pairs


def item_pairs(blocks, rng):
    """Sphinx API items: 'What does `json.dumps()` do?' -> the first paragraph of its docs."""
    pairs = []
    name = None
    for kind, text in blocks:
        if kind == "item":
            sig = re.sub(r"^(abstract |async |class |exception |classmethod |staticmethod |method |static |"
                         r"function |attribute |property |data |module |final |type )+", "", text.strip())
            m = re.match(r"([A-Za-z_][\w.]*)(\s*\()?", sig)
            name = (m.group(1) + ("()" if m.group(2) else "")) if m else None
            if name and len(name) > 60:
                name = None
            continue
        if name and kind == "p" and len(text) >= 40 and not text.endswith(":"):
            q = rng.choice(["What does `{0}` do?", "What is `{0}` for?", "Explain `{0}`."] if name.endswith("()")
                           else ["What is `{0}`?", "Explain `{0}`.", "What is `{0}` used for?"]).format(name)
            pairs.append({"q": q, "a": text})
            name = None
        elif kind in HEADINGS:
            name = None
    return pairs


def iter_pages(root: Path, folder: str):
    base = root / folder
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not (
            folder == "rust-by-example" and d in {"es", "ja", "ko", "zh", "fr", "de", "pt-BR"}))
        for f in sorted(filenames):
            if f.endswith(".html") and f not in SKIP_FILES:
                yield Path(dirpath) / f


def iter_deb_pages(base: Path, skip: str):
    skip_re = re.compile(skip) if skip else None
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for f in sorted(filenames):
            if not f.endswith((".html", ".htm")) or (f in SKIP_FILES and f != "index.html"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), base)
            if SPHINX_SKIP.search(rel) or (skip_re and skip_re.search(rel)):
                continue
            yield Path(dirpath) / f


def parse_page(job):
    """(path, mode) -> (path, html bytes, blocks, title, lang) or None (redirect stub, parse error)."""
    page, mode = job
    raw = Path(page).read_text(encoding="utf-8", errors="replace")
    if "http-equiv=\"refresh\"" in raw[:2000] or len(raw) < 500:
        return None  # redirect stubs
    p = Extract(mode)
    try:
        p.feed(raw)
        p.close()
    except Exception as e:  # noqa: BLE001
        print(f"skip {page}: {e}", file=sys.stderr)
        return None
    p.flush()
    if mode not in ("mdbook", "rustdoc", "body") and sum(len(t) for k, t in p.blocks if k != "item") < 200:
        # no main-content element recognised: fall back to the whole <body>
        p = Extract("body")
        p.feed(raw)
        p.close()
        p.flush()
    return page, len(raw), p.blocks, p.title, p.lang


def extract(jobs, out: Path, seed: int, workers: int = 0):
    """jobs: [(source name, mode, root, [pages])] in corpus order."""
    import multiprocessing as mp

    rng = random.Random(seed)
    seen: set[str] = set()
    docs, pairs, stats = [], [], {}
    t0 = time.time()
    workers = workers or os.cpu_count() or 1
    pool = mp.Pool(workers) if workers > 1 else None
    try:
        for name, mode, root, pages in jobs:
            n_pages = n_html = n_chars = 0
            it = (pool.imap(parse_page, [(str(pg), mode) for pg in pages], chunksize=4) if pool
                  else map(parse_page, [(str(pg), mode) for pg in pages]))
            for r in it:
                if r is None:
                    continue
                page, n_raw, blocks, title, lang = r
                page = Path(page)
                n_html += n_raw
                if lang != "en" and not lang.startswith("en"):
                    continue
                kept = []
                for par in blocks_to_text(blocks):
                    if len(par) < 3:
                        continue
                    if len(par) >= 30:
                        k = norm_key(par)
                        if k in seen:
                            continue
                        seen.add(k)
                    kept.append(par)
                # A page must keep some prose (not only headings/code) to count as a document.
                prose = sum(len(x) for x in kept if not x.startswith(("#", "```")))
                if prose < 200:
                    continue
                text = "\n\n".join(kept)
                docs.append({"source": name, "path": str(page.relative_to(root)), "text": text})
                if mode == "rustdoc":
                    pairs += [dict(x, source=name) for x in rustdoc_pairs(title, page, blocks, rng)]
                else:
                    pairs += [dict(x, source=name) for x in mdbook_pairs(blocks, rng)]
                    if mode == "sphinx":
                        pairs += [dict(x, source=name) for x in item_pairs(blocks, rng)]
                n_pages += 1
                n_chars += len(text)
            stats[name] = {"pages": n_pages, "html_bytes": n_html, "text_chars": n_chars}
            print(f"  {name:16s} pages {n_pages:5d}  html {n_html / 1e6:7.1f} MB  text {n_chars / 1e6:6.2f} MB"
                  f"  ({time.time() - t0:.0f}s)", flush=True)
    finally:
        if pool:
            pool.close()
    # dedupe pairs by answer
    uniq, seen_a = [], set()
    for x in pairs:
        k = norm_key(x["a"])
        if k not in seen_a:
            seen_a.add(k)
            uniq.append(x)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.txt", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(d["text"])
            f.write("\n\n<|endoftext|>\n\n")
    with open(out / "chat.jsonl", "w", encoding="utf-8") as f:
        for x in uniq:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
    with open(out / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"source": d["source"], "path": d["path"], "chars": len(d["text"])}) + "\n")
    return docs, uniq, stats


def fetch_debs(cache: Path, names=None):
    """apt-get download + dpkg -x each package of DEB_SOURCES into cache/<package> (once).
    Returns {package: {version, source, installed_kib, deb_bytes}}."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, pkg, *_ in DEB_SOURCES:
        if names and name not in names:
            continue
        dest = cache / pkg
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            print(f"  apt-get download {pkg}", flush=True)
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if r.returncode != 0 or not found:
                raise SystemExit(f"apt-get download {pkg} failed (run `apt-get update` first?):\n{r.stderr}")
        deb = found[-1]
        if not (dest / ".unpacked").exists():
            dest.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
            (dest / ".unpacked").write_text(deb.name + "\n")
        fields = subprocess.check_output(["dpkg-deb", "-f", str(deb), "Package", "Version", "Source",
                                          "Installed-Size"], text=True)
        f = dict(l.split(": ", 1) for l in fields.strip().splitlines() if ": " in l)
        info[pkg] = {"version": f.get("Version"), "source_package": (f.get("Source") or pkg).split(" ")[0],
                     "installed_kib": int(f.get("Installed-Size", 0)), "deb_bytes": deb.stat().st_size,
                     "deb": deb.name}
    return info


# --------------------------------------------------------------------------------------------
# Token files
# --------------------------------------------------------------------------------------------

def chat_ids(tok, q, a, think: bool):
    """Ids of one chat exchange exactly as the engine would see it: the prompt rendered by the
    Qwen3.6 template (generation prompt, thinking on or off) encoded on its own, then the
    answer the model should produce, ending with <|im_end|>."""
    prompt = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    if think:
        prompt += "<think>\n"
        completion = f"\n</think>\n\n{a}<|im_end|>"
    else:
        prompt += "<think>\n\n</think>\n\n"
        completion = f"{a}<|im_end|>"
    return tok.encode(prompt).ids + tok.encode(completion).ids


def build_tokens(out: Path, tok_dir: Path, max_train_tokens: int, val_frac: float, seed: int,
                 chat_frac: float):
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    assert tok.get_vocab_size() <= 65535
    text = (out / "corpus.txt").read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    pairs = [json.loads(l) for l in (out / "chat.jsonl").read_text(encoding="utf-8").splitlines() if l]
    rng = random.Random(seed)
    t0 = time.time()
    enc_docs = [ids + [eot] for ids in (e.ids for e in tok.encode_batch(docs))]
    n_doc_tokens = sum(len(x) for x in enc_docs)
    # Chat exchanges: about chat_frac of the tokens (thinking-mode prompt in 3 of 4).
    rng.shuffle(pairs)
    enc_chat, n_chat = [], 0
    for x in pairs:
        if n_chat >= chat_frac * n_doc_tokens:
            break
        ids = chat_ids(tok, x["q"], x["a"], think=rng.random() < 0.75) + [eot]
        enc_chat.append(ids)
        n_chat += len(ids)
    print(f"  encoded {len(enc_docs)} documents ({n_doc_tokens} tokens) and {len(enc_chat)} chat"
          f" exchanges ({n_chat} tokens) in {time.time() - t0:.0f}s", flush=True)
    items = enc_docs + enc_chat
    rng.shuffle(items)
    n_val_target = int(val_frac * (n_doc_tokens + n_chat))
    val, train, n_val = [], [], 0
    for ids in items:
        if n_val < n_val_target:
            val.append(ids)
            n_val += len(ids)
        else:
            train.append(ids)
    def flat(xs):
        return np.concatenate([np.asarray(ids, dtype=np.uint16) for ids in xs]) if xs else np.zeros(0, np.uint16)
    tr, va = flat(train), flat(val)
    if max_train_tokens and len(tr) > max_train_tokens:
        tr = tr[:max_train_tokens]
    # train: xz-compressed (the repository travels to the GPU machine with a size limit); train.py
    # reads train.bin.xz with the standard library's lzma. val: raw (small).
    t0 = time.time()
    xz = lzma.compress(tr.tobytes(), format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    (out / "train.bin.xz").write_bytes(xz)
    if (out / "train.bin").exists():
        (out / "train.bin").unlink()  # an older uncompressed copy (train.py would prefer it)
    va.tofile(out / "val.bin")
    print(f"  train.bin.xz {len(xz) / 1e6:.1f} MB ({len(tr)} tokens, {time.time() - t0:.0f}s), "
          f"val.bin {va.nbytes / 1e6:.2f} MB", flush=True)
    return {"documents": len(enc_docs), "document_tokens": n_doc_tokens, "chat_exchanges": len(enc_chat),
            "chat_tokens": n_chat, "train_tokens": int(len(tr)), "val_tokens": int(len(va)),
            "train_bin_bytes": int(tr.nbytes), "train_bin_xz_bytes": len(xz), "val_bin_bytes": int(va.nbytes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=None, help="the Rust html folder (default: from rustc)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "qwgpu-train-docs", help="where the Debian packages are downloaded and unpacked")
    ap.add_argument("--only-rust", action="store_true", help="the Rust documentation only (the first corpus)")
    ap.add_argument("--sources", nargs="+", default=None, help="names of the Debian sources to use (default: all)")
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--tokenizer-dir", type=Path, default=HERE / "tokenizer")
    ap.add_argument("--vocab", type=int, default=8192, help="total vocabulary incl. special tokens")
    ap.add_argument("--max-train-tokens", type=int, default=0, help="cap on the train tokens (0 = all)")
    ap.add_argument("--val-frac", type=float, default=0.01)
    ap.add_argument("--chat-frac", type=float, default=0.12, help="chat tokens / document tokens")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=0, help="HTML parsing processes (default: all cores)")
    ap.add_argument("--stages", nargs="+", default=["fetch", "extract", "tokenizer", "tokens"],
                    choices=["fetch", "extract", "tokenizer", "tokens"])
    args = ap.parse_args()

    root = args.docs
    if root is None:
        sysroot = subprocess.check_output(["rustc", "--print", "sysroot"], text=True).strip()
        root = Path(sysroot) / "share/doc/rust/html"
    deb_sources = [] if args.only_rust else [x for x in DEB_SOURCES if not args.sources or x[0] in args.sources]
    meta_path = args.out / "corpus.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    deb_info = meta.get("debian_packages", {})
    if "fetch" in args.stages and deb_sources:
        print(f"fetching {len(deb_sources)} Debian documentation packages into {args.cache}", flush=True)
        deb_info = fetch_debs(args.cache, {x[0] for x in deb_sources})
    if "extract" in args.stages:
        print(f"extracting from {root}" + (f" and {args.cache}" if deb_sources else ""), flush=True)
        try:
            rustc = subprocess.check_output(["rustc", "--version"], text=True).strip()
        except Exception:  # noqa: BLE001
            rustc = "unknown"
        jobs = [(name, mode, root, list(iter_pages(root, folder))) for name, folder, mode in SOURCES]
        for name, pkg, rel, mode, skip, _lic in deb_sources:
            base = args.cache / pkg / rel
            if not base.is_dir():
                raise SystemExit(f"{base} missing: run the fetch stage")
            jobs.append((name, mode, base, list(iter_deb_pages(base, skip))))
        docs, pairs, stats = extract(jobs, args.out, args.seed, args.workers)
        sources = {}
        for name, folder, _mode in SOURCES:
            sources[name] = dict(origin="rust-docs", folder=folder, licence=LICENCE, **stats[name])
        for name, pkg, rel, mode, _skip, lic in deb_sources:
            d = deb_info.get(pkg, {})
            sources[name] = dict(origin="debian", package=pkg, source_package=d.get("source_package"),
                                 version=d.get("version"), licence=lic, folder="/" + rel,
                                 deb_bytes=d.get("deb_bytes"), **stats[name])
        meta = {
            "source": "Rust documentation shipped with the toolchain (rustup component rust-docs)"
                      + (" and Debian 12 (bookworm) documentation packages" if deb_sources else ""),
            "toolchain": rustc,
            "licence": "permissive only (MIT, Apache-2.0, BSD, PSF-2.0, PostgreSQL, Zsh, public domain); "
                       "per source below",
            "sources": sources,
            "debian_packages": {k: v for k, v in deb_info.items() if any(x[1] == k for x in deb_sources)},
            "documents": len(docs),
            "chat_pairs": len(pairs),
            "text_bytes": (args.out / "corpus.txt").stat().st_size,
        }
    if "tokenizer" in args.stages:
        sys.path.insert(0, str(HERE))
        from tokenizer import train_tokenizer

        print(f"training tokenizer (vocab {args.vocab})", flush=True)
        train_tokenizer([args.out / "corpus.txt"], args.tokenizer_dir, args.vocab)
        meta["tokenizer_vocab"] = args.vocab
    if "tokens" in args.stages:
        print("encoding", flush=True)
        meta["tokens"] = build_tokens(args.out, args.tokenizer_dir, args.max_train_tokens, args.val_frac,
                                      args.seed, args.chat_frac)
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k not in ("sources", "debian_packages")}, indent=2))


if __name__ == "__main__":
    main()
