from setuptools import find_packages
from setuptools import setup

setup(
    name="keras_kd",
    version="0.1.0",
    description="Knowledge distillation for Keras 3: one-pass distiller, "
    "feature/relational/attention terms, recipes and TFLite export.",
    packages=find_packages(include=["keras_kd", "keras_kd.*"]),
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.15,<3.16",
        "tensorflow>=2.21,<2.22",
        "tensorflow-datasets>=4.9",
        "absl-py>=2.0",
        # TensorBoard logs of the recipes (tf.summary needs it).
        "tensorboard>=2.21,<2.22",
        # Provides the embedded offline dataset (load_digits) of the main job.
        "scikit-learn>=1.3",
        "numpy",
    ],
    entry_points={
        "console_scripts": [
            "keras-kd-distill=keras_kd.cli.distill:main",
            "keras-kd-distill-lm=keras_kd.cli.distill_lm:main",
            "keras-kd-reffakd=keras_kd.cli.distill:reffakd_main",
            "keras-kd-specialize=keras_kd.cli.specialize:main",
            "keras-kd-train-teacher=keras_kd.cli.train_teacher:main",
        ],
    },
    extras_require={
        "dev": [
            "pytest>=8",
            "jax[cpu]>=0.4.30",
            "matplotlib>=3.7",
            "ruff==0.17.6",
            "pytest-xdist>=3.5",
            "keras-hub==0.32.0",
        ],
        "cv": ["keras-cv"],
        # keras_hub models (e.g. GPT2CausalLM) as teachers and students;
        # this version keeps the pinned TensorFlow and Keras.
        "hub": ["keras-hub==0.32.0"],
        # The PyTorch backend (KERAS_BACKEND=torch). Pinned exactly: this
        # build is the CPU one; other versions pull a multi-GB CUDA build.
        "torch": ["torch==2.13.0"],
    },
)
