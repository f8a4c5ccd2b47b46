"""Merge `.bin/.idx` shards into one pair (Megatron-LM's tools/merge_datasets.py).

    python tools/merge_datasets.py --input data/shards --output-prefix data/corpus_text_document
    python tools/merge_datasets.py --input data/a_text_document data/b_text_document \
        --output-prefix data/ab_text_document

--input takes directories (every complete .bin/.idx pair inside, in sorted order) and/or
prefixes. Shards must share a token dtype (one tokenizer). Documents keep their order.
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaclap.data.indexed_dataset import (IndexedDataset, IndexedDatasetBuilder,  # noqa: E402
                                           read_index_header)


def list_prefixes(inputs, exclude=None):
    """Prefixes named by directories and/or prefixes, in order (a directory's listing
    leaves out `exclude`, the output of an earlier merge into the same directory)."""
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f[:-4]) for f in os.listdir(item) if f.endswith(".idx"))
            found = [p for p in found if IndexedDataset.exists(p) and os.path.abspath(p) != exclude]
            if not found:
                raise FileNotFoundError(f"--input {item}: no .bin/.idx pairs in this directory")
            prefixes.extend(found)
        elif IndexedDataset.exists(item):
            prefixes.append(item)
        else:
            raise FileNotFoundError(f"--input {item}: neither a directory nor a .bin/.idx prefix")
    return prefixes


def merge(inputs, output_prefix):
    """Write output_prefix.{bin,idx} from the shards; returns the list of merged prefixes."""
    out = os.path.abspath(output_prefix)
    prefixes = list_prefixes(inputs, exclude=out)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise ValueError(f"--output-prefix {output_prefix} is one of the inputs; choose another")
    dtype = read_index_header(prefixes[0] + ".idx")[0]
    out_dir = os.path.dirname(output_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    builder = IndexedDatasetBuilder(output_prefix + ".bin", dtype)
    for p in prefixes:
        builder.add_index(p)
    builder.finalize(output_prefix + ".idx")
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


if __name__ == "__main__":
    main()
