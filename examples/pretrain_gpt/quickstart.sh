#!/usr/bin/env bash
# megaclap quickstart, CPU only, no downloads:
#   1. build a corpus from this Python's standard library (sources and docstrings, jsonl)
#   2. train a sentencepiece tokenizer on it          (tools/train_tokenizer.py)
#   3. tokenize it into Megatron .bin/.idx files       (tools/preprocess_data.py)
#   4. pretrain gpt-tiny with pipeline parallelism (PP=2; TP=2 as well with 4+ cores) and the
#      compression bench/wan_speedrun.py finds fastest to a target loss over slow links:
#      direct Hadamard-rotated quantization, 3-bit activations and 4-bit gradients
#   5. summarise: losses, tokens/s, pipeline bytes sent vs raw, what those bytes would cost on
#      a 200 Mbit/s + 50 ms link against dense, the TensorBoard command
#
#   make quickstart                       # a few minutes
#   QUICK=1 bash examples/pretrain_gpt/quickstart.sh    # under 3 minutes (CI)
#
# Environment: QUICK=1 (short run), OUT_DIR [./runs/quickstart], PYTHON [python],
# MASTER_PORT [a free port]. Steps 1-3 are skipped when their outputs already exist.
# The last line reads `quickstart: first loss X final loss Y`; the exit status is non-zero
# when the final loss is not below the first.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-./runs/quickstart}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [[ "$OUT_DIR" =~ [[:space:]] ]]; then    # paths travel inside whitespace-split *_ARGS strings
    echo "quickstart: OUT_DIR '$OUT_DIR' must not contain spaces" >&2
    exit 2
fi

# --- sizes: QUICK=1 is the CI run ------------------------------------------------------------
if [[ "${QUICK:-0}" == 1 ]]; then
    TAG=quick; MAX_FILES=120; VOCAB=1000
    TRAIN_ITERS=100; LOG_INTERVAL=10; EVAL_INTERVAL=50; EVAL_ITERS=2
    BATCH_ARGS=(--seq-length 64 --max-position-embeddings 64 --micro-batch-size 4 --global-batch-size 16)
else
    TAG=full; MAX_FILES=0; VOCAB=4096
    TRAIN_ITERS=400; LOG_INTERVAL=20; EVAL_INTERVAL=100; EVAL_ITERS=5
    BATCH_ARGS=()                               # gpt-tiny's: seq 128, batch 32 of 8
fi
CORPUS="$OUT_DIR/stdlib_$TAG.jsonl"
TOKENIZER="$OUT_DIR/tokenizer_$TAG"             # writes .model and .vocab
DATA="$OUT_DIR/stdlib_$TAG"                     # writes ${DATA}_text_document.{bin,idx}
LOG="$OUT_DIR/train_$TAG.log"
TB_DIR="$OUT_DIR/tensorboard/$TAG-$(date +%Y%m%d-%H%M%S)"
step() { echo; echo "=== quickstart: $*"; }

# --- 1. corpus -------------------------------------------------------------------------------
if [[ ! -s "$CORPUS" ]]; then
    step "corpus from the standard library -> $CORPUS"
    "$PYTHON" "$SCRIPT_DIR/stdlib_corpus.py" --output "$CORPUS" --max-files "$MAX_FILES"
else
    step "reusing corpus $CORPUS"
fi

# --- 2. tokenizer ----------------------------------------------------------------------------
if [[ ! -s "$TOKENIZER.model" ]]; then
    step "sentencepiece tokenizer (BPE, vocab $VOCAB) -> $TOKENIZER.model"
    "$PYTHON" "$REPO/tools/train_tokenizer.py" --input "$CORPUS" --json-keys text \
        --output-prefix "$TOKENIZER" --model-type bpe --vocab-size "$VOCAB" --byte-fallback
else
    step "reusing tokenizer $TOKENIZER.model"
fi

# --- 3. preprocess ---------------------------------------------------------------------------
if [[ ! -s "${DATA}_text_document.idx" ]]; then
    step "tokenizing into ${DATA}_text_document.{bin,idx}"
    "$PYTHON" "$REPO/tools/preprocess_data.py" --input "$CORPUS" --json-keys text \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOKENIZER.model" \
        --append-eod --output-prefix "$DATA" --workers 2 --log-interval 0
else
    step "reusing ${DATA}_text_document.{bin,idx}"
fi

# --- 4. pretrain -----------------------------------------------------------------------------
CORES=$(nproc)
TP=1
if (( CORES >= 4 )); then TP=2; fi
WORLD=$((TP * 2))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CORES / WORLD > 0 ? CORES / WORLD : 1 ))}
FREE_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
step "pretraining gpt-tiny, TP=$TP PP=2 on $WORLD CPU processes, $TRAIN_ITERS steps -> $LOG"
# The last stage also computes the output layer and the loss, so it gets 1 of the 4 layers
# (--decoder-last-pipeline-num-layers) to balance the two stages.
CONFIG=gpt-tiny TP=$TP PP=2 NPROC_PER_NODE=$WORLD NNODES=1 NODE_RANK=0 \
MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-$FREE_PORT} PRECISION="" \
TRAIN_ITERS=$TRAIN_ITERS LR_WARMUP_ITERS=$((TRAIN_ITERS / 10)) \
LOG_INTERVAL=$LOG_INTERVAL EVAL_INTERVAL=$EVAL_INTERVAL TENSORBOARD_DIR="$TB_DIR" \
DATA_ARGS="--data-path ${DATA}_text_document --split 98,2,0
           --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER.model" \
COMPRESSION_ARGS="--pp-compression-method direct --pp-fwd-codec hquant:3
                  --pp-bwd-codec hquant:4:sr" \
    bash "$SCRIPT_DIR/pretrain_gpt_distributed.sh" "${BATCH_ARGS[@]}" --eval-iters "$EVAL_ITERS" \
    --decoder-last-pipeline-num-layers 1 \
    2>&1 | tee "$LOG"

# --- 5. summary ------------------------------------------------------------------------------
echo
"$PYTHON" "$SCRIPT_DIR/summarize_log.py" "$LOG" --tensorboard-dir "$OUT_DIR/tensorboard"
