"""DataConfig: what to read and how to sample it, with Megatron-LM flag names; the parsers of
--split and --data-path and the tokenizer names (megaclap/data/ reads the data)."""

from dataclasses import dataclass, field
from typing import List, Optional

from .flags import add_dataclass_args, from_namespace

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer",
                   "GPT2BPETokenizer", "HuggingFaceTokenizer", "NullTokenizer")


@dataclass
class DataConfig:
    """Data sources, splits and samplers (see DESIGN.md section 5)."""

    data_path: List[str] = field(default_factory=list)
    """--data-path: dataset prefixes (`<prefix>.bin/.idx`), optionally weighted:
    `A`, `A B` (blended by size) or `0.7 A 0.3 B` (blended by weight)."""

    split: str = "949,50,1"
    """--split: train,valid,test weights; each prefix is split by document (with --mock-data:
    a zero weight drops that split, as Megatron)."""

    data_cache_path: Optional[str] = None
    """--data-cache-path: directory for cached index arrays (None: rebuilt in memory)."""

    mock_data: bool = False
    """--mock-data: synthetic Markov-chain tokens instead of --data-path (no I/O)."""

    online: bool = False
    """--online: one pass over the data in order, shuffled within --shuffle-window,
    never revisiting a sample; training stops when the stream runs out."""

    shuffle_window: int = 10000
    """--shuffle-window: samples held in the online shuffle buffer."""

    num_epochs: Optional[int] = None
    """--num-epochs: epochs of the few-epoch sampler (default: as many as --train-iters needs)."""

    lazy_sampling_prob: Optional[float] = None
    """--lazy-sampling-prob: draw a fresh global batch with this probability per step,
    else repeat the previous one (Clapping's lazy sampling); 1 or unset is ordinary training,
    0 is refused (see --lazy-sampling-period)."""

    lazy_sampling_period: Optional[int] = None
    """--lazy-sampling-period: draw a fresh global batch every this many steps instead (a period
    of --train-iters or more repeats the first batch for the whole run)."""

    tokenizer_type: Optional[str] = field(default=None, metadata={"choices": TOKENIZER_TYPES})
    """--tokenizer-type: SentencePieceTokenizer, Llama2Tokenizer, GPT2BPETokenizer,
    HuggingFaceTokenizer or NullTokenizer (GPT2BPETokenizer when --vocab-file or --merge-file
    is given, as Megatron-LM's pretrain_gpt.py)."""

    tokenizer_model: Optional[str] = None
    """--tokenizer-model: sentencepiece .model, or tokenizer.json, or a directory with
    tokenizer.json or vocab.json + merges.txt."""

    vocab_file: Optional[str] = None
    """--vocab-file: GPT2BPETokenizer's vocab.json."""

    merge_file: Optional[str] = None
    """--merge-file: GPT2BPETokenizer's merges.txt."""

    legacy_null_tokenizer: bool = False
    """--legacy-null-tokenizer: NullTokenizer --vocab-size V as Megatron-LM before core 0.18:
    V + 1 ids, end-of-document id V (now V ids, end-of-document id V - 1), for datasets built
    with that rule."""

    def __post_init__(self):
        if self.tokenizer_type is None and (self.vocab_file or self.merge_file):
            self.tokenizer_type = "GPT2BPETokenizer"   # Megatron's pretrain_gpt.py default

    def validate(self):
        """Raise ValueError with a one-line message naming the flag to change."""
        if self.mock_data and self.data_path:
            raise ValueError("--mock-data and --data-path are exclusive; drop one")
        if not self.mock_data and not self.data_path:
            raise ValueError("no training data: pass --data-path PREFIX or --mock-data")
        parse_split(self.split)
        if self.data_path:
            parse_data_path(self.data_path)
        if self.shuffle_window < 1:
            raise ValueError(f"--shuffle-window {self.shuffle_window}: must be >= 1")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"--num-epochs {self.num_epochs}: must be >= 1")
        if self.online and self.num_epochs is not None:
            raise ValueError("--num-epochs applies to the few-epoch sampler; drop it or --online")
        if self.lazy_sampling_prob is not None and self.lazy_sampling_period is not None:
            raise ValueError("--lazy-sampling-prob and --lazy-sampling-period are exclusive; "
                             "drop one")
        if self.lazy_sampling_prob is not None and not 0.0 < self.lazy_sampling_prob <= 1.0:
            raise ValueError(f"--lazy-sampling-prob {self.lazy_sampling_prob}: must be in (0, 1]; 0 would "
                             "train on the first global batch forever: to do that on purpose (an overfit "
                             "or error-feedback test) pass --lazy-sampling-period N with N >= --train-iters")
        if self.lazy_sampling_period is not None and self.lazy_sampling_period < 1:
            raise ValueError(f"--lazy-sampling-period {self.lazy_sampling_period}: must be >= 1")
        if self.tokenizer_type is not None and self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"--tokenizer-type {self.tokenizer_type}: choose one of "
                             f"{', '.join(TOKENIZER_TYPES)}")
        if self.tokenizer_type == "GPT2BPETokenizer" and not (self.vocab_file and self.merge_file):
            raise ValueError("--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file")
        if self.tokenizer_type not in (None, "NullTokenizer", "GPT2BPETokenizer") \
                and not self.tokenizer_model:
            raise ValueError(f"--tokenizer-type {self.tokenizer_type} needs --tokenizer-model")

    @classmethod
    def from_args(cls, args):
        """DataConfig from a namespace parsed with add_data_args (absent flags keep their defaults)."""
        return from_namespace(cls, args)


def parse_split(split):
    """'949,50,1' (or '949/50/1', or '98,2') -> normalised weights [3] summing to 1."""
    split = split.strip("'\"")   # "--split '99,1,0'" from an unquoted bash array, as Megatron tolerates
    sep = "," if "," in split else "/"
    try:
        parts = [float(s) for s in split.split(sep)]
    except ValueError:
        raise ValueError(f"--split {split!r}: expected numbers like 949,50,1") from None
    if len(parts) > 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split {split!r}: expected up to three non-negative weights "
                         "with a positive sum, like 949,50,1")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return [p / total for p in parts]


def parse_data_path(data_path):
    """['A'] or ['A', 'B'] -> (prefixes, None); ['0.7', 'A', '0.3', 'B'] -> (prefixes, weights)."""
    items = [p for p in data_path if p]
    if not items:
        return [], None

    def is_number(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    numeric = [is_number(s) for s in items[0::2]]
    if len(items) % 2 == 0 and all(numeric):
        weights, prefixes = [float(w) for w in items[0::2]], items[1::2]
        if any(w <= 0 for w in weights):
            raise ValueError(f"--data-path weights must be positive, got {weights}")
        return prefixes, weights
    if any(numeric):
        raise ValueError(f"--data-path {' '.join(items)}: give either prefixes or "
                         "'weight prefix' pairs, like --data-path 0.7 A 0.3 B")
    return items, None


def add_data_args(parser):
    """Add the data flags (Megatron-LM names), generated from DataConfig; returns the group."""
    return add_dataclass_args(parser, DataConfig, "data")
