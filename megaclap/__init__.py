"""megaclap: Megatron-style GPT pretraining with compressed pipeline-parallel communication."""

__version__ = "0.1.0"
