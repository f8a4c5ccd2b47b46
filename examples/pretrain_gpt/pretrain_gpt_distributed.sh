#!/usr/bin/env bash
# Pretrain a GPT with megaclap on one node or several, through torchrun.
#
#   CONFIG=gpt2-125m bash examples/pretrain_gpt/pretrain_gpt_distributed.sh [extra flags...]
#
# Every setting comes from the environment (defaults in brackets):
#   CONFIG           model size, a file in configs/ without .sh [gpt-tiny]
#   TP, PP           tensor / pipeline parallel sizes [the config's SUGGESTED_TP / SUGGESTED_PP]
#   PP_EMULATE=1     hold all PP stages in each process (--pp-emulate): a pipeline on one device
#   NPROC_PER_NODE   processes on this node [GPUs on this node, else TP * PP (TP with PP_EMULATE=1)]
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   [1, 0, 127.0.0.1, 6000]
#   RDZV_BACKEND     set to c10d for elastic rendezvous at MASTER_ADDR:MASTER_PORT
#                    (RDZV_ID names the job) instead of a fixed NODE_RANK
#   DATA_ARGS        [--mock-data --vocab-size <config's VOCAB_SIZE>], e.g.
#                    "--data-path data/corpus_text_document --tokenizer-type
#                     SentencePieceTokenizer --tokenizer-model tok.model"
#   COMPRESSION_ARGS pipeline compression [none], e.g. "--pp-compression-method clapping-fu
#                    --pp-fwd-codec topk:0.1 --pp-bwd-codec quant:8 --lazy-sampling-prob 0.5"
#   PRECISION        [the config's: --bf16, or empty (fp32) for gpt-tiny]
#   TRAIN_ITERS      [1000]
#   CHECKPOINT_PATH  --save / --load directory [none]
#   TENSORBOARD_DIR  --tensorboard-dir [none]
#   TORCHRUN         the launcher [torchrun]
#   DRY_RUN=1        print the torchrun command instead of running it
#
# Arguments after the script are appended last, so they override any flag set here (argparse
# keeps the last value of a repeated flag). On/off flags such as --mock-data or --bf16 cannot
# be switched off that way: change DATA_ARGS or PRECISION instead.
# The program picks the backend itself: nccl when CUDA is available, gloo otherwise.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# --- model size -------------------------------------------------------------------------
CONFIG=${CONFIG:-gpt-tiny}
CONFIG_FILE="$SCRIPT_DIR/configs/$CONFIG.sh"
if [[ ! -f "$CONFIG_FILE" ]]; then
    echo "pretrain_gpt_distributed.sh: no config '$CONFIG'; choose one of:" \
         "$(cd "$SCRIPT_DIR/configs" && ls -- *.sh | sed 's/\.sh$//' | tr '\n' ' ')" >&2
    exit 2
fi
USER_PRECISION=${PRECISION-unset}     # an empty PRECISION from the user means fp32
# shellcheck source=configs/gpt2-125m.sh
source "$CONFIG_FILE"
if [[ "$USER_PRECISION" != unset ]]; then PRECISION=$USER_PRECISION; fi

# --- parallel layout and rendezvous -------------------------------------------------------
TP=${TP:-$SUGGESTED_TP}
PP=${PP:-$SUGGESTED_PP}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        NPROC_PER_NODE=$(nvidia-smi -L | wc -l)
    elif [[ "${PP_EMULATE:-0}" == 1 ]]; then
        NPROC_PER_NODE=$TP                # CPU, emulated pipeline: one process per replica
    else
        NPROC_PER_NODE=$((TP * PP))       # CPU: the smallest world for this layout
    fi
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-6000}

DISTRIBUTED_ARGS=(--nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES")
if [[ "${RDZV_BACKEND:-static}" == c10d ]]; then
    DISTRIBUTED_ARGS+=(--rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"
                       --rdzv_id "${RDZV_ID:-megaclap}")
else
    DISTRIBUTED_ARGS+=(--node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

# --- training flags (Megatron-LM names) ---------------------------------------------------
# Unquoted expansions below are intentional: each *_ARGS string holds several flags.
GPT_ARGS=(
    --num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN_SIZE"
    --num-attention-heads "$NUM_ATTENTION_HEADS" --ffn-hidden-size "$FFN_HIDDEN_SIZE"
    --seq-length "$SEQ_LENGTH" --max-position-embeddings "$MAX_POSITION_EMBEDDINGS"
    $MODEL_ARGS
)
PARALLEL_ARGS=(--tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP")
if [[ "${PP_EMULATE:-0}" == 1 ]]; then PARALLEL_ARGS+=(--pp-emulate); fi
TRAIN_ARGS=(
    --micro-batch-size "$MICRO_BATCH_SIZE" --global-batch-size "$GLOBAL_BATCH_SIZE"
    --train-iters "${TRAIN_ITERS:-1000}" --lr "$LR" --min-lr "$(awk "BEGIN {print $LR / 10}")"
    --lr-decay-style cosine --lr-warmup-iters "${LR_WARMUP_ITERS:-$(( ${TRAIN_ITERS:-1000} / 10 ))}"
    --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0
    --log-interval "${LOG_INTERVAL:-10}" --eval-interval "${EVAL_INTERVAL:-500}" --eval-iters 10
    $PRECISION
)
# split on any whitespace, newlines included (read -d '' returns 1 at the end of input)
read -r -d '' -a DATA_FLAGS <<< "${DATA_ARGS:---mock-data --vocab-size $VOCAB_SIZE}" || true
read -r -d '' -a COMPRESSION_FLAGS <<< "${COMPRESSION_ARGS:-}" || true
OUTPUT_ARGS=()
if [[ -n "${CHECKPOINT_PATH:-}" ]]; then
    OUTPUT_ARGS+=(--save "$CHECKPOINT_PATH" --load "$CHECKPOINT_PATH" --save-interval "${SAVE_INTERVAL:-1000}")
fi
if [[ -n "${TENSORBOARD_DIR:-}" ]]; then
    OUTPUT_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR")
fi

CMD=(
    "${TORCHRUN:-torchrun}" "${DISTRIBUTED_ARGS[@]}" "$SCRIPT_DIR/pretrain_gpt.py"
    "${GPT_ARGS[@]}" "${PARALLEL_ARGS[@]}" "${TRAIN_ARGS[@]}" "${DATA_FLAGS[@]}"
    "${COMPRESSION_FLAGS[@]}" "${OUTPUT_ARGS[@]}" "$@"
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
echo "pretrain_gpt_distributed.sh: CONFIG=$CONFIG TP=$TP PP=$PP node $NODE_RANK of $NNODES," \
     "$NPROC_PER_NODE processes, master $MASTER_ADDR:$MASTER_PORT" >&2
exec "${CMD[@]}"
