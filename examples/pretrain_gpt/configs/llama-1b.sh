# Llama-1B, shaped like Llama-3.2-1B: 16 layers, 2048 hidden, 32 query heads, 8 key/value
# groups (GQA), SwiGLU MLP 8192 wide, RMSNorm, RoPE theta 500000, untied output layer,
# no linear biases. (Llama-3.2-1B itself ties its output layer to the embedding; untied
# here, as in the larger Llama 3 models.) Batch 256 x 2048 tokens = 0.5M tokens per step.
NUM_LAYERS=16
HIDDEN_SIZE=2048
NUM_ATTENTION_HEADS=32
FFN_HIDDEN_SIZE=8192
SEQ_LENGTH=2048
MAX_POSITION_EMBEDDINGS=2048
MODEL_ARGS="--group-query-attention --num-query-groups 8 --swiglu --normalization RMSNorm --norm-epsilon 1e-5"
MODEL_ARGS="$MODEL_ARGS --position-embedding-type rope --rotary-base 500000"
MODEL_ARGS="$MODEL_ARGS --untie-embeddings-and-output-weights --disable-bias-linear"
VOCAB_SIZE=128256        # Llama 3 tokenizer; used with --mock-data only
PRECISION="--bf16"
# One 8-GPU node: tp 2 (8 kv groups split evenly), pp 2, dp 2.
SUGGESTED_TP=2
SUGGESTED_PP=2
MICRO_BATCH_SIZE=2
GLOBAL_BATCH_SIZE=256
LR=3e-4
