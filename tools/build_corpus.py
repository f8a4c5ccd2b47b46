"""Build a real-text corpus for GPT-size runs from Debian documentation packages, offline.

    python tools/build_corpus.py --out-dir data/debian_docs          # ~25-29M tokens, < 60 MB

Downloads the documentation packages in SOURCES with `apt-get download` (Debian's package
registry, the one network a fresh machine has; nothing is installed: each .deb is unpacked
with `dpkg-deb -x` into a scratch folder), turns their reStructuredText, AsciiDoc, HTML, man
pages and POD into plain text (tools/corpus_text.py), drops short, non-English and non-prose
files and exact duplicates, orders the documents by a hash of their name (so every split mixes
every package), trains a sentencepiece BPE tokenizer (tools/train_tokenizer.py, --vocab-size
32768) and tokenizes the documents that fit --max-tokens into Megatron .bin/.idx
(tools/preprocess_data.py). Writes into --out-dir:

    tokenizer.model            --tokenizer-type SentencePieceTokenizer --tokenizer-model ...
    debian_docs_text_document.{bin,idx}   --data-path <out-dir>/debian_docs_text_document
    corpus.json                packages and versions, licenses, documents, characters, tokens

Downloaded .deb files are kept in <out-dir>/debs and reused, so a rebuild needs no network;
without them and without a reachable registry the tool stops with one line saying so.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.corpus_text import looks_like_prose, to_text  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "debian_docs"


@dataclass(frozen=True)
class Source:
    """One Debian package: which of its files become documents, and how to read them."""

    package: str           # a package, or a metapackage whose first dependency is the real one
    patterns: tuple        # globs inside the unpacked package
    kind: str              # text | html | roff | pod (tools/corpus_text.py)
    license: str
    exclude: tuple = ()    # path substrings left out
    deb_glob: str = ""     # a metapackage's real .deb file name (default: <package>_*.deb)


SOURCES = (
    Source("linux-doc", ("usr/share/doc/linux-doc-*/Documentation/**/*.rst.gz",
                         "usr/share/doc/linux-doc-*/Documentation/**/*.txt.gz"), "text",
           "GPL-2.0 (some files GPL-2.0+, LGPL-2.1, MIT or CC-BY-4.0, as marked in them)",
           ("/translations/",), "linux-doc-[0-9]*_*.deb"),
    Source("python3-doc", ("usr/share/doc/python3.*/html/_sources/**/*.rst.txt",), "text",
           "PSF License Version 2", deb_glob="python3.[0-9]*-doc_*.deb"),
    Source("perl-doc", ("usr/share/perl/*/pod/*.pod",), "pod", "GPL-1+ or Artistic"),
    Source("postgresql-doc", ("usr/share/doc/postgresql-doc-*/html/*.html",), "html", "PostgreSQL License",
           deb_glob="postgresql-doc-[0-9]*_*.deb"),
    Source("manpages", ("usr/share/man/man*/*.gz",), "roff",
           "Linux man-pages licenses (Linux-man-pages-copyleft, GPL-2+, BSD and others, per page)"),
    Source("manpages-dev", ("usr/share/man/man*/*.gz",), "roff",
           "Linux man-pages licenses (Linux-man-pages-copyleft, GPL-2+, BSD and others, per page)"),
    Source("git-doc", ("usr/share/doc/git-doc/*.txt",), "text", "GPL-2.0"),
    Source("python-django-doc", ("usr/share/doc/python-django-doc/html/**/*.html",), "html", "BSD-3-Clause",
           ("/_modules/", "/genindex", "/py-modindex", "/search.html")),
    Source("python-sqlalchemy-doc", ("usr/share/doc/python-sqlalchemy-doc/**/*.rst",), "text", "MIT (Expat)"),
    Source("sphinx-doc", ("usr/share/doc/sphinx-doc/html/_sources/**/*.rst.txt",), "text", "BSD-2-Clause"),
    Source("cmake-doc", ("usr/share/doc/cmake-data/html/_sources/**/*.rst.txt",), "text", "BSD-3-Clause"),
    Source("nodejs-doc", ("usr/share/doc/nodejs/api/*.md.gz",), "text", "MIT (Expat)"),
    Source("erlang-doc", ("usr/share/doc/erlang-doc/**/*.html",), "html", "Apache-2.0"),
    Source("python-pandas-doc", ("usr/share/doc/python-pandas-doc/html/_sources/**/*.rst.txt",), "text",
           "BSD-3-Clause"),
    Source("apache2-doc", ("usr/share/doc/apache2-doc/manual/**/*.html",), "html", "Apache-2.0",
           (".html.", "/mod/directives", "/sitemap")),
    Source("debian-policy", ("usr/share/doc/debian-policy/*.txt.gz",), "text", "GPL-2+"),
    Source("developers-reference", ("usr/share/developers-reference/_sources/*.rst.txt",), "text",
           "MIT (Expat)"),
    Source("debian-reference-en", ("usr/share/debian-reference/*.en.html",), "html", "GPL-2+"),
    Source("gnu-standards", ("usr/share/doc/gnu-standards/*.text.gz",), "text",
           "GFDL-1.3+ (no invariant sections)"),
)


class CorpusError(RuntimeError):
    """A known problem (no registry, no package): printed as one line, exit code 2."""


# --- packages ----------------------------------------------------------------------------------
def _apt(argv: list, cwd: str = None) -> str:
    """stdout of an apt command; CorpusError with its last error line when it fails."""
    if shutil.which(argv[0]) is None:
        raise CorpusError(f"{argv[0]} not found: this tool needs Debian's apt and dpkg-deb")
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit {proc.returncode}"
        raise CorpusError(f"`{' '.join(argv)}` failed: {why}")
    return proc.stdout


def resolve(package: str) -> str:
    """The package itself, or the first dependency of a metapackage (linux-doc -> linux-doc-6.1)."""
    try:
        out = _apt(["apt-cache", "depends", package])
    except CorpusError as e:
        raise CorpusError(f"package {package} is unknown to apt ({e}); run `apt-get update` "
                          "(Debian's package lists) or pass --deb-dir with the .deb files") from None
    deps = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith("Depends:")]
    real = [d for d in deps if d.startswith(package.rsplit("-", 1)[0]) and not d.startswith("<")]
    show = _apt(["apt-cache", "show", "--no-all-versions", package])
    size = next((int(ln.split()[1]) for ln in show.splitlines() if ln.startswith("Installed-Size:")), 0)
    return real[0] if real and size < 100 else package   # a metapackage installs (almost) nothing


def fetch(source: Source, deb_dir: str) -> str:
    """Path of the source's .deb in deb_dir, downloaded with `apt-get download` unless present."""
    pattern = source.deb_glob or f"{source.package}_*.deb"
    hits = sorted(glob.glob(os.path.join(deb_dir, pattern)))
    if hits:
        return hits[-1]
    real = resolve(source.package)
    try:
        _apt(["apt-get", "download", real], cwd=deb_dir)
    except CorpusError as e:
        raise CorpusError(f"cannot download {real} from Debian's package registry ({e}); reach the "
                          "registry or pass --deb-dir with the .deb files") from None
    hits = sorted(glob.glob(os.path.join(deb_dir, pattern)))
    if not hits:
        raise CorpusError(f"apt-get download {real} wrote no {pattern} into {deb_dir}")
    return hits[-1]


