"""Tokenizers with Megatron-LM's names and interface: vocab_size, eod, tokenize, detokenize.

    SentencePieceTokenizer     a sentencepiece .model; eod is its </s> (eos) id. This is
                               Megatron's GPTSentencePieceTokenizer behaviour (the name is
                               accepted too): no extra <CLS>/<SEP>/<MASK> ids are appended.
    HuggingFaceTokenizer       a local tokenizer.json (file or directory) via `tokenizers`;
                               eod is tokenizer_config.json's eos_token, else a well-known
                               end-of-text token found in the vocabulary.
    NullTokenizer              text of space-separated ids, as Megatron's: --vocab-size V
                               gives vocab_size V + 1 and eod = V.

Heavy libraries are imported only when the matching tokenizer is built.
"""

import json
import os

from megaclap.errors import UserFileNotFoundError, UserValueError

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>")


class SentencePieceTokenizer:
    """sentencepiece model; ids are the model's own, eod = its eos id."""

    def __init__(self, model_file):
        import sentencepiece as spm

        if not os.path.isfile(model_file):
            raise UserFileNotFoundError(f"--tokenizer-model {model_file}: no such sentencepiece model")
        self.model_file = model_file
        self._sp = spm.SentencePieceProcessor(model_file=model_file)
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


class HuggingFaceTokenizer:
    """A local `tokenizer.json` through the `tokenizers` library (no hub access)."""

    def __init__(self, path):
        from tokenizers import Tokenizer

        folder = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise UserFileNotFoundError(f"--tokenizer-model {path}: no tokenizer.json there")
        self._tok = Tokenizer.from_file(file)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod = self._find_eod(folder, file)

    def _find_eod(self, folder, file):
        names = []
        config = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(config):
            with open(config) as f:
                eos = json.load(f).get("eos_token")
            names.append(eos.get("content") if isinstance(eos, dict) else eos)
        for name in [n for n in names if n] + list(_EOS_CANDIDATES):
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return tid
        raise UserValueError(f"{file}: no end-of-document token found (tried {_EOS_CANDIDATES}); "
                         "set eos_token in tokenizer_config.json next to it")

    def tokenize(self, text):
        """str -> list[int], without special tokens added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids):
        """list[int] -> str."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class NullTokenizer:
    """Megatron's NullTokenizer: '3 1 4' <-> [3, 1, 4]; vocab_size = V + 1, eod = V."""

    def __init__(self, vocab_size):
        if vocab_size is None:
            raise ValueError("--tokenizer-type NullTokenizer needs --vocab-size")
        self._vocab_size_without_eod = int(vocab_size)
        self.eod = self._vocab_size_without_eod
        self.vocab_size = self._vocab_size_without_eod + 1

    def tokenize(self, text):
        """'3 1 4' -> [3, 1, 4]."""
        return [int(x) for x in text.split()]

    def detokenize(self, ids):
        """[3, 1, 4] -> '3 1 4'."""
        return " ".join(str(int(x)) for x in ids)


def build_tokenizer(tokenizer_type, tokenizer_model=None, vocab_size=None):
    """Tokenizer by Megatron-LM type name (--tokenizer-type / --tokenizer-model / --vocab-size)."""
    if tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        if not tokenizer_model:
            raise ValueError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        if not tokenizer_model:
            raise ValueError("--tokenizer-type HuggingFaceTokenizer needs --tokenizer-model")
        return HuggingFaceTokenizer(tokenizer_model)
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size)
    raise ValueError(f"--tokenizer-type {tokenizer_type}: choose SentencePieceTokenizer, "
                     "HuggingFaceTokenizer or NullTokenizer")
