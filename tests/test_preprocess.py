"""End to end: train a tiny sentencepiece model, preprocess jsonl/txt/parquet with 2
workers, read the .bin/.idx back and detokenize; the tokenizer types."""

import json

import numpy as np
import pytest

from megaclap.data import DataConfig, build_data_sources
from megaclap.data.indexed_dataset import IndexedDataset
from megaclap.data.tokenizers import build_tokenizer
from tools import preprocess_data, train_tokenizer

WORDS = ("the a pipeline stage sends compressed activations forward and gradients backward "
         "while lazy sampling repeats the previous batch def return if else for in 0 1 2 3").split()


def make_docs(n, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        lines = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(rng.integers(1, 4))]
        docs.append("\n".join("    " * int(rng.integers(0, 2)) + ln for ln in lines))
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = make_docs(300)
    with open(root / "a.jsonl", "w") as f:
        for i, d in enumerate(docs[:200]):
            f.write(json.dumps({"text": d, "title": f"doc {i}"}) + "\n")
        f.write(json.dumps({"text": "", "title": "empty"}) + "\n")
    with open(root / "b.jsonl", "w") as f:
        for d in docs[200:]:
            f.write(json.dumps({"text": d, "title": "x"}) + "\n")
    with open(root / "c.txt", "w") as f:
        f.write("\n\n".join(docs[:50]) + "\n\n\n")
    model = train_tokenizer.main(["--input", str(root / "*.jsonl"), "--vocab-size", "400",
                                  "--output-prefix", str(root / "tok"), "--threads", "1"])
    return root, docs, model


def _preprocess(root, model, inputs, out, workers=2, keys=("text",), extra=()):
    return preprocess_data.main(["--input", *inputs, "--json-keys", *keys, "--output-prefix",
                                 str(root / out), "--tokenizer-type", "SentencePieceTokenizer",
                                 "--tokenizer-model", model, "--workers", str(workers),
                                 "--log-interval", "0", *extra])


def test_jsonl_end_to_end_with_two_workers(corpus):
    root, docs, model = corpus
    tok = build_tokenizer("SentencePieceTokenizer", model)
    assert tok.vocab_size == 400 and tok.eod == 2
    summary = _preprocess(root, model, [str(root / "*.jsonl")], "j", keys=("text", "title"),
                          extra=("--append-eod",))
    assert summary["skipped_empty"] == {"text": 1, "title": 0} and summary["dtype"] == "uint16"
    ds = IndexedDataset(str(root / "j_text_document"))
    assert ds.num_documents == 300 and ds.dtype == np.uint16
    for i in (0, 17, 199, 200, 299):
        ids = ds[i].tolist()
        assert ids[-1] == tok.eod and tok.detokenize(ids[:-1]) == docs[i]   # exact round trip
    titles = IndexedDataset(str(root / "j_title_document"))
    assert titles.num_documents == 301 and tok.detokenize(titles[3].tolist()[:-1]) == "doc 3"
    single = _preprocess(root, model, [str(root / "*.jsonl")], "j1", workers=1,
                         extra=("--append-eod",))
    assert single["documents"] == summary["documents"]
    for ext in ("bin", "idx"):   # worker count does not change the output
        assert (root / f"j1_text_document.{ext}").read_bytes() == \
            (root / f"j_text_document.{ext}").read_bytes()


def test_txt_paragraphs_are_documents(corpus):
    root, docs, model = corpus
    _preprocess(root, model, [str(root / "c.txt")], "t")
    ds = IndexedDataset(str(root / "t_text_document"))
    tok = build_tokenizer("SentencePieceTokenizer", model)
    assert ds.num_documents == 50
    assert [tok.detokenize(ds[i].tolist()) for i in range(50)] == docs[:50]


def test_parquet_input(corpus):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root, docs, model = corpus
    pq.write_table(pa.table({"text": docs[:30]}), root / "p.parquet")
    _preprocess(root, model, [str(root / "p.parquet")], "p")
    ds = IndexedDataset(str(root / "p_text_document"))
    tok = build_tokenizer("SentencePieceTokenizer", model)
    assert ds.num_documents == 30 and tok.detokenize(ds[29].tolist()) == docs[29]


