"""The answers to Megatron-LM's flags megaclap does not implement (see megatron_flags.py):
the reason each is accepted with no effect, or refused, and what megaclap offers instead.

    SPECIFIC       one flag -> (answer, reason[, values at which Megatron itself does nothing])
    FAMILY_GROUPS  a Megatron argparse group that is one family (rl, inference, vision, ...)
    FAMILIES       a name pattern -> (answer, reason): MoE, FP8/FP4, Mamba, MTP, muP, Muon, ...
    GROUPS         the rest of a Megatron argparse group -> (answer, reason)

"No effect" only where the flag changes speed, logging, checkpoint I/O or a facility megaclap
does not have, never what is computed; memory savers are refused with the alternative (a run
that relies on them would not fit where its user expects), as is anything that changes the
model, the optimizer, the schedule or the data. A flag megaclap implements has no entry here
(tests/test_megatron_flag_list.py refuses stale ones).
"""
NO_EFFECT, REFUSED = "no effect", "refused"

_FUSION = "megaclap runs plain PyTorch ops (no fused kernels to switch)"
_NCCL = "megaclap creates its process groups with torch.distributed's defaults (no NCCL tuning)"
_CKPT = ("megaclap writes Megatron's legacy torch layout (iter_*/mp_rank_*/model_optim_rng.pt), "
         "one "
         "file per model-parallel rank, synchronously")
_GRADS = "gradients are accumulated and all-reduced in fp32 and averaged over data-parallel ranks"
_TP_OVERLAP = "tensor-parallel communication is not overlapped with GEMMs (same result)"
_DUMP = "megaclap does not dump parameters, activations or gradients"
_GRAPHS = "megaclap captures no CUDA graphs (--compile is its kernel-level speed-up)"
_PROFILE = "megaclap has no profiler hooks; run it under nsys or torch.profiler"
_FAULTS = ("in-process restarts are not implemented; torchrun --max-restarts restarts the group, "
           "which resumes from the latest checkpoint (--load)")
_TOKENIZE = ("training reads pre-tokenized .bin files, so tokenization options apply only to "
             "tools/preprocess_data.py")
_MEMORY = "to save activation memory use --recompute-granularity full"
_T5 = ("encoder-decoder (T5) and BERT models are not implemented; megaclap trains GPT "
       "(--num-layers, --seq-length)")
_NONPERSISTENT = "non-persistent (local) checkpoints are not implemented; use --save-interval"

