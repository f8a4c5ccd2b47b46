"""Tokenizers with Megatron-LM's names and interface: vocab_size, eod, tokenize, detokenize.

    SentencePieceTokenizer     a sentencepiece .model; eod is its </s> (eos) id. This is
                               Megatron's GPTSentencePieceTokenizer behaviour (the name is
                               accepted too): no extra <CLS>/<SEP>/<MASK> ids are appended.
    Llama2Tokenizer            a sentencepiece .model as Megatron's Llama2Tokenizer: every
                               tokenize() starts with the bos id, eod is the eos id.
    GPT2BPETokenizer           --vocab-file vocab.json --merge-file merges.txt: GPT-2's
                               byte-level BPE (the `tokenizers` library); eod is
                               <|endoftext|>, and that string in text is ordinary text, as in
                               Megatron's legacy GPT-2 tokenizer.
    HuggingFaceTokenizer       a local directory with tokenizer.json (or that file), or with
                               vocab.json + merges.txt (byte-level BPE); eod is
                               tokenizer_config.json's eos_token, else a well-known
                               end-of-text token found in the vocabulary.
    NullTokenizer              text of space-separated ids, as Megatron-LM's since core 0.18
                               (c9dfe34798): --vocab-size V gives vocab_size V and eod = V - 1;
                               legacy=True (--legacy-null-tokenizer) keeps the older rule,
                               vocab_size V + 1 and eod = V, for datasets built with it.

Heavy libraries are imported only when the matching tokenizer is built.
"""

import json
import os

from megaclap.config.data import TOKENIZER_TYPES
from megaclap.errors import UserFileNotFoundError, UserValueError

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>")


class SentencePieceTokenizer:
    """sentencepiece model; ids are the model's own, eod = its eos id."""

    bos = None

    def __init__(self, model_file):
        import sentencepiece as spm

        if not os.path.isfile(model_file):
            raise UserFileNotFoundError(f"--tokenizer-model {model_file}: no such sentencepiece model")
        self.model_file = model_file
        try:
            self._sp = spm.SentencePieceProcessor(model_file=model_file)
        except (RuntimeError, OSError) as e:  # "could not parse ModelProto": not a sentencepiece model
            raise UserValueError(f"--tokenizer-model {model_file}: not a readable sentencepiece model "
                                 f"({str(e).strip().splitlines()[0]}); point it at the .model file "
                                 "tools/train_tokenizer.py wrote") from e
        self.vocab_size = self._sp.get_piece_size()
        self.eod = self._sp.eos_id()
        if self.eod < 0:
            raise UserValueError(f"{model_file} has no eos piece (trained with eos_id=-1); "
                             "retrain with tools/train_tokenizer.py")

    def tokenize(self, text):
        """str -> list[int]."""
        return self._sp.encode(text)

    def detokenize(self, ids):
        """list[int] -> str."""
        return self._sp.decode([int(i) for i in ids])


class Llama2Tokenizer(SentencePieceTokenizer):
    """Megatron's Llama2Tokenizer: [bos] + sentencepiece ids (no eos); eod = eos id."""

    def __init__(self, model_file):
        super().__init__(model_file)
        self.bos = self._sp.bos_id()
        if self.bos < 0:
            raise UserValueError(f"{model_file} has no bos piece (trained with bos_id=-1): "
                             "Llama2Tokenizer prepends it; use SentencePieceTokenizer")

    def tokenize(self, text):
        """str -> [bos] + ids, as Megatron's Llama2Tokenizer.tokenize(s, bos=True, eos=False)."""
        return [self.bos] + self._sp.encode(text)


