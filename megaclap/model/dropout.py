"""Forward-pass randomness as a function of the samples (DESIGN.md section 7, issue 21.1).

Lazy sampling repeats a global batch exactly; for Clapping to send only what changed, the
repeated step must also pass the samples through the same random function. So before each
microbatch's forward on a stage, the default generators (CPU and the stage's device) are
seeded from

    (--seed, the fresh step that drew the batch, the stage's first layer, the sample ids)

and restored afterwards. Every dropout draw of the stage (embedding dropout, each layer's
hidden dropout, SDPA's attention dropout) then depends on nothing else: a repeated step draws
the masks of its fresh step, after a resume too, in any layout. Tensor-parallel ranks of a stage
see the same samples, so they draw the same masks (replicated activations stay identical);
data-parallel ranks see different samples and draw different masks. Recomputation
(torch.utils.checkpoint) restores the generator state it saw, so it redraws the same masks.

Masks need not agree between the two ends of a boundary (each stage draws its own), so a device
generator is fine here; randomness both ends share comes from the codecs' counter-based seeds.
With no dropout, or in eval mode, nothing is seeded (no RNG work at all).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np
import torch

_TAG = 0xD40F  # this purpose's word in the seed sequence (samplers use their own tags)
_MASK64 = (1 << 64) - 1


def has_dropout(model_cfg) -> bool:
    return model_cfg.hidden_dropout > 0 or model_cfg.attention_dropout > 0


def sample_seed(seed: int, drawn_step: int, first_layer: int, sample_ids) -> int:
    """A 63-bit generator seed, a pure function of its arguments (numpy's SeedSequence over the
    integers; sample ids are host ints: a CPU tensor or a sequence, never a device read)."""
    ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else [int(i) for i in sample_ids]
    entropy = [seed & _MASK64, _TAG, drawn_step, first_layer, *ids]
    words = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Run the block with the default generators seeded by `seed`; their states are restored
    after (torch.random.fork_rng over the CPU and `device`)."""
    device = torch.device(device)
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else None):
        torch.manual_seed(seed)
        yield


def microbatch_rng(stage, seed, drawn_step: int, sample_ids, device):
    """The context for one microbatch's forward on `stage` (a GPTStage): seeded from the samples
    when the stage is training with dropout and a seed is given, else a no-op."""
    if seed is None or not stage.training or not has_dropout(stage.cfg):
        return nullcontext()
    return seeded_rng(sample_seed(seed, drawn_step, stage.start, sample_ids), device)
