"""ModelConfig: the transformer's shape and flavour (--num-layers, --hidden-size, ...)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelConfig:
    """Transformer shape and flavour (GPT-2: the defaults; Llama: RMSNorm + swiglu + rope + untied + no bias)."""

    num_layers: int = field(default=2, metadata={"required": True})
    """--num-layers: transformer layers in the whole model."""
    hidden_size: int = field(default=64, metadata={"required": True})
    """--hidden-size: model width h."""
    num_attention_heads: int = field(default=4, metadata={"required": True})
    """--num-attention-heads: query heads."""
    ffn_hidden_size: Optional[int] = None
    """--ffn-hidden-size: MLP width; default 4h (with --swiglu, 8h/3 rounded down to a multiple of 64, as Megatron)."""
    num_query_groups: Optional[int] = None
    """--num-query-groups: key/value heads when --group-query-attention is set."""
    kv_channels: Optional[int] = None
    """--kv-channels: attention head dimension; megaclap requires hidden-size / num-attention-heads."""
    group_query_attention: bool = False
    """--group-query-attention: use num_query_groups key/value heads (GQA)."""
    seq_length: int = field(default=128, metadata={"required": True})
    """--seq-length: tokens per sample."""
    max_position_embeddings: Optional[int] = None
    """--max-position-embeddings: size of the learned position table; default seq_length."""
    position_embedding_type: str = field(default="learned_absolute", metadata={"choices": ("learned_absolute", "rope")})
    """--position-embedding-type: learned_absolute (GPT-2) or rope (Llama)."""
    rotary_base: float = 10000.0
    """--rotary-base: RoPE theta."""
    rotary_percent: float = 1.0
    """--rotary-percent: fraction of each head rotated by RoPE; megaclap supports 1.0 only."""
    normalization: str = field(default="LayerNorm", metadata={"choices": ("LayerNorm", "RMSNorm")})
    """--normalization: LayerNorm or RMSNorm."""
    norm_epsilon: float = 1e-5
    """--norm-epsilon: epsilon of the norm layers."""
    swiglu: bool = False
    """--swiglu: gated SiLU MLP instead of GELU."""
    openai_gelu: bool = False
    """--openai-gelu: tanh-approximated GELU (GPT-2's gelu_new); default the exact erf GELU, as Megatron."""
    untie_embeddings_and_output_weights: bool = False
    """--untie-embeddings-and-output-weights: separate output layer (Llama)."""
    disable_bias_linear: bool = False
    """--disable-bias-linear: no biases in linear layers (Llama)."""
    init_method_std: float = 0.02
    """--init-method-std: std of the normal init; output layers get std/sqrt(2L)."""
    hidden_dropout: float = 0.1
    """--hidden-dropout: dropout after attention and MLP (Megatron's default 0.1)."""
    attention_dropout: float = 0.1
    """--attention-dropout: dropout on attention probabilities."""
    vocab_size: Optional[int] = None
    """--vocab-size: tokenizer vocabulary (default from the tokenizer; required with --mock-data)."""
    make_vocab_size_divisible_by: int = 128
    """--make-vocab-size-divisible-by: the padded vocabulary is a multiple of this times tp."""
    recompute_granularity: Optional[str] = field(default=None, metadata={"choices": ("full",)})
    """--recompute-granularity: 'full' recomputes each layer in backward to save memory."""

    @property
    def ffn(self) -> int:
        if self.ffn_hidden_size:
            return self.ffn_hidden_size
        if self.swiglu:
            return int((4 * self.hidden_size * 2 / 3) / 64) * 64 or 4 * self.hidden_size
        return 4 * self.hidden_size

    @property
    def query_groups(self) -> int:
        return self.num_query_groups if self.group_query_attention else self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tp: int) -> int:
        """Vocabulary padded to a multiple of make_vocab_size_divisible_by * tp (Megatron)."""
        multiple = self.make_vocab_size_divisible_by * tp
        return int(math.ceil(self.vocab_size / multiple) * multiple)
