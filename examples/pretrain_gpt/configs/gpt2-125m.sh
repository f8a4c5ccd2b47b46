# GPT-2 125M (Megatron-LM / GPT-3 paper "Small": 12 layers, 768 hidden, 12 heads).
# Batch 512 x 1024 tokens = 0.5M tokens per step, LR from the GPT-3 paper.
NUM_LAYERS=12
HIDDEN_SIZE=768
NUM_ATTENTION_HEADS=12
FFN_HIDDEN_SIZE=3072
SEQ_LENGTH=1024
MAX_POSITION_EMBEDDINGS=1024
# GPT-2 flavour: LayerNorm, learned absolute positions, tanh GELU (--openai-gelu), tied embeddings.
MODEL_ARGS="--normalization LayerNorm --position-embedding-type learned_absolute --openai-gelu"
VOCAB_SIZE=50257         # GPT-2 BPE; used with --mock-data only
PRECISION="--bf16"
# One 8-GPU node: pure data parallelism would fit, PP=2 puts one Clapping-compressed
# boundary in the model (dp = 8 / (tp * pp) = 4).
SUGGESTED_TP=1
SUGGESTED_PP=2
MICRO_BATCH_SIZE=8
GLOBAL_BATCH_SIZE=512
LR=6e-4
