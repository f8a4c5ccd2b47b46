"""Pretrain a GPT with megaclap. Launch as Megatron users do:

    torchrun --nproc_per_node 4 examples/pretrain_gpt/pretrain_gpt.py \
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --num-layers 4 ...
"""
import sys

from megaclap.training.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