# --- documents -----------------------------------------------------------------------------------
def documents(source: Source, deb: str, scratch: str):
    """(name, text) of every kept file of one package, unpacked into scratch."""
    root = os.path.join(scratch, os.path.basename(deb))
    _apt(["dpkg-deb", "-x", deb, root])
    files = sorted({f for pat in source.patterns for f in glob.glob(os.path.join(root, pat), recursive=True)})
    for path in files:
        rel = os.path.relpath(path, root)
        if any(x in rel for x in source.exclude) or not os.path.isfile(path):
            continue
        text = to_text(path, source.kind)
        if text and looks_like_prose(text):
            yield f"{source.package}:{rel}", text
    shutil.rmtree(root, ignore_errors=True)


def collect(debs: dict, scratch: str) -> tuple:
    """Deduplicated documents ordered by a hash of their name, and per-package counts."""
    seen, docs, counts = set(), [], {}
    for source in SOURCES:
        n = chars = 0
        for name, text in documents(source, debs[source.package], scratch):
            key = hashlib.sha1(" ".join(text.split()).encode()).hexdigest()
            if key in seen:
                continue
            seen.add(key)
            docs.append((hashlib.sha1(name.encode()).hexdigest(), name, text))
            n, chars = n + 1, chars + len(text)
        counts[source.package] = {"documents": n, "chars": chars}
        print(f"build_corpus: {source.package}: {n} documents, {chars / 1e6:.1f}M characters", flush=True)
    docs.sort()
    return [(name, text) for _, name, text in docs], counts


