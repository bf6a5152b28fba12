"""`from modeling_xlstm_flax import FlaxAutoModelForCausalLM, FlaxAutoModel` under both transformers majors: our
config folders and transformers' `xLSTMConfig` (PyTorch layout) folders resolve to our classes, the xlstm folder's
config loads without transformers' model-type mismatch warning, another model_type is refused by name."""

import json
import logging

import numpy as np
import pytest
import transformers

from modeling_xlstm_flax import FlaxAutoModel, FlaxAutoModelForCausalLM, FlaxXLSTMForCausalLM, FlaxXLSTMModel
from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config
from modeling_xlstm_flax.convert_flax_to_pytorch import convert_flax_to_pytorch
from modeling_xlstm_flax.generate import bundled_model_path

IS_V4 = int(transformers.__version__.split(".")[0]) < 5


def test_is_transformers_class_under_4x():
    if IS_V4:
        assert FlaxAutoModelForCausalLM is transformers.FlaxAutoModelForCausalLM
        assert FlaxAutoModel is transformers.FlaxAutoModel
    else:
        assert not hasattr(transformers, "FlaxAutoModelForCausalLM")


def test_bundled_model_resolves_to_our_classes():
    lm = FlaxAutoModelForCausalLM.from_pretrained(bundled_model_path())
    backbone = FlaxAutoModel.from_pretrained(bundled_model_path())
    assert type(lm) is FlaxXLSTMForCausalLM and type(backbone) is FlaxXLSTMModel
    direct = FlaxXLSTMForCausalLM.from_pretrained(bundled_model_path())
    ids = np.array([[5, 9, 12, 40]], dtype="i4")
    np.testing.assert_array_equal(np.asarray(lm(ids).logits), np.asarray(direct(ids).logits))


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_pytorch_layout_folder_loads_without_type_warning(tmp_path):
    pt_config = transformers.xLSTMConfig(vocab_size=97, hidden_size=64, num_heads=2, num_hidden_layers=2,
                                         dtype="float32")
    model = FlaxXLSTMForCausalLM(from_transformers_config(pt_config), seed=1)
    model.save_pretrained(tmp_path / "flax")
    convert_flax_to_pytorch(tmp_path / "flax", tmp_path / "pt", progress=False)
    assert json.loads((tmp_path / "pt" / "config.json").read_text())["model_type"] == "xlstm"
    handler = _Messages()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        loaded = FlaxAutoModelForCausalLM.from_pretrained(tmp_path / "pt")
    finally:
        logger.removeHandler(handler)
    assert not [m for m in handler.messages if "to instantiate a model of type" in m], handler.messages
    ids = np.array([[3, 1, 4, 1, 5]], dtype="i4")
    # fp32 round trip through the PyTorch layout: same weights, same logits (~1e-6)
    np.testing.assert_allclose(np.asarray(loaded(ids).logits), np.asarray(model(ids).logits), atol=1e-5)


@pytest.mark.skipif(IS_V4, reason="under 4.x the class is transformers' own (its error text)")
def test_other_model_type_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        FlaxAutoModelForCausalLM.from_pretrained(tmp_path)
