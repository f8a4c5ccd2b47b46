# GPT-2 1.3B (Megatron-LM / GPT-3 paper "XL": 24 layers, 2048 hidden, 16 heads).
# Batch 512 x 1024 tokens = 0.5M tokens per step (the paper used 1M), LR from the paper.
NUM_LAYERS=24
HIDDEN_SIZE=2048
NUM_ATTENTION_HEADS=16
FFN_HIDDEN_SIZE=8192
SEQ_LENGTH=1024
MAX_POSITION_EMBEDDINGS=1024
MODEL_ARGS="--normalization LayerNorm --position-embedding-type learned_absolute --openai-gelu"
VOCAB_SIZE=50257         # GPT-2 BPE; used with --mock-data only
PRECISION="--bf16"
# One 8-GPU node: tp 2 (intra-node, halves weights and optimizer state per GPU), pp 2, dp 2.
SUGGESTED_TP=2
SUGGESTED_PP=2
MICRO_BATCH_SIZE=4
GLOBAL_BATCH_SIZE=512
LR=2e-4
