"""Merge `.bin/.idx` shards into one pair (Megatron-LM's tools/merge_datasets.py).

    python tools/merge_datasets.py --input data/shards --output-prefix data/corpus_text_document
    python tools/merge_datasets.py --input data/a_text_document data/b_text_document \
        --output-prefix data/ab_text_document

--input takes directories (every complete .bin/.idx pair inside, in sorted order) and/or
prefixes. Shards must share a token dtype (one tokenizer). Documents keep their order.

Nothing is written until every shard has passed the reader's checks; the output is written to
`<prefix>.tmp-<pid>.{bin,idx}` and renamed into place on success, under a lock on the output
prefix (`<prefix>.lock`), so a failed or concurrent merge never touches an existing output.
A problem ends the run with one line and exit code 2.
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaclap.data.indexed_dataset import (IndexedDataset, IndexedDatasetBuilder,  # noqa: E402
                                           IndexedDatasetError)
from megaclap.errors import UserFileNotFoundError, UserValueError, run_tool  # noqa: E402
from megaclap.locks import lock_prefix  # noqa: E402


def list_prefixes(inputs, exclude=None):
    """Prefixes named by directories and/or prefixes, in order (a directory's listing
    leaves out `exclude`, the output of an earlier merge into the same directory)."""
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f[:-4]) for f in os.listdir(item) if f.endswith(".idx"))
            found = [p for p in found if IndexedDataset.exists(p) and os.path.abspath(p) != exclude]
            if not found:
                raise UserFileNotFoundError(f"--input {item}: no .bin/.idx pairs in this directory")
            prefixes.extend(found)
        elif IndexedDataset.exists(item):
            prefixes.append(item)
        else:
            raise UserFileNotFoundError(f"--input {item}: neither a directory nor a .bin/.idx prefix")
    return prefixes


def check_shards(prefixes):
    """Open every shard with the reader's checks (sizes, pointers, lengths); returns their one dtype."""
    dtypes = {}
    for p in prefixes:
        ds = IndexedDataset(p, mmap=False)
        dtypes[p] = ds.dtype
        ds.close()
    first = dtypes[prefixes[0]]
    for p in prefixes:
        if dtypes[p] != first:
            raise IndexedDatasetError(f"{p}: dtype mismatch: {dtypes[p]} vs {first} of {prefixes[0]}; merge "
                                      "shards of one tokenizer")
    return first


def _remove(*paths):
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def merge(inputs, output_prefix):
    """Write output_prefix.{bin,idx} from the shards; returns the list of merged prefixes."""
    out = os.path.abspath(output_prefix)
    prefixes = list_prefixes(inputs, exclude=out)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise UserValueError(f"--output-prefix {output_prefix} is one of the inputs; choose another")
    with lock_prefix(output_prefix, f"--output-prefix {output_prefix}"):
        dtype = check_shards(prefixes)
        tmp = f"{output_prefix}.tmp-{os.getpid()}"
        builder = IndexedDatasetBuilder(tmp + ".bin", dtype)
        try:
            for p in prefixes:
                builder.add_index(p)
            builder.finalize(tmp + ".idx")
            IndexedDataset(tmp, mmap=False).close()  # the merged pair passes the reader's checks
            os.replace(tmp + ".bin", output_prefix + ".bin")
            os.replace(tmp + ".idx", output_prefix + ".idx")
        finally:
            builder._out.close()
            _remove(tmp + ".bin", tmp + ".idx")
    return prefixes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--input", required=True, nargs="+", help="directories and/or prefixes")
    p.add_argument("--output-prefix", required=True, help="writes <prefix>.bin and <prefix>.idx")
    args = p.parse_args(argv)
    prefixes = merge(args.input, args.output_prefix)
    merged = IndexedDataset(args.output_prefix)
    print(f"merged {len(prefixes)} shards: {merged.num_documents} documents, "
          f"{merged.num_tokens} tokens -> {args.output_prefix}.{{bin,idx}}")
    return prefixes


def cli(argv=None):
    """main() with known problems as one line and exit code 2 (the traceback goes to a file)."""
    return run_tool("merge_datasets.py", main, argv)


if __name__ == "__main__":
    sys.exit(cli())
