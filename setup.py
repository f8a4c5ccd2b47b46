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
        # triton: the fused codec kernels (CUDA), tested on CPU through Triton's interpreter;
        # Linux x86_64 wheels only, unpinned so a CUDA torch keeps the triton it pins
        "test": ["pytest", "transformers", "safetensors", "matplotlib", "pyyaml",
                 "triton; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "kernels": ["triton; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "hf": ["transformers", "safetensors"],
        "plots": ["matplotlib"],
    },
)
