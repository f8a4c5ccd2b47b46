"""The papers' variants and this project's extensions (issue 21.2): clapping-fc's fresh-batch
reference rule is one option (zero, previous, fresh-codec), and every setting gets a label that
says whether a paper defines it."""
import pytest
import torch

from megaclap.compression import parse_codec, step_seed
from megaclap.config import CompressionConfig, DataConfig
from megaclap.compression.variants import BASELINE, EXTENSION, PAPER, variant, variant_of
from tests.test_channels import SHAPE, assert_same_state, make_pair, transfer


def test_fc_fresh_codec_rule_sends_the_fresh_batch_with_its_codec_against_zero():
    """Catches: the option ignored (the fresh batch would be a topk delta against m = 0, or
    against the previous m), or a path that differs from the old spelling (zero + fresh codec)."""
    new = make_pair("clapping-fc", "topk:0.5", fc_init="fresh-codec", fresh_codec="quant:8")[0]
    old = make_pair("clapping-fc", "topk:0.5", fc_init="zero", fresh_codec="quant:8")[0]
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(SHAPE, generator=gen) for _ in range(4)]
    for t, x in enumerate(xs):
        a, b = transfer(*new, x, t, t in (0, 2))[1], transfer(*old, x, t, t in (0, 2))[1]
        assert torch.equal(a, b)
    _, x_hat = transfer(*new, xs[0] + 1, 4, True)
    expected = parse_codec("quant:8").decode(parse_codec("quant:8").encode(xs[0] + 1, step_seed(7, 4, 1, "fwd", 0)),
                                             SHAPE, torch.float32, step_seed(7, 4, 1, "fwd", 0))
    assert torch.equal(x_hat, expected)
    assert_same_state(*new)


def test_fc_fresh_codec_rule_needs_the_codec():
    with pytest.raises(ValueError, match="--clapping-fc-init fresh-codec .* --clapping-fresh-codec"):
        CompressionConfig(method="clapping-fc", fwd_codec="topk:0.1", clapping_fc_init="fresh-codec")
    CompressionConfig(method="clapping-fc", fwd_codec="topk:0.1", clapping_fc_init="fresh-codec",
                      clapping_fresh_codec="quant:8")


@pytest.mark.parametrize("kwargs,lazy,origin,words", [
    (dict(method="clapping-fu"), True, PAPER, "Clapping-FU, both directions"),
    (dict(method="clapping-fc", fc_init="previous"), True, PAPER, "Clapping-FC (previous), both"),
    (dict(method="clapping-fc"), True, PAPER, "Clapping-FC (zero), both"),
    (dict(method="clapping-fu", bwd_method="direct"), True, EXTENSION, "activations only"),
    (dict(method="clapping-fu", fresh_codec="hquant:4"), True, EXTENSION, "fresh-step codec hquant:4"),
    (dict(method="clapping-fc", fc_init="fresh-codec", fresh_codec="quant:8"), True, EXTENSION, "fresh-step"),
    (dict(method="aqsgd"), False, PAPER, "multi-epoch"),
    (dict(method="aqsgd"), True, EXTENSION, "lazy sampling"),
    (dict(method="ef21"), True, BASELINE, "ef21"),
    (dict(method="none"), False, BASELINE, "none")])
def test_variant_labels_tell_the_papers_from_the_extensions(kwargs, lazy, origin, words):
    """Catches: an extension (fresh-step codec, one-direction Clapping, AQ-SGD under lazy
    sampling) presented as a paper's method, or the reverse."""
    label, got = variant(lazy=lazy, **kwargs)
    assert got == origin and words in label, (label, got)


def test_variant_of_reads_the_configs():
    c = CompressionConfig(method="clapping-fu", fwd_codec="topk:0.1", clapping_fresh_codec="hquant:4")
    assert variant_of(c, DataConfig(mock_data=True, lazy_sampling_prob=0.5))[1] == EXTENSION
    c = CompressionConfig(method="aqsgd", fwd_codec="topk:0.1")
    assert variant_of(c, DataConfig(mock_data=True))[1] == PAPER
    assert variant_of(c, DataConfig(mock_data=True, lazy_sampling_period=2))[1] == EXTENSION
