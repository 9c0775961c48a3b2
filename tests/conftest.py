"""Settings shared by every test module."""

import os

# ITK fixes its thread count at its first use in a process, and only one thread makes ANTs
# registration reproducible; set it before any test module imports ants.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