def byte_level_bpe(vocab_file, merge_file, vocab_flag="--vocab-file", merge_flag="--merge-file"):
    """GPT-2's byte-level BPE (a `tokenizers.Tokenizer`) from vocab.json + merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    for path, flag in ((vocab_file, vocab_flag), (merge_file, merge_flag)):
        if not path or not os.path.isfile(path):
            raise UserFileNotFoundError(f"{flag} {path}: no such file (GPT-2 BPE needs vocab.json "
                                    "and merges.txt)")
    try:
        with open(vocab_file, encoding="utf-8") as f:
            json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserValueError(f"{vocab_flag} {vocab_file}: not a JSON vocabulary ({e}); point it at GPT-2's "
                             "vocab.json") from e
    try:
        tok = Tokenizer(models.BPE.from_file(vocab_file, merge_file))
    except Exception as e:  # the tokenizers library raises a bare Exception naming the bad line
        raise UserValueError(f"{merge_flag} {merge_file}: not a BPE merges file for {vocab_file} ({e}); point "
                             "it at GPT-2's merges.txt") from e
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class HuggingFaceTokenizer:
    """A local tokenizer through the `tokenizers` library (no hub access)."""

    bos = None

    def __init__(self, path, tok=None):
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        if tok is None:
            tok = self._load(path)
        self._tok = tok
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod = self._find_eod(folder, path)

    @staticmethod
    def _load(path):
        from tokenizers import Tokenizer

        file = path if os.path.isfile(path) else os.path.join(path, "tokenizer.json")
        if os.path.isfile(file):
            try:
                return Tokenizer.from_file(file)
            except Exception as e:  # the tokenizers library raises a bare Exception
                raise UserValueError(f"--tokenizer-model {file}: not a readable tokenizer.json ({e})") from e
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        if os.path.isfile(vocab) and os.path.isfile(merges):
            return byte_level_bpe(vocab, merges, "--tokenizer-model", "--tokenizer-model")
        raise UserFileNotFoundError(f"--tokenizer-model {path}: expected a tokenizer.json file, or a "
                                "directory holding tokenizer.json or vocab.json + merges.txt")

    def _find_eod(self, folder, path):
        names = []
        config = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(config):
            try:
                with open(config) as f:
                    eos = json.load(f).get("eos_token")
            except (ValueError, AttributeError) as e:
                raise UserValueError(f"{config}: not a readable tokenizer_config.json ({e})") from e
            names.append(eos.get("content") if isinstance(eos, dict) else eos)
        for name in [n for n in names if n] + list(_EOS_CANDIDATES):
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return tid
        raise UserValueError(f"{path}: no end-of-document token found (tried {_EOS_CANDIDATES}); "
                         "set eos_token in tokenizer_config.json next to it")

    def tokenize(self, text):
        """str -> list[int], without special tokens added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids):
        """list[int] -> str."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class GPT2BPETokenizer(HuggingFaceTokenizer):
    """Megatron's GPT2BPETokenizer: vocab_size = entries of vocab.json, eod = <|endoftext|>."""

    def __init__(self, vocab_file, merge_file):
        tok = byte_level_bpe(vocab_file, merge_file)
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eod = tok.token_to_id("<|endoftext|>")
        if self.eod is None:
            raise UserValueError(f"--vocab-file {vocab_file} has no <|endoftext|> entry (GPT-2's "
                             "end-of-document token)")


class NullTokenizer:
    """Megatron's NullTokenizer: '3 1 4' <-> [3, 1, 4]; vocab_size = V, eod = V - 1
    (legacy: vocab_size = V + 1, eod = V, Megatron-LM's rule before core 0.18)."""

    bos = None

    def __init__(self, vocab_size, legacy=False):
        if vocab_size is None:
            raise UserValueError("--tokenizer-type NullTokenizer needs --vocab-size")
        self.vocab_size = int(vocab_size) + (1 if legacy else 0)
        self.eod = self.vocab_size - 1

    def tokenize(self, text):
        """'3 1 4' -> [3, 1, 4]."""
        return [int(x) for x in text.split()]

    def detokenize(self, ids):
        """[3, 1, 4] -> '3 1 4'."""
        return " ".join(str(int(x)) for x in ids)


def build_tokenizer(tokenizer_type, tokenizer_model=None, vocab_size=None, vocab_file=None,
                    merge_file=None, legacy_null_tokenizer=False):
    """Tokenizer by Megatron-LM type name (--tokenizer-type, --tokenizer-model, --vocab-size,
    --vocab-file, --merge-file, --legacy-null-tokenizer)."""
    if tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer",
                          "HuggingFaceTokenizer") and not tokenizer_model:
        raise UserValueError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
    if tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "Llama2Tokenizer":
        return Llama2Tokenizer(tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(tokenizer_model)
    if tokenizer_type == "GPT2BPETokenizer":
        if not vocab_file or not merge_file:
            raise UserValueError("--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file")
        return GPT2BPETokenizer(vocab_file, merge_file)
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size, legacy_null_tokenizer)
    raise UserValueError(f"--tokenizer-type {tokenizer_type}: choose one of {', '.join(TOKENIZER_TYPES)}")
