"""Convert a Flax model folder to transformers' PyTorch xLSTM layout (safetensors).

The same command as `xlstm-flax convert to-pytorch` (`modeling_xlstm_flax.convert_common.main("to-pytorch")`); this file
lets a clone run it without installing: `python conversion/flax_to_pytorch.py --help`.
"""

import sys
from pathlib import Path

try:
    from modeling_xlstm_flax.convert_common import main
except ImportError:  # a clone that is not installed: import the package from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modeling_xlstm_flax.convert_common import main

if __name__ == "__main__":
    sys.exit(main("to-pytorch"))
