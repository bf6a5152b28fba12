"""Convert a transformers PyTorch xLSTM checkpoint (NX-AI/xLSTM-7b layout) to a Flax safetensors model folder.

The same command as `xlstm-flax convert from-pytorch` (`modeling_xlstm_flax.convert_common.main("from-pytorch")`); this file
lets a clone run it without installing: `python conversion/pytorch_to_flax.py --help`.
"""

import sys
from pathlib import Path

try:
    from modeling_xlstm_flax.convert_common import main
except ImportError:  # a clone that is not installed: import the package from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modeling_xlstm_flax.convert_common import main

if __name__ == "__main__":
    sys.exit(main("from-pytorch"))