def test_preprocessed_corpus_trains_through_build_data_sources(corpus):
    root, _, model = corpus
    _preprocess(root, model, [str(root / "a.jsonl")], "e2e", extra=("--append-eod",))
    cfg = DataConfig(data_path=[str(root / "e2e_text_document")], split="90,10,0",
                     tokenizer_type="SentencePieceTokenizer", tokenizer_model=model)
    s = build_data_sources(cfg, seq_length=32, micro_batch_size=2, global_batch_size=4,
                           train_iters=5, eval_iters=1, seed=0, vocab_size=400)
    batch = s.train.next_batch()
    assert batch.tokens.shape == (4, 33) and int(batch.tokens.max()) < 400


def _train_on_corpus(rank, world, argv, steps):
    from tests.train_utils import make_trainer
    tr = make_trainer(rank, world, argv)
    losses = [tr.train_step(tr.data.train.next_batch())["loss"] for _ in range(steps)]
    return {"losses": losses, "last": tr.ps.is_last_stage}


def test_preprocessed_corpus_trains_20_steps_loss_decreases(corpus):
    """Preprocess, then 20 real training steps at PP=2 through --data-path: the loss falls."""
    from tests.dist import run_ranks
    root, _, model = corpus
    _preprocess(root, model, [str(root / "*.jsonl")], "train20", extra=("--append-eod",))
    argv = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "20", "--lr", "3e-3",
            "--data-path", str(root / "train20_text_document"), "--split", "95,5,0",
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model, "--vocab-size", "400",
            "--pipeline-model-parallel-size", "2", "--eval-iters", "1"]
    losses = [r for r in run_ranks(_train_on_corpus, 2, argv, 20) if r["last"]][0]["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses


def test_null_and_huggingface_tokenizers(tmp_path):
    null = build_tokenizer("NullTokenizer", vocab_size=100)
    assert null.vocab_size == 101 and null.eod == 100
    assert null.tokenize("3 1 4") == [3, 1, 4] and null.detokenize([3, 1, 4]) == "3 1 4"
    with pytest.raises(ValueError, match="--vocab-size"):
        build_tokenizer("NullTokenizer")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.WordLevel(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(
        special_tokens=["<unk>", "<|endoftext|>"]))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer("HuggingFaceTokenizer", str(tmp_path))
    assert tok.eod == 1 and tok.vocab_size == len(set(WORDS)) + 2
    assert tok.detokenize(tok.tokenize("the pipeline stage")) == "the pipeline stage"
    with pytest.raises(ValueError, match="--tokenizer-type"):
        build_tokenizer("GPT2BPETokenizer")


def test_null_tokenizer_preprocessing(tmp_path):
    with open(tmp_path / "n.jsonl", "w") as f:
        f.write(json.dumps({"text": "5 6 7"}) + "\n" + json.dumps({"text": "8"}) + "\n")
    preprocess_data.main(["--input", str(tmp_path / "n.jsonl"), "--output-prefix",
                          str(tmp_path / "n"), "--tokenizer-type", "NullTokenizer",
                          "--vocab-size", "10", "--append-eod", "--log-interval", "0"])
    ds = IndexedDataset(str(tmp_path / "n_text_document"))
    assert [x.tolist() for x in ds[0:2]] == [[5, 6, 7, 10], [8, 10]]


def test_bad_inputs_name_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--input"):
        preprocess_data.main(["--input", str(tmp_path / "*.jsonl"), "--output-prefix", "x",
                              "--tokenizer-type", "NullTokenizer", "--vocab-size", "5"])
    (tmp_path / "bad.jsonl").write_text('{"text": "1 2"}\n{oops\n')
    with pytest.raises(ValueError, match="bad JSON line"):
        preprocess_data.main(["--input", str(tmp_path / "bad.jsonl"), "--output-prefix",
                              str(tmp_path / "b"), "--tokenizer-type", "NullTokenizer",
                              "--vocab-size", "5", "--log-interval", "0"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unsupported extension"):
        preprocess_data.main(["--input", str(tmp_path / "x.csv"), "--output-prefix", "x",
                              "--tokenizer-type", "NullTokenizer", "--vocab-size", "5"])
