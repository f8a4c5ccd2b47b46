"""Megatron tokenizer types: GPT2BPETokenizer ids equal transformers' GPT2Tokenizer on the same
vocab.json/merges.txt, HuggingFaceTokenizer from vocab.json + merges.txt, Llama2Tokenizer's bos,
NullTokenizer's eod, and the flags through preprocess_data.py."""

import json

import pytest

from megaclap.data.indexed_dataset import IndexedDataset
from megaclap.data.tokenizers import build_tokenizer
from tools import preprocess_data

TEXTS = ["Hello world, the pipeline sends activations.  Tabs\tand   spaces\n\nnewlines end\n",
         "naïve café — 日本語 emoji 🙂 ok", "it's we've they'll 12345 3.14!!", "  lead and trail   ",
         "a\n\n\n  b\r\n c", "ÄÖÜ ß 中文 \u00a0nbsp"]


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """A tiny GPT-2-style vocab.json + merges.txt, trained offline with the tokenizers library."""
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("bpe")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXTS * 10, vocab_size=320, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    tok.save_model(str(root))
    return root


def test_gpt2_bpe_ids_equal_transformers(bpe_files):
    from transformers import GPT2Tokenizer

    ref = GPT2Tokenizer(str(bpe_files / "vocab.json"), str(bpe_files / "merges.txt"))
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=str(bpe_files / "vocab.json"),
                          merge_file=str(bpe_files / "merges.txt"))
    assert tok.vocab_size == len(json.loads((bpe_files / "vocab.json").read_text()))
    assert tok.eod == ref.convert_tokens_to_ids("<|endoftext|>")
    unseen = "Zebra quartz 9876 —  ¿qué?\t\t🙃"   # characters the merges never saw: byte tokens
    for text in TEXTS + [unseen]:
        ids = tok.tokenize(text)
        assert ids == ref.encode(text), text
        assert tok.detokenize(ids) == text
    with pytest.raises(ValueError, match="--vocab-file and --merge-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(bpe_files / "vocab.json"))
    with pytest.raises(FileNotFoundError, match="--merge-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(bpe_files / "vocab.json"),
                        merge_file=str(bpe_files / "nope.txt"))


def test_huggingface_directory_with_vocab_and_merges(bpe_files, tmp_path):
    tok = build_tokenizer("HuggingFaceTokenizer", str(bpe_files))
    gpt2 = build_tokenizer("GPT2BPETokenizer", vocab_file=str(bpe_files / "vocab.json"),
                           merge_file=str(bpe_files / "merges.txt"))
    assert tok.eod == gpt2.eod and tok.tokenize(TEXTS[1]) == gpt2.tokenize(TEXTS[1])
    with pytest.raises(FileNotFoundError, match="tokenizer.json.*vocab.json \\+ merges.txt"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))


def test_llama2_tokenizer_prepends_bos(tmp_path):
    from tools import train_tokenizer

    words = "the pipeline sends compressed activations forward and gradients backward".split()
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) + "\n"
                                              for i in range(len(words))) * 5)
    model = train_tokenizer.main(["--input", str(tmp_path / "c.jsonl"), "--vocab-size", "300",
                                  "--output-prefix", str(tmp_path / "sp"), "--threads", "1"])
    plain = build_tokenizer("SentencePieceTokenizer", model)
    llama = build_tokenizer("Llama2Tokenizer", model)
    ids = llama.tokenize("the pipeline")
    assert llama.bos == 1 and llama.eod == 2 and llama.vocab_size == plain.vocab_size
    assert ids == [1] + plain.tokenize("the pipeline")
    assert llama.detokenize(ids) == "the pipeline"


def test_null_tokenizer_vocabulary_holds_eod():
    tok = build_tokenizer("NullTokenizer", vocab_size=512)
    assert (tok.vocab_size, tok.eod) == (512, 511)   # Megatron-LM since core 0.18 (c9dfe34798)
    old = build_tokenizer("NullTokenizer", vocab_size=512, legacy_null_tokenizer=True)
    assert (old.vocab_size, old.eod) == (513, 512)


def test_preprocess_with_gpt2_bpe_flags(bpe_files, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    preprocess_data.main(["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "g"),
                          "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(bpe_files / "vocab.json"),
                          "--merge-file", str(bpe_files / "merges.txt"), "--append-eod", "--log-interval", "0"])
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=str(bpe_files / "vocab.json"),
                          merge_file=str(bpe_files / "merges.txt"))
    ds = IndexedDataset(str(tmp_path / "g_text_document"))
    assert [ds[i].tolist() for i in range(len(TEXTS))] == [tok.tokenize(t) + [tok.eod] for t in TEXTS]


def test_training_flags_take_vocab_from_gpt2_bpe_and_null(bpe_files):
    from megaclap.config import parse_args
    from megaclap.training.pretrain import resolve_vocab_size

    model = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
             "--max-position-embeddings", "32", "--micro-batch-size", "1", "--global-batch-size", "1",
             "--train-iters", "1", "--data-path", "unused"]
    cfg = parse_args(model + ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(bpe_files / "vocab.json"),
                              "--merge-file", str(bpe_files / "merges.txt")])
    resolve_vocab_size(cfg)
    assert cfg.model.vocab_size == len(json.loads((bpe_files / "vocab.json").read_text()))
    cfg = parse_args(model + ["--tokenizer-type", "NullTokenizer", "--vocab-size", "512"])
    resolve_vocab_size(cfg)
    assert cfg.model.vocab_size == 512   # NullTokenizer's eod id is 511
    cfg = parse_args(model + ["--tokenizer-type", "NullTokenizer", "--vocab-size", "128256"])
    resolve_vocab_size(cfg)
    assert cfg.model.padded_vocab_size(1) == 128256   # Llama-3's vocabulary needs no padding rows
    cfg = parse_args(model + ["--tokenizer-type", "NullTokenizer", "--vocab-size", "512", "--legacy-null-tokenizer"])
    resolve_vocab_size(cfg)
    assert cfg.model.vocab_size == 513   # the older rule: eod id 512 is in the vocabulary
    cfg = parse_args(model + ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(bpe_files / "vocab.json")])
    with pytest.raises(ValueError, match="--merge-file"):
        cfg.data.validate()
    cfg = parse_args(model + ["--vocab-file", str(bpe_files / "vocab.json"), "--merge-file",
                              str(bpe_files / "merges.txt")])   # Megatron's GPT-3 script names no tokenizer
    resolve_vocab_size(cfg)
    assert cfg.data.tokenizer_type == "GPT2BPETokenizer"
    assert cfg.model.vocab_size == len(json.loads((bpe_files / "vocab.json").read_text()))
    assert parse_args(model + ["--mock-data"]).data.tokenizer_type is None
    cfg = parse_args(model + ["--vocab-file", str(bpe_files / "vocab.json"), "--merge-file",
                              str(bpe_files / "merges.txt"), "--vocab-size", "128256"])   # as Megatron's Llama script
    note = resolve_vocab_size(cfg)
    assert cfg.model.vocab_size == len(json.loads((bpe_files / "vocab.json").read_text()))
    assert note.startswith(" > --vocab-size 128256: the vocabulary is the tokenizer's")
