"""--compile: the stage is compiled with torch.compile and trains like eager (issue 15).

The test uses the aot_eager backend (dynamo + AOTAutograd, no code generation) to stay within the
test budget on a small CPU box; inductor compiles the same graphs (run by bench/model_overhead.py
--compile)."""
import functools

import torch

import megaclap.training.trainer as trainer_module
from tests.train_utils import make_trainer, tiny_args


def test_compiled_stage_trains_like_eager(monkeypatch):
    argv = tiny_args(layers=2, extra=["--position-embedding-type", "rope"])
    eager = make_trainer(0, 1, argv)
    want = [eager.train_step(eager.data.train.next_batch())["loss"] for _ in range(2)]
    monkeypatch.setattr(trainer_module, "compile_stage",
                        functools.partial(trainer_module.compile_stage, backend="aot_eager"))
    torch._dynamo.reset()
    compiled = make_trainer(0, 1, argv + ["--compile"])
    assert compiled.stage._compiled_call_impl is not None  # the flag reached torch.compile
    got = [compiled.train_step(compiled.data.train.next_batch())["loss"] for _ in range(2)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(compiled.stage.named_parameters(), eager.stage.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=name)
    assert "_orig_mod" not in "".join(compiled.stage.state_dict())  # checkpoints keep their keys
