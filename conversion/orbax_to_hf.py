"""Convert an xlstm-jax orbax checkpoint (or its params) to a Flax safetensors model folder.

The same command as `xlstm-flax convert from-orbax` (`modeling_xlstm_flax.convert_common.main("from-orbax")`); this file
lets a clone run it without installing: `python conversion/orbax_to_hf.py --help`.
"""

import sys
from pathlib import Path

try:
    from modeling_xlstm_flax.convert_common import main
except ImportError:  # a clone that is not installed: import the package from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modeling_xlstm_flax.convert_common import main

if __name__ == "__main__":
    sys.exit(main("from-orbax"))
