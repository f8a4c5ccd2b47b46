"""End to end: train a tiny sentencepiece model, preprocess jsonl/txt/parquet with 2
workers, read the .bin/.idx back and detokenize; the tokenizer types."""

import json

import numpy as np
import pytest

from megaclap.config import DataConfig
from megaclap.data import build_data_sources
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
    assert null.vocab_size == 100 and null.eod == 99   # Megatron-LM since core 0.18
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
    assert [x.tolist() for x in ds[0:2]] == [[5, 6, 7, 9], [8, 9]]
    preprocess_data.main(["--input", str(tmp_path / "n.jsonl"), "--output-prefix", str(tmp_path / "old"),
                          "--tokenizer-type", "NullTokenizer", "--vocab-size", "10", "--append-eod",
                          "--legacy-null-tokenizer", "--log-interval", "0"])
    ds = IndexedDataset(str(tmp_path / "old_text_document"))
    assert [x.tolist() for x in ds[0:2]] == [[5, 6, 7, 10], [8, 10]]   # the older rule: eod = V


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


def _null(tmp_path, inputs, out, *extra):
    return preprocess_data.main(["--input", *inputs, "--output-prefix", str(tmp_path / out),
                                 "--tokenizer-type", "NullTokenizer", "--vocab-size", "100",
                                 "--log-interval", "0", *extra])


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_failed_run_leaves_previous_output_intact(tmp_path):
    good = _lines(tmp_path / "good.jsonl", [{"text": "1 2 3"}, {"text": "4 5"}])
    _null(tmp_path, [good], "P", "--append-eod")
    before = {ext: (tmp_path / f"P_text_document.{ext}").read_bytes() for ext in ("bin", "idx")}
    (tmp_path / "bad.jsonl").write_text("this is not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: bad JSON line"):
        _null(tmp_path, [str(tmp_path / "bad.jsonl")], "P")
    after = {ext: (tmp_path / f"P_text_document.{ext}").read_bytes() for ext in ("bin", "idx")}
    assert after == before and len(before["bin"]) == 7 * 2   # 7 uint16 tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P_text_document.bin", "P_text_document.idx",
                                                          "bad.jsonl", "good.jsonl"]   # no .tmp left


@pytest.mark.parametrize("value,kind", [(["1 2", "3"], "list"), (7, "int"), (None, "null")])
def test_non_string_value_names_record_and_key_and_writes_nothing(tmp_path, value, kind):
    src = _lines(tmp_path / "in.jsonl", [{"text": "1 2", "t2": "3"}] * 3 + [{"text": "4", "t2": value}])
    with pytest.raises(ValueError, match=f"in.jsonl:4: key 't2' holds a {kind}"):
        _null(tmp_path, [src], "o", "--json-keys", "text", "t2", "--workers", "2")
    if kind == "list":   # the error crosses from a partition process too
        with pytest.raises(ValueError, match=f"in.jsonl:4: key 't2' holds a {kind}"):
            _null(tmp_path, [src], "o", "--json-keys", "text", "t2", "--partitions", "2", "--workers", "2")
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_empty_input_is_an_error(tmp_path, capsys):
    (tmp_path / "e.jsonl").write_text("")
    _lines(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "   "}])
    for name in ("e.jsonl", "blank.jsonl"):
        with pytest.raises(ValueError, match="no documents"):
            _null(tmp_path, [str(tmp_path / name)], "o")
    assert preprocess_data.cli(["--input", str(tmp_path / "e.jsonl"), "--output-prefix", str(tmp_path / "o"),
                                "--tokenizer-type", "NullTokenizer", "--vocab-size", "9", "--log-interval", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("preprocess_data.py: error: no documents")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.jsonl", "e.jsonl"]


def test_gzip_input_and_partitions_in_megatron_order(tmp_path):
    import gzip
    rows = [{"text": " ".join(str(i + j) for j in range(1 + i % 3))} for i in range(25)]
    plain = _lines(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write((tmp_path / "a.jsonl").read_text())
    _null(tmp_path, [plain], "plain", "--append-eod")
    _null(tmp_path, [str(tmp_path / "a.jsonl.gz")], "gz", "--append-eod")
    for ext in ("bin", "idx"):
        assert (tmp_path / f"gz_text_document.{ext}").read_bytes() == (tmp_path / f"plain_text_document.{ext}").read_bytes()
    _null(tmp_path, [plain, str(tmp_path / "a.jsonl.gz")], "part", "--partitions", "3", "--workers", "3")
    ds = IndexedDataset(str(tmp_path / "part_text_document"))
    both = rows + rows   # records of both files, taken round-robin into 3 partitions, merged in order
    expect = [[int(x) for x in both[i]["text"].split()] for p in range(3) for i in range(p, 50, 3)]
    assert [ds[i].tolist() for i in range(len(ds))] == expect
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_split_sentences_and_keep_newlines(corpus, tmp_path):
    root, _, model = corpus
    tok = build_tokenizer("SentencePieceTokenizer", model)
    text = "the pipeline stage sends. The lazy batch repeats!\n\nA gradient goes backward"
    src = _lines(tmp_path / "s.jsonl", [{"text": text}, {"text": "if else"}])
    for keep in (False, True):
        _preprocess(tmp_path, model, [src], f"s{keep}", workers=1,
                    extra=("--split-sentences", "--append-eod") + (("--keep-newlines",) if keep else ()))
        ds = IndexedDataset(str(tmp_path / f"s{keep}_text_sentence"))
        assert ds.num_documents == 2 and len(ds) == 4   # 3 sentences + 1, one sequence each
        sentences = [tok.detokenize(ds[i].tolist()) for i in range(3)]
        assert ds[2].tolist()[-1] == tok.eod and ds[3].tolist()[-1] == tok.eod
        sentences[2] = tok.detokenize(ds[2].tolist()[:-1])
        if keep:
            assert "".join(sentences) == text
        else:
            assert sentences == ["the pipeline stage sends.", "The lazy batch repeats!", "A gradient goes backward"]
