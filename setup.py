from setuptools import find_packages, setup

setup(
    name="megaclap",
    version="0.1.0",
    description="Megatron-style GPT pretraining with Clapping-compressed pipeline-parallel communication",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["megaclap", "megaclap.*"]),
    package_data={"megaclap.config": ["megatron_flags.tsv"]},
    python_requires=">=3.10",
    # torch is installed first, pinned, by the Makefile (TORCH_SPEC): an unpinned torch
    # would pull several GB of CUDA wheels on a CPU machine.
    install_requires=["torch>=2.5", "numpy", "sentencepiece", "datasets", "tensorboard", "tqdm"],
    extras_require={
        "test": ["pytest", "transformers", "safetensors", "matplotlib", "pyyaml"],
        "hf": ["transformers", "safetensors"],
        "plots": ["matplotlib"],
    },
)
