"""save_pretrained (safetensors) / from_pretrained round trips: params and logits bit-identical."""

import jax
import numpy as np
import pytest

from conftest import assert_params_identical, config_fields, tiny_config, transformers_flax_class


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
@pytest.mark.parametrize("scan_blocks", [False, True])
def test_round_trip_bit_identical(tmp_path, layer_type, scan_blocks):
    from transformers import AutoConfig

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, XLSTMFlaxConfig

    config = tiny_config(layer_type, scan_blocks=scan_blocks)
    model = FlaxXLSTMForCausalLM(config, seed=3)
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 9))
    logits = np.asarray(model(ids).logits)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    loaded = FlaxXLSTMForCausalLM.from_pretrained(tmp_path)
    assert_params_identical(model.params, loaded.params)
    np.testing.assert_array_equal(np.asarray(loaded(ids).logits), logits)

    auto_config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(auto_config, XLSTMFlaxConfig)
    assert config_fields(auto_config) == config_fields(config)
    auto_class = transformers_flax_class("FlaxAutoModelForCausalLM")
    if auto_class is not None:  # transformers 4.x
        auto = auto_class.from_pretrained(tmp_path)
        assert isinstance(auto, FlaxXLSTMForCausalLM)
        np.testing.assert_array_equal(np.asarray(auto(ids).logits), logits)


def test_from_pretrained_dtype_defaults_to_config(tmp_path):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    FlaxXLSTMForCausalLM(tiny_config(compute_dtype="bfloat16")).save_pretrained(tmp_path)
    assert FlaxXLSTMForCausalLM.from_pretrained(tmp_path).dtype == jax.numpy.bfloat16
    assert FlaxXLSTMForCausalLM.from_pretrained(tmp_path, dtype=jax.numpy.float32).dtype == jax.numpy.float32


def test_base_model_loads_from_lm_checkpoint(tmp_path):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, FlaxXLSTMModel

    lm = FlaxXLSTMForCausalLM(tiny_config(), seed=1)
    lm.save_pretrained(tmp_path)
    loaders = [FlaxXLSTMModel] + [cls for cls in [transformers_flax_class("FlaxAutoModel")] if cls is not None]
    for loader in loaders:
        base = loader.from_pretrained(tmp_path)
        assert isinstance(base, FlaxXLSTMModel)
        assert_params_identical(base.params, lm.params["backbone"])
