"""jaxift: instruction fine-tuning of decoder LLMs in JAX/Flax."""
import setuptools

setuptools.setup(
    name="jaxift",
    version="0.1.0",
    description="Instruction fine-tuning of pretrained decoder LLMs with JAX, Flax NNX, Grain, Optax and Orbax.",
    packages=setuptools.find_packages(include=["jaxift", "jaxift.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6,<0.13",
        "flax>=0.11,<0.14",
        "optax>=0.2.4,<0.4",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.10,<0.4",
        "array_record>=0.7,<0.10",
        "transformers>=4.50,<6",
        "tokenizers>=0.21,<1",
        "jinja2>=3.1,<4",  # chat templates (transformers apply_chat_template); not pulled in without torch
        "ml_collections>=1.0,<2",
        "absl-py>=2.0,<3",
        "safetensors>=0.4,<1",
        "gguf>=0.16,<1",
        "ftfy>=6.2,<7",
        "etils[epath]>=1.7,<2",
        "numpy>=1.26,<3",
        "pyarrow>=15,<30",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        "rouge-score>=0.1.2,<0.2",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "torch>=2.4,<3",
            "accelerate>=1.0,<2",
            "peft>=0.14,<1",
            "nbclient>=0.10,<1",
            "nbformat>=5.9,<6",
            "ipykernel>=6.29,<8",
            "datasets>=3.0,<6",
        ],
        "hf": ["datasets>=3.0,<6", "huggingface_hub>=0.26,<2"],
        # gs:// workdirs and data through etils.epath / tensorboardX on Cloud TPU VMs.
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14,<4"],
    },
)
