# gpt-tiny: a 4-layer GPT-2-style model for CPU smoke tests and the quickstart (~0.8M
# non-embedding parameters). Sourced by pretrain_gpt_distributed.sh and quickstart.sh.
NUM_LAYERS=4
HIDDEN_SIZE=128
NUM_ATTENTION_HEADS=4
FFN_HIDDEN_SIZE=512
SEQ_LENGTH=128
MAX_POSITION_EMBEDDINGS=128
# GPT-2 flavour: LayerNorm, learned absolute positions, tanh GELU (--openai-gelu), tied embeddings.
MODEL_ARGS="--normalization LayerNorm --position-embedding-type learned_absolute --openai-gelu"
VOCAB_SIZE=8192          # used with --mock-data only; a real tokenizer gives its own size
PRECISION=""             # fp32: runs anywhere, CPU included
SUGGESTED_TP=1
SUGGESTED_PP=2           # one compressed pipeline boundary
MICRO_BATCH_SIZE=8
GLOBAL_BATCH_SIZE=32
LR=1e-3
