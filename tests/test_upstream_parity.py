"""Parity with upstream xlstm-jax: golden logits from tests/fixtures (float32, tolerance 1e-4)."""

import numpy as np
import pytest

from conftest import FIXTURE_MODELS, FIXTURES, load_fixture, max_abs_diff
from modeling_xlstm_flax import FlaxXLSTMForCausalLM

TOL = 1e-4


@pytest.mark.parametrize("kernel", ["parallel_stabilized", "chunkwise", "recurrent"])
@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_logits_match_upstream(name, kernel):
    config, params, inputs, logits = load_fixture(name, sequence_kernel=kernel, chunk_size=8)
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    ours = model(inputs, params=params).logits
    assert ours.dtype == np.float32
    assert max_abs_diff(ours, logits) <= TOL


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_logits_match_upstream_recurrent_backend(name):
    """Upstream's own recurrent backend output, for the same inputs."""
    config, params, inputs, _ = load_fixture(name, sequence_kernel="recurrent")
    expected = np.load(FIXTURES / name / "recurrent_logits.npy")
    ours = FlaxXLSTMForCausalLM(config, _do_init=False)(inputs, params=params).logits
    assert max_abs_diff(ours, expected) <= TOL


def test_translated_config_records_upstream_dims():
    config, params, _, _ = load_fixture("v1")
    assert (config.qk_dim, config.v_dim, config.ff_dim) == (32, 64, 192)
    assert params["backbone"]["blocks"]["0"]["mlstm_layer"]["multihead_norm"]["scale"].shape == (64,)
    config2, _, _, _ = load_fixture("v2")
    assert (config2.inner_dim, config2.num_proj_heads, config2.gate_input_dim) == (128, 32, 384)


def test_upstream_param_mapping_round_trips():
    from safetensors.numpy import load_file

    from modeling_xlstm_flax.loading import flax_to_upstream

    for name in FIXTURE_MODELS:
        config, params, _, _ = load_fixture(name)
        if config.scan_blocks:
            continue  # upstream's scan layout is stacked; our writer emits unrolled blocks
        original = load_file(str(FIXTURES / name / "params.safetensors"))
        back = flax_to_upstream(params, config)
        assert set(back) == set(original)
        for key, value in original.items():
            np.testing.assert_array_equal(back[key], value)


def test_mapping_rejects_unknown_and_misshaped_keys():
    from safetensors.numpy import load_file

    from modeling_xlstm_flax.loading import upstream_to_flax

    config, _, _, _ = load_fixture("v1")
    flat = load_file(str(FIXTURES / "v1" / "params.safetensors"))
    bad = dict(flat, **{"params/xlstm_block_stack/blocks/0/xlstm_res_block/xlstm/mystery/kernel": np.zeros(3)})
    with pytest.raises(ValueError, match="mystery"):
        upstream_to_flax(bad, config)
    missing = {k: v for k, v in flat.items() if "dense_q" not in k}
    with pytest.raises(ValueError, match="missing 2.*mlstm_layer/q/kernel"):
        upstream_to_flax(missing, config)
    wrong = dict(flat)
    wrong["params/lm_head/out_dense/kernel"] = np.zeros((64, 98), np.float32)
    with pytest.raises(ValueError, match=r"lm_head/kernel: got \(64, 98\), config needs \(64, 97\)"):
        upstream_to_flax(wrong, config)
