# GPT-2 350M (Megatron-LM / GPT-3 paper "Medium": 24 layers, 1024 hidden, 16 heads).
# Batch 512 x 1024 tokens = 0.5M tokens per step, LR from the GPT-3 paper.
NUM_LAYERS=24
HIDDEN_SIZE=1024
NUM_ATTENTION_HEADS=16
FFN_HIDDEN_SIZE=4096
SEQ_LENGTH=1024
MAX_POSITION_EMBEDDINGS=1024
MODEL_ARGS="--normalization LayerNorm --position-embedding-type learned_absolute --openai-gelu"
VOCAB_SIZE=50257         # GPT-2 BPE; used with --mock-data only
PRECISION="--bf16"
# One 8-GPU node: tp 1, pp 2 (one compressed boundary), dp 4.
SUGGESTED_TP=1
SUGGESTED_PP=2
MICRO_BATCH_SIZE=8
GLOBAL_BATCH_SIZE=512
LR=3e-4
