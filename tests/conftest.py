import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The fused codec kernels (megaclap/compression/kernels) run in Triton's interpreter on CPU-only
# machines (tests/test_codec_kernels.py). Triton fixes interpret vs compile when a function is
# decorated, its own library functions at `import triton`, so the switch must be set before
# anything imports triton. With CUDA the kernels are compiled and run on the GPU instead.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
