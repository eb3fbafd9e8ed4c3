"""mnist1d_lab: a small, fast, hackable lab for the science of deep learning on MNIST-1D."""

__version__ = "0.1.0"
