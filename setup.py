"""jaxift: instruction fine-tuning of decoder LLMs in JAX/Flax."""
import setuptools

setuptools.setup(
    name="jaxift",
    version="0.1.0",
    description="Instruction fine-tuning of pretrained decoder LLMs with JAX, Flax NNX, Grain, Optax and Orbax.",
    packages=setuptools.find_packages(include=["jaxift", "jaxift.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Floors are what the code calls: flax.nnx APIs of 0.12.1 (which needs jax 0.8.1), Grain's
        # checkpoint handler and packing of 0.2.13, Orbax's preservation policies of 0.11.14. jax
        # 0.11.1 and 0.11.2 break `import flax.nnx` on flax 0.12.8/0.12.9 (flax#5596; Tunix pins
        # jax<0.11.1 for the same reason), so the cap stops below them.
        "jax>=0.8.1,<0.11.1",
        "jaxlib>=0.8.1,<0.11.1",
        "flax>=0.12.1,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11.14,<0.13",
        "grain>=0.2.13,<0.3",
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
            "lm-eval>=0.4.13,<0.5",
        ],
        # lm-evaluation-harness tasks through jaxift.infer.lm_eval_adapter (tools/evaluate.py
        # --lm_eval_tasks); local task YAMLs over local data files need nothing else.
        "eval": ["lm-eval>=0.4.13,<0.5"],
        "hf": ["datasets>=3.0,<6", "huggingface_hub>=0.26,<2"],
        # gs:// workdirs and data through etils.epath / tensorboardX on Cloud TPU VMs.
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14,<4"],
    },
)
