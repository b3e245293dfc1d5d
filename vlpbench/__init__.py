"""vlpbench: comparative benchmarking of vision-language pre-training methods."""

__version__ = "0.1.0"
