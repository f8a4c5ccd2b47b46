"""Write a small training corpus from text already on the machine: this Python's standard library.

Each selected module becomes two jsonl documents with a "text" key: its source code, and its
docstrings (module, classes, functions) joined as prose. No downloads; deterministic order.

    python examples/pretrain_gpt/stdlib_corpus.py --output corpus.jsonl --max-files 400
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sysconfig

# Directories that are mostly test fixtures, vendored code or GUI sources.
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "ensurepip",
             "tkinter", "turtledemo", "__pycache__", "distutils", "pydoc_data"}


def stdlib_files(root: str) -> list[str]:
    """The standard library's .py files under root, sorted, skipping SKIP_DIRS."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return sorted(out)


def docstrings(source: str) -> str:
    """Module, class and function docstrings of one source file, blank-line separated."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    docs = [ast.get_docstring(n) for n in nodes]
    return "\n\n".join(d for d in docs if d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="jsonl file to write")
    parser.add_argument("--max-files", type=int, default=0, help="0: every file")
    parser.add_argument("--max-bytes", type=int, default=200_000, help="skip larger source files")
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"])
    args = parser.parse_args()

    files = [f for f in stdlib_files(args.root) if os.path.getsize(f) <= args.max_bytes]
    if args.max_files:
        # an even spread over the library rather than its alphabetical head
        step = max(1, len(files) // args.max_files)
        files = files[::step][:args.max_files]
    docs, chars = 0, 0
    with open(args.output + ".tmp", "w", encoding="utf-8") as out:
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                source = f.read()
            for text in (source, docstrings(source)):
                if text.strip():
                    out.write(json.dumps({"text": text}) + "\n")
                    docs, chars = docs + 1, chars + len(text)
    os.replace(args.output + ".tmp", args.output)   # a half-written corpus is never reused
    print(f"stdlib_corpus: {len(files)} files from {args.root} -> {docs} documents, "
          f"{chars / 1e6:.1f}M characters in {args.output}")


if __name__ == "__main__":
    main()
