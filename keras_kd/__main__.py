"""`python -m keras_kd ...` runs the `keras-kd` command (see `keras_kd.demo.cli`)."""

import sys

from keras_kd.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