SPECIFIC = {
    # dense-GPT switches that change nothing here
    "--no-overlap-p2p-communication":
        (NO_EFFECT, "pipeline p2p runs in the schedule's order, not overlapped"),
    "--no-barrier-with-level-1-timing":
        (NO_EFFECT, "megaclap's per-phase timers are --timing-log-level 1"),
    "--no-gradient-reduce-div-fusion": (NO_EFFECT, _GRADS),
    "--ddp-average-in-collective": (NO_EFFECT, _GRADS),
    "--ddp-reduce-scatter-with-fp32-accumulation": (NO_EFFECT, _GRADS),
    "--gtp-remat-reduce-scatter-with-fp32-accumulation": (NO_EFFECT, _GRADS),
    "--ddp-param-name-patterns-for-fp32-local-accumulation": (NO_EFFECT, _GRADS),
    "--ddp-num-buckets": (NO_EFFECT, "gradient buckets are sized by --ddp-bucket-size"),
    "--ddp-pad-buckets-for-high-nccl-busbw":
        (NO_EFFECT, "gradient buckets are sized by --ddp-bucket-size"),
    "--no-align-grad-reduce": (NO_EFFECT, "the data-parallel all-reduce always overlaps backward"),
    "--no-align-param-gather":
        (NO_EFFECT, "there is no distributed optimizer, so no parameter all-gather"),
    "--overlap-param-gather-with-optimizer-step":
        (NO_EFFECT, "there is no distributed optimizer, so no parameter all-gather"),
    "--create-all-gather-group":
        (NO_EFFECT, "there is no distributed optimizer, so no parameter all-gather"),
    "--log-memory-interval": (NO_EFFECT, "megaclap does not log memory"),
    "--log-device-memory-used": (NO_EFFECT, "megaclap does not log memory"),
    "--log-max-attention-logit": (NO_EFFECT, "megaclap does not log attention logits"),
    "--log-energy": (NO_EFFECT, "megaclap does not log energy"),
    "--logging-level":
        (NO_EFFECT, "megaclap prints its lines on the logging ranks; there are no log levels"),
    "--no-log-loss-scale-to-tensorboard":
        (NO_EFFECT, "the loss scale is always written to TensorBoard"),
    "--wandb-entity": (NO_EFFECT, "megaclap logs to TensorBoard only (--tensorboard-dir)"),
    "--rerun-mode":
        (NO_EFFECT, "megaclap has no rerun state machine (steps are never re-executed)"),
    "--check-for-spiky-loss":
        (NO_EFFECT, "megaclap has no rerun state machine (steps are never re-executed)"),
    "--check-for-large-grads":
        (NO_EFFECT, "megaclap has no rerun state machine (steps are never re-executed)"),
    "--result-rejected-tracker-filename": (NO_EFFECT, "megaclap has no rerun state machine"),
    "--no-pin-cpu-grads": (NO_EFFECT, "megaclap keeps no gradients in pinned CPU memory"),
    "--no-pin-cpu-params": (NO_EFFECT, "megaclap keeps no parameters in pinned CPU memory"),
    "--no-manual-gc-eval": (NO_EFFECT, "Python's garbage collector runs as usual"),
    "--local-rank": (NO_EFFECT, "the rank comes from torchrun's environment (RANK, LOCAL_RANK)"),
    "--lazy-mpu-init": (NO_EFFECT, "megaclap initializes its process groups at start-up"),
    "--distributed-timeout-seconds-after-init":
        (NO_EFFECT, "--distributed-timeout-minutes holds after initialization too"),
    "--disable-jit-fuser": (NO_EFFECT, _FUSION),
    "--use-ring-exchange-p2p": (NO_EFFECT, "pipeline p2p is torch.distributed batch_isend_irecv"),
    "--pipeline-model-parallel-comm-backend":
        (NO_EFFECT, "pipeline p2p uses the backend of the world group (gloo on CPU, NCCL on GPU)"),
    "--defer-embedding-wgrad-compute":
        (NO_EFFECT, "the embedding's weight gradient is computed in backward (same result)"),
    "--wgrad-deferral-limit":
        (NO_EFFECT, "the embedding's weight gradient is computed in backward (same result)"),
    "--flash-attention-version": (NO_EFFECT, "attention is torch SDPA, which picks its own kernel"),
    "--use-te-activation-func": (NO_EFFECT, "megaclap has one implementation in plain PyTorch"),
    "--te-rng-tracker": (NO_EFFECT, "megaclap has no Transformer Engine; dropout RNG is torch's"),
    "--use-grouped-gemm-for-dense-mlp": (NO_EFFECT, _FUSION),
    "--apply-query-key-layer-scaling":
        (NO_EFFECT, "the scaling is undone inside the softmax, so attention is unchanged; SDPA "
                    "accumulates in fp32"),
    "--init-model-with-meta-device":
        (NO_EFFECT, "megaclap builds each stage's parameters on its device"),
    "--no-initialization":
        (NO_EFFECT, "megaclap always initializes; weights from --load replace the initial ones"),
    "--no-clone-scatter-output-in-embedding":
        (NO_EFFECT, "megaclap has no sequence parallelism to scatter for"),
    "--config-logger-dir": (NO_EFFECT, "megaclap does not dump module configurations"),
    "--symmetric-ar-type": (NO_EFFECT, _NCCL),
    "--train-sync-interval":
        (NO_EFFECT, "steps make no host synchronisation until the --log-interval read"),
    "--check-weight-hash-across-dp-replicas-interval":
        (NO_EFFECT, "megaclap does not hash weights across data-parallel replicas"),
    "--gpu-sniff-test-interval": (NO_EFFECT, "megaclap runs no GPU health test"),
    "--dump-param-to-param-group-map": (NO_EFFECT, _DUMP),
    "--tp-comm-overlap-cfg": (NO_EFFECT, _TP_OVERLAP),
    "--tp-comm-overlap-rs-dgrad": (NO_EFFECT, _TP_OVERLAP),
    "--tp-comm-bootstrap-backend": (NO_EFFECT, _TP_OVERLAP),
    "--apply-wd-to-qk-layernorm": (NO_EFFECT, "megaclap has no query/key layer norm"),
    "--sgd-momentum": (NO_EFFECT, "applies to --optimizer sgd only; megaclap has Adam(W)"),
    "--rope-scaling-factor":
        (NO_EFFECT, "applies only with --use-rope-scaling, which megaclap refuses"),
    "--onnx-safe": (NO_EFFECT, "megaclap exports no ONNX"),
    "--no-save-tokenizer-assets":
        (NO_EFFECT, "megaclap saves no tokenizer files with a checkpoint"),
    "--no-use-tokenizer-model-from-checkpoint-args":
        (NO_EFFECT, "megaclap never reads the tokenizer from a checkpoint"),
    "--auto-detect-ckpt-format":
        (NO_EFFECT, "--load reads megaclap's format and names a Megatron-LM checkpoint as such "
                    "(convert it first)"),
    "--verify-integrity":
        (NO_EFFECT, "megaclap writes no hash manifest; checkpoints are committed by rename"),
    "--save-retain-interval": (NO_EFFECT, "megaclap keeps every checkpoint it saves"),
    "--load-main-params-from-ckpt": (NO_EFFECT, "the fp32 parameters are the model's own here"),
    "--per-dataset-sequences-path": (NO_EFFECT, "sequence counts are read from the .idx files"),
    "--dataloader-fast-cache-load": (NO_EFFECT, "index arrays are cached with --data-cache-path"),
    "--dataloader-defer-npy-index-mmap":
        (NO_EFFECT, "index arrays are cached with --data-cache-path"),
    "--mid-level-dataset-surplus":
        (NO_EFFECT, "megaclap's blended index is exact (no surplus samples)"),
    "--allow-ambiguous-pad-tokens": (NO_EFFECT, "megaclap masks no pad tokens"),
    "--null-tokenizer-eod-id":
        (NO_EFFECT, "training masks nothing by the end-of-document id; it matters to "
                    "tools/preprocess_data.py --append-eod"),
    "--disable-msc": (NO_EFFECT, "megaclap reads local paths only"),
    "--enable-experimental": (NO_EFFECT, "megaclap has no experimental switches"),
    # refused
    "--no-pad-vocab-size":
        (REFUSED, "the vocabulary is always padded to a multiple of "
                  "--make-vocab-size-divisible-by x tensor-parallel size"),
    # refused, except at the value where Megatron itself does nothing
    "--softmax-type":
        (REFUSED, "only the standard softmax is implemented; use vanilla", {"vanilla"}),
    "--glu-linear-offset": (REFUSED, "GLU variants are not implemented; use 0", {"0", "0.0"}),
    "--null-tokenizer-pad-id":
        (REFUSED, "pad-token loss masking is not implemented; use -1", {"-1"}),
    "--rotary-seq-len-interpolation-factor":
        (REFUSED, "rotary interpolation is not implemented; use 1", {"1"}),
    "--tensor-parallel-num-weight-shards":
        (REFUSED, "weight sharding beyond tensor parallelism is not implemented; use 1", {"1"}),
    "--mtp-num-layers": (REFUSED, "multi-token prediction is not implemented; use 0", {"0"}),
    "--data-parallel-sharding-strategy":
        (REFUSED, "FSDP / ZeRO sharding is not implemented; use no_shard", {"no_shard"}),
    "--num-distributed-optimizer-instances":
        (REFUSED, "there is no distributed optimizer; use 1", {"1"}),
    # refused
    "--batch-size": (REFUSED, "an old Megatron spelling; use --micro-batch-size"),
    "--model-parallel-size":
        (REFUSED, "an old Megatron spelling; use --tensor-model-parallel-size"),
    "--warmup":
        (REFUSED, "an old Megatron spelling; use --lr-warmup-iters, --lr-warmup-samples or "
                  "--lr-warmup-fraction"),
    "--checkpoint-activations":
        (REFUSED, "an old Megatron spelling; use --recompute-granularity full"),
    "--recompute-modules":
        (REFUSED, "selective recomputation is not implemented; use --recompute-granularity full"),
    "--distribute-saved-activations":
        (REFUSED, "recomputation keeps each layer's input on every tensor-parallel rank; saved "
                  "activations are not distributed"),
    "--fp32-residual-connection":
        (REFUSED, "the residual stream follows the autocast dtype (--bf16/--fp16); an fp32 "
                  "residual stream is not implemented"),
    "--disable-bf16-reduced-precision-matmul":
        (REFUSED, "set torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False "
                  "in your launcher"),
    "--embedding-init-method-std": (REFUSED, "the embedding is initialized with --init-method-std"),
    "--init-method-xavier-uniform":
        (REFUSED, "weights are initialized normal(0, --init-method-std)"),
    "--data-parallel-random-init":
        (REFUSED, "every data-parallel replica starts from the same weights (--seed)"),
    "--use-tp-pp-dp-mapping": (REFUSED, "megaclap's rank order is Megatron's default tp-dp-pp"),
    "--pipeline-model-parallel-layout":
        (REFUSED, "custom stage layouts are not implemented; use "
                  "--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers"),
    "--account-for-embedding-in-pipeline-split":
        (REFUSED, "uneven splits are set with --decoder-first-pipeline-num-layers / "
                  "--decoder-last-pipeline-num-layers"),
    "--account-for-loss-in-pipeline-split":
        (REFUSED, "uneven splits are set with --decoder-first-pipeline-num-layers / "
                  "--decoder-last-pipeline-num-layers"),
    "--decrease-batch-size-if-needed":
        (REFUSED, "a global batch not divisible by micro-batch x data-parallel size is an error; "
                  "set --global-batch-size"),
    "--iterations-to-skip": (REFUSED, "skipping iterations is not implemented"),
    "--freeze-all-layers": (REFUSED, "freezing parameters is not implemented"),
    "--lr-wsd-decay-samples": (REFUSED, "the warmup-stable-decay schedule is not implemented"),
    "--no-weight-decay-cond-type":
        (REFUSED, "weight decay applies to every weight matrix and never to biases or norms "
                  "(Megatron's default)"),
    "--padded-vocab-size":
        (REFUSED, "the padded vocabulary follows --make-vocab-size-divisible-by"),
    "--exit-signal":
        (REFUSED, "megaclap does not save on a signal; use --exit-duration-in-mins or "
                  "--save-interval"),
    "--exit-signal-handler-for-dataloader":
        (REFUSED, "megaclap does not save on a signal; use --exit-duration-in-mins or "
                  "--save-interval"),
    "--exit-signal-handler-for-training":
        (REFUSED, "megaclap does not save on a signal; use --exit-duration-in-mins or "
                  "--save-interval"),
    "--exit-on-missing-checkpoint":
        (REFUSED, "megaclap trains from scratch when --load holds no checkpoint (it says so at "
                  "start-up)"),
    "--pretrained-checkpoint": (REFUSED, "use --load with --finetune"),
    "--ckpt-step":
        (REFUSED, "--load resumes the tracked iteration (latest_checkpointed_iteration.txt)"),
    "--override-ckpt-iteration":
        (REFUSED, "--load resumes the tracked iteration (latest_checkpointed_iteration.txt)"),
    "--use-mp-args-from-checkpoint-args":
        (REFUSED, "model flags are not read from the checkpoint; pass them "
                  "(tools/checkpoint/convert.py prints them)"),
    "--ckpt-convert-format": (REFUSED, "convert with tools/checkpoint/convert.py or reshard.py"),
    "--ckpt-convert-save": (REFUSED, "convert with tools/checkpoint/convert.py or reshard.py"),
    "--ckpt-convert-update-legacy-dist-opt-format":
        (REFUSED, "convert with tools/checkpoint/convert.py"),
    "--start-eval-at-iter": (REFUSED, "evaluation runs every --eval-interval from the start"),
    "--eval-global-batch-size": (REFUSED, "evaluation uses the training batch sizes"),
    "--eval-micro-batch-size": (REFUSED, "evaluation uses the training batch sizes"),
    "--multiple-validation-sets": (REFUSED, "there is one validation split, from --split"),
    "--validation-set-names": (REFUSED, "there is one validation split, from --split"),
    "--test-mode": (REFUSED, "Megatron's test mode is not implemented"),
    "--phase-transition-iterations":
        (REFUSED, "data phases are not implemented; one --data-path blend"),
    "--per-split-data-args-path":
        (REFUSED, "per-split data paths are not implemented; use --data-path with --split"),
    "--sample-rate": (REFUSED, "data subsampling is not implemented"),
    "--dataloader-inter-document-masking":
        (REFUSED, "per-document attention masks are not implemented"),
    "--object-storage-cache-path": (REFUSED, "data must be local .bin/.idx files"),
    "--batch-invariant-mode": (REFUSED, "batch-invariant kernels are not implemented"),
    "--batch-invariant-backend": (REFUSED, "batch-invariant kernels are not implemented"),
    "--output-logit-dtype": (REFUSED, "the loss is computed in fp32 from the autocast logits"),
    "--use-rope-scaling":
        (REFUSED, "Llama-3.1 rope scaling is not implemented (plain rope, --rotary-base)"),
    "--mlp-chunks-for-training": (REFUSED, "MLP chunking is not implemented; " + _MEMORY, {"1"}),
    "--mlp-chunks-for-prefill":
        (REFUSED, "inference is not implemented (tools/generate.py generates)"),
    "--quick-geglu": (REFUSED, "activations are GELU (--openai-gelu: tanh) or --swiglu"),
    "--encoder-num-layers": (REFUSED, _T5),
    "--decoder-num-layers": (REFUSED, _T5),
    "--encoder-seq-length": (REFUSED, _T5),
    "--decoder-seq-length": (REFUSED, _T5),
    "--mask-prob": (REFUSED, _T5),
    "--short-seq-prob": (REFUSED, _T5),
    "--bert-no-binary-head": (REFUSED, _T5),
    "--spec": (REFUSED, "custom layer specs are not implemented"),
    "--yaml-cfg":
        (REFUSED, "YAML configs are not supported; pass flags (examples/pretrain_gpt/configs/ "
                  "holds size presets)"),
    "--sft":
        (REFUSED, "supervised fine-tuning data is not implemented; megaclap pretrains (use "
                  "--finetune to start from converted weights)"),
    "--sft-tokenizer-prompt-format": (REFUSED, "supervised fine-tuning data is not implemented"),
}

