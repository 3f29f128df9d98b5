"""Set before any test module or doctest imports keras: Keras's default backend, TensorFlow, is not installed
here (``make test-tf`` installs it and sets ``KERAS_BACKEND=tensorflow`` itself)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
