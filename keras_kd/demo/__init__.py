"""The `keras-kd demo` command and the MNIST loading it (and the tutorials) use."""
