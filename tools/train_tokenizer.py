"""Train a sentencepiece tokenizer on a text corpus, streaming.

    python tools/train_tokenizer.py --input 'corpus/*.jsonl' --json-keys text \
        --model-type bpe --vocab-size 32000 --byte-fallback --output-prefix tok/spm

writes tok/spm.model and tok/spm.vocab, for --tokenizer-type SentencePieceTokenizer
--tokenizer-model tok/spm.model. Inputs (.jsonl/.json, .txt, .parquet; files or globs)
are read with `datasets` in streaming mode (.txt: one document per blank-line-separated
paragraph, as in preprocess_data.py); each non-empty line of a document is one
sentencepiece "sentence", fed through `sentence_iterator`, so nothing is held but
sentencepiece's own sample of at most --input-sentence-size sentences.

Defaults suit GPT pretraining: no normalisation and no whitespace folding (text round
trips exactly, code indentation included), digits split, byte fallback for unseen
characters, eos (</s>, id 2) is the end-of-document token.
"""

import argparse
import itertools
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaclap.data.text_readers import expand_inputs, file_format  # noqa: E402
from megaclap.errors import UserValueError, run_tool  # noqa: E402

_BUILDERS = {"jsonl": "json", "txt": "text", "parquet": "parquet"}


def iter_documents(files, keys):
    """Texts of `keys` from every file, streamed with `datasets` (no full download/load)."""
    import logging

    from datasets import load_dataset

    # its JSON reader logs each parse failure before raising it; we report it once, in one line
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    for path in files:
        fmt = file_format(path)
        extra = {"sample_by": "paragraph"} if fmt == "txt" else {}
        ds = load_dataset(_BUILDERS[fmt], data_files=[path], split="train", streaming=True,
                          **extra)
        try:
            yield from _texts(ds, fmt, path, keys)
        except ValueError as e:  # pyarrow's ArrowInvalid on a line that is not JSON, ...
            if isinstance(e, UserValueError):
                raise
            raise UserValueError(f"{path}: cannot read it as {fmt} ({e})") from e


def _texts(ds, fmt, path, keys):
    for row in ds:
        if fmt == "txt":
            yield row["text"]
            continue
        for key in keys:
            if key not in row:
                raise KeyError(f"{path}: no key {key!r}; keys are {list(row)} (set --json-keys)")
            if row[key]:
                yield row[key]


def iter_sentences(files, keys, max_sentences=None, max_length=16384):
    """Non-empty lines of the documents, cut to max_length bytes, at most max_sentences."""
    lines = (line[:max_length] for doc in iter_documents(files, keys)
             for line in doc.split("\n") if line.strip())
    return itertools.islice(lines, max_sentences)


def train(args):
    """Train and write <output-prefix>.model / .vocab; returns the model path."""
    import sentencepiece as spm

    files = expand_inputs(args.input)
    out_dir = os.path.dirname(args.output_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    symbols = [s for s in (args.user_defined_symbols or "").split(",") if s]
    try:
        _train_spm(spm, args, files, symbols)
    except RuntimeError as e:  # sentencepiece's own input checks (vocabulary too large for the text, ...)
        raise UserValueError(f"sentencepiece cannot train on --input {' '.join(args.input)}: "
                             f"{str(e).strip().splitlines()[0]}") from e
    return args.output_prefix + ".model"


def _train_spm(spm, args, files, symbols) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter_sentences(files, args.json_keys, args.max_sentences),
        model_prefix=args.output_prefix, model_type=args.model_type,
        vocab_size=args.vocab_size, byte_fallback=args.byte_fallback,
        user_defined_symbols=symbols, character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size, shuffle_input_sentence=True,
        max_sentence_length=16384, normalization_rule_name=args.normalization,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        num_threads=args.threads, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--input", required=True, nargs="+", help="files or globs (.jsonl .json .txt .parquet)")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys/columns holding text")
    p.add_argument("--output-prefix", required=True, help="writes <prefix>.model and <prefix>.vocab")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--byte-fallback", action=argparse.BooleanOptionalAction, default=True,
                   help="encode unseen characters as bytes instead of <unk>")
    p.add_argument("--user-defined-symbols", default="",
                   help="comma-separated pieces kept whole, e.g. '<|im_start|>,<|im_end|>'")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--normalization", default="identity", choices=["identity", "nmt_nfkc", "nfkc"],
                   help="sentencepiece normalization rule (identity keeps text as is)")
    p.add_argument("--max-sentences", type=int, default=None,
                   help="stop reading after this many sentences (lines)")
    p.add_argument("--input-sentence-size", type=int, default=2_000_000,
                   help="sentences sentencepiece samples for training (its memory bound)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    path = train(args)
    print(f"wrote {path} (vocab {args.vocab_size}, {args.model_type})")
    return path


def cli(argv=None) -> int:
    """main() with known problems as one line and exit code 2 (the traceback goes to a file)."""
    return run_tool("train_tokenizer.py", main, argv, known=(KeyError, ValueError))


if __name__ == "__main__":
    sys.exit(cli())
