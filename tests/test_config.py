"""One test per start-up validation rule: each error names the flag to change."""
import pytest

from megaclap.config import ConfigError, parse_args

BASE = ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "100", "--micro-batch-size", "2", "--mock-data", "--train-iters", "10"]


def check(extra, world, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(BASE + extra).validate(world)


def test_world_size_not_tp_pp_dp():
    check(["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6,
          r"world size 6 is not divisible by --tensor-model-parallel-size 2")


def test_heads_not_divisible_by_tp():
    check(["--num-attention-heads", "4", "--hidden-size", "36", "--tensor-model-parallel-size", "8"], 8,
          r"--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 8")


def test_query_groups_not_divisible_by_tp():
    check(["--group-query-attention", "--num-query-groups", "1", "--tensor-model-parallel-size", "2"], 2,
          r"--num-query-groups 1 is not divisible by --tensor-model-parallel-size 2")


def test_heads_not_divisible_by_query_groups():
    check(["--group-query-attention", "--num-query-groups", "3"], 1,
          r"--num-attention-heads 4 is not divisible by --num-query-groups 3")


def test_layers_not_divisible_by_pp():
    check(["--num-layers", "3", "--pipeline-model-parallel-size", "2"], 2, r"--num-layers: 3 layers do not split")


def test_uneven_split_flags_accepted_and_checked():
    cfg = parse_args(BASE + ["--num-layers", "3", "--pipeline-model-parallel-size", "2",
                             "--decoder-first-pipeline-num-layers", "1"]).validate(2)
    assert cfg.parallel.decoder_first_pipeline_num_layers == 1
    check(["--pipeline-model-parallel-size", "2", "--decoder-first-pipeline-num-layers", "5"], 2, r"exceed --num-layers")


def test_global_batch_not_divisible():
    check(["--global-batch-size", "6", "--micro-batch-size", "4"], 1,
          r"--global-batch-size 6 is not divisible by --micro-batch-size 4")


def test_seq_length_over_max_positions():
    check(["--max-position-embeddings", "8"], 1, r"--seq-length 16 exceeds --max-position-embeddings 8")


def test_fp16_and_bf16():
    check(["--fp16", "--bf16"], 1, r"--fp16 and --bf16 are both set")


@pytest.mark.parametrize("flag,value", [("--position-embedding-type", "alibi"), ("--normalization", "BatchNorm"),
                                        ("--lr-decay-style", "step"), ("--pipeline-schedule", "zb"),
                                        ("--recompute-granularity", "selective")])
def test_unknown_choices(flag, value):
    check([flag, value], 1, f"{flag} '{value}' is not one of")


def test_vocab_size_required():
    with pytest.raises(ConfigError, match="--vocab-size is required"):
        parse_args([a for a in BASE if a not in ("--vocab-size", "100")]).validate(1)


def test_compression_without_pipeline_warns():
    with pytest.warns(UserWarning, match="nothing to compress"):
        parse_args(BASE + ["--pp-compression-method", "clapping-fu"]).validate(1)


def test_bad_codec_fails_at_parse():
    with pytest.raises(ConfigError, match="--pp-fwd-codec"):
        parse_args(BASE + ["--pp-compression-method", "direct", "--pp-fwd-codec", "topk:1.5"])


@pytest.mark.parametrize("flag", ["--micro-batch-size", "--num-layers", "--make-vocab-size-divisible-by",
                                  "--seq-length", "--distributed-timeout-minutes"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_sizes_must_be_positive(flag, value):
    """Each used to crash later with a raw ZeroDivisionError/IndexError, or (seq 0) train on NaN."""
    with pytest.raises(ConfigError, match=f"^{flag} {value}(.0)? must be") as err:
        parse_args(BASE + [flag, value]).validate(1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["clapping-fu", "clapping-fc"])
def test_clapping_without_lazy_sampling_warns(method):
    argv = BASE + ["--pipeline-model-parallel-size", "2", "--pp-compression-method", method]
    with pytest.warns(UserWarning, match="--lazy-sampling-prob .* --lazy-sampling-period"):
        parse_args(argv).validate(2)


@pytest.mark.parametrize("extra", [["--lazy-sampling-prob", "0.5"], ["--lazy-sampling-period", "4"]])
def test_clapping_with_lazy_sampling_does_not_warn(extra, recwarn):
    argv = BASE + ["--pipeline-model-parallel-size", "2", "--pp-compression-method", "clapping-fu"]
    parse_args(argv + extra).validate(2)
    assert not [w for w in recwarn if "lazy" in str(w.message)]