def count_tokens(model: str, texts: list) -> list:
    """Tokens of each text (+1 for the end-of-document token preprocess_data appends)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model)
    return [len(ids) + 1 for ids in sp.encode(texts, num_threads=os.cpu_count() or 1)]


def write_jsonl(path: str, docs: list) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for name, text in docs:
            f.write(json.dumps({"text": text, "source": name}) + "\n")
    os.replace(path + ".tmp", path)


def _run_tool(argv: list, what: str) -> None:
    print(f"build_corpus: {what}", flush=True)
    subprocess.run([sys.executable] + argv, check=True, cwd=REPO)


def select(docs: list, tokens: list, max_tokens: int) -> tuple:
    """The documents in order while they fit max_tokens; their token count."""
    total, n = 0, 0
    for count in tokens:
        if total + count > max_tokens:
            break
        total, n = total + count, n + 1
    return docs[:n], total


def build(args) -> dict:
    """Every step; returns what corpus.json records."""
    start = time.time()
    out_dir = os.path.abspath(args.out_dir)
    deb_dir = os.path.abspath(args.deb_dir or os.path.join(out_dir, "debs"))
    os.makedirs(deb_dir, exist_ok=True)
    debs = {s.package: fetch(s, deb_dir) for s in SOURCES}      # every package first: fail early
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".unpack-") as scratch:
        docs, counts = collect(debs, scratch)
    tokenizer = os.path.join(out_dir, "tokenizer.model")
    corpus = os.path.join(out_dir, f"{NAME}.jsonl")
    write_jsonl(corpus, docs)
    if not os.path.exists(tokenizer):   # reused: delete it to retrain on another package set
        _run_tool([os.path.join(REPO, "tools", "train_tokenizer.py"), "--input", corpus, "--json-keys",
                   "text", "--output-prefix", tokenizer[:-len(".model")], "--model-type", "bpe",
                   "--vocab-size", str(args.vocab_size), "--byte-fallback",
                   "--input-sentence-size", str(args.tokenizer_sentences)],
                  f"sentencepiece BPE tokenizer, vocab {args.vocab_size} -> {tokenizer}")
    kept, total = select(docs, count_tokens(tokenizer, [t for _, t in docs]), args.max_tokens)
    write_jsonl(corpus, kept)
    prefix = os.path.join(out_dir, NAME)
    _run_tool([os.path.join(REPO, "tools", "preprocess_data.py"), "--input", corpus, "--json-keys", "text",
               "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer, "--append-eod",
               "--output-prefix", prefix, "--workers", str(args.workers), "--log-interval", "0"],
              f"tokenizing {len(kept)} documents ({total / 1e6:.1f}M tokens) -> {prefix}_text_document")
    os.remove(corpus)
    data = f"{prefix}_text_document"
    size_mb = sum(os.path.getsize(data + ext) for ext in (".bin", ".idx")) / 2**20
    return {"data_path": data, "tokenizer_model": tokenizer, "vocab_size": args.vocab_size,
            "documents": len(kept), "documents_available": len(docs), "tokens": total,
            "chars": sum(len(t) for _, t in kept), "bin_idx_mb": round(size_mb, 2),
            "seconds": round(time.time() - start, 1),
            "packages": [{"package": s.package, "deb": os.path.basename(debs[s.package]),
                          "license": s.license, **counts[s.package]} for s in SOURCES],
            "command": "python tools/build_corpus.py " + " ".join(sys.argv[1:])}


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join("data", NAME), help="output folder [data/debian_docs]")
    p.add_argument("--deb-dir", default=None, help=".deb files (reused; downloaded here) [<out-dir>/debs]")
    p.add_argument("--vocab-size", type=int, default=32768, help="tokenizer vocabulary [32768]")
    p.add_argument("--max-tokens", type=int, default=28_000_000,
                   help="documents kept while they fit (uint16 tokens: 2 bytes each) [28000000]")
    p.add_argument("--tokenizer-sentences", type=int, default=1_000_000,
                   help="lines sentencepiece samples to train the tokenizer [1000000]")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        meta = build(args)
    except CorpusError as e:
        print(f"build_corpus: error: {e}", file=sys.stderr)
        return 2
    path = os.path.join(args.out_dir, "corpus.json")
    with open(path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"build_corpus: {meta['documents']} documents, {meta['tokens'] / 1e6:.1f}M tokens, "
          f"{meta['bin_idx_mb']:.1f} MB .bin/.idx in {meta['seconds']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
