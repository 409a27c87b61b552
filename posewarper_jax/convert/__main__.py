"""``python -m posewarper_jax.convert``: see the package docstring."""

import sys

from posewarper_jax.convert.command import main

sys.exit(main())