FAMILY_GROUPS = {   # Megatron groups that are one family each, answered before FAMILIES
    "rl": (REFUSED, "reinforcement learning (GRPO) is not implemented; megaclap pretrains GPT"),
    "inference":
        (REFUSED, "inference serving is not implemented (tools/generate.py generates from a "
                  "checkpoint)"),
    "biencoder": (REFUSED, "BERT/ICT biencoder models are not implemented; megaclap trains GPT"),
    "vision": (REFUSED, "vision models are not implemented; megaclap trains GPT"),
    "moe": (REFUSED, "mixture-of-experts is not implemented; megaclap trains dense GPT"),
    "mla": (REFUSED, "multi-latent attention is not implemented"),
    "experimental_attention_variant": (REFUSED, "linear-attention variants are not implemented"),
    "heterogeneous architecture":
        (REFUSED, "heterogeneous layers are not implemented: every layer is the same"),
    "Logits Distillation": (REFUSED, "logits distillation is not implemented"),
    "fault injector": (REFUSED, "fault injection is not implemented"),
    "rerun engine": (REFUSED, "error injection is not implemented"),
    "In-process restart": (REFUSED, _FAULTS),
    "ft_package": (REFUSED, _FAULTS),
}

FAMILIES = (   # (name pattern, answer, reason); the first match wins
    (r"^--(no-)?(inference|mamba-inference)|^--(flash-decode|enable-chunked-prefill|"
     r"num-speculative-tokens|use-legacy-static-engine|decode-only-cuda-graphs|"
     r"nccl-all-reduce-for-prefill|max-tokens-to-oom)",
     REFUSED, "inference serving is not implemented (tools/generate.py generates from a "
              "checkpoint)"),
    (r"moe|expert|^--num-experts|^--ep-|^--high-priority-a2a|^--delay-wgrad-compute|"
     r"^--overlap-dispatch",
     REFUSED, "mixture-of-experts is not implemented; megaclap trains dense GPT"),
    (r"^--(hierarchical-context-parallel-sizes|max-seqlen-per-dp-cp-rank|"
     r"hybrid-context-parallel|cp-comm-type)",
     REFUSED, "context parallelism is not implemented; use --context-parallel-size 1"),
    (r"cuda-graph",
     NO_EFFECT, _GRAPHS),
    (r"fp8|fp4|mxfp8|^--te-precision-config|kitchen|^--first-last-layers-bf16|"
     r"^--num-layers-at-(start|end)-in-bf16",
     REFUSED, "FP8/FP4 training is not implemented; use --bf16"),
    (r"mamba|hybrid|^--is-hybrid-model|^--gdp-|^--(no-)?linear-|"
     r"^--experimental-attention-variant|dsa-indexer|dsa-kernel",
     REFUSED, "Mamba, hybrid and linear-attention models are not implemented; megaclap trains "
              "transformer GPT"),
    (r"^--mtp-",
     REFUSED, "multi-token prediction is not implemented"),
    (r"(^--|-)mup(-|$)",
     REFUSED, "muP is not implemented; megaclap uses the standard parametrization "
              "(--init-method-std)"),
    (r"^--muon|^--qk-clip",
     REFUSED, "the Muon optimizer (and its QK-clip) is not implemented; megaclap has Adam(W)"),
    (r"^--lion-",
     REFUSED, "the Lion optimizer is not implemented; megaclap has Adam(W)"),
    (r"fsdp|^--use-megatron-fsdp|^--outer-dp-sharding|^--enable-full-sharding-in-hsdp|"
     r"^--suggested-communication-unit-size|^--(no-)?use-layer-wise-param-layout|"
     r"^--keep-fp8-transpose-cache",
     REFUSED, "FSDP / sharded data parallelism is not implemented; data-parallel ranks hold the "
              "whole stage"),
    (r"^--use-precision-aware-optimizer|^--(main-grads|main-params|exp-avg|exp-avg-sq)-dtype",
     REFUSED, "the precision-aware optimizer is not implemented: master weights, gradients and "
              "Adam moments are fp32"),
    (r"offload|cpu-optimizer",
     REFUSED, "CPU offloading is not implemented; " + _MEMORY),
    (r"^--(overlap-p2p-communication-warmup-flush|"
     r"microbatch-group-size-per-virtual-pipeline-stage)",
     REFUSED, "the interleaved (virtual pipeline) schedule is not implemented; use "
              "--pipeline-schedule 1f1b"),
    (r"^--(no-|disable-)?tp-comm-",
     NO_EFFECT, _TP_OVERLAP),
    (r"^--(expert-tensor-parallel-num-weight-shards|gtp-)",
     REFUSED, "weight sharding beyond tensor parallelism is not implemented"),
    (r"^--(window-size|window-attn-skip-freq)",
     REFUSED, "sliding-window attention is not implemented (full causal attention)"),
    (r"^--(no-)?yarn-|^--relative-attention-|^--no-rope-freq|^--mrope-section|"
     r"^--rotary-interleaved|^--rope-type",
     REFUSED, "this rotary / position-embedding variant is not implemented "
              "(--position-embedding-type rope or learned_absolute, --rotary-base)"),
    (r"^--(qk-l2-norm|attention-output-gate|apply-residual-connection-post-layernorm|"
     r"multi-latent-attention|enable-mhc-connections|mhc-|activation-func-clamp-value)",
     REFUSED, "this architecture variant is not implemented (pre-norm GPT: --normalization, "
              "--swiglu, --position-embedding-type)"),
    (r"^--(use-fused-weighted-squared-relu|fused-residual-rmsnorm|"
     r"use-transformer-engine-op-fuser)",
     NO_EFFECT, _FUSION),
    (r"^--(no-|disable-)?(ckpt-|dist-ckpt|async-|use-dist-ckpt|use-persistent-ckpt-worker|"
     r"strict-fsdp-dtensor-load|distrib-optim-fully-reshardable)",
     NO_EFFECT, _CKPT),
    (r"^--(non-persistent|replication)",
     REFUSED, _NONPERSISTENT),
    (r"^--save-(params|activations|tokens-per-expert|wgrads|dgrads)-interval",
     NO_EFFECT, _DUMP),
    (r"^--(no-|disable-)?tokenizer-|^--tiktoken-|^--trust-remote-code|^--chat-template|"
     r"^--use-gigatoken",
     NO_EFFECT, _TOKENIZE),
    (r"^--fim-",
     REFUSED, "fill-in-the-middle data is not implemented"),
    (r"^--(use-nccl-ub|disable-symmetric-registration|nccl-communicator-config-path|use-sharp|"
     r"sharp-enabled-group|high-priority-stream-groups|disable-gloo-process-groups|(no-|"
     r"disable-)?flight-recorder)",
     NO_EFFECT, _NCCL),
    (r"^--(fake-process-group)",
     REFUSED, "a fake process group is not implemented; run with torchrun"),
)

GROUPS = {   # the answer for the rest of a Megatron group
    "msc": (REFUSED, "the multi-storage client is not supported; megaclap reads local paths"),
    "autoresume": (NO_EFFECT, "megaclap has no ADLR autoresume hook; resume with --load"),
    "one logger": (NO_EFFECT, "megaclap logs to stdout and TensorBoard"),
    "opentelemetry": (NO_EFFECT, "megaclap emits no OpenTelemetry spans"),
    "straggler":
        (NO_EFFECT, "megaclap has no straggler detector; --timing-log-level 1 shows per-phase "
                    "times"),
    "workload inspector": (NO_EFFECT, _PROFILE),
    "profiling": (NO_EFFECT, _PROFILE),
    "logging": (NO_EFFECT, "megaclap does not log this"),
    "checkpointing": (NO_EFFECT, _CKPT),
    "distributed init": (NO_EFFECT, _NCCL),
    "tokenizer": (NO_EFFECT, _TOKENIZE),
}

