"""Property tests (hypothesis): random valid configs build, run finite, agree across kernel forms and survive
save/load bit-exactly; random invalid values are rejected with ValueError, never another exception.

Budget: the `ci` profile (default) runs few examples; `HYPOTHESIS_PROFILE=dev pytest tests/test_properties.py`
runs a longer search by hand.
"""

import math
import os

import jax
import numpy as np
import pytest
from flax.core.frozen_dict import unfreeze
from flax.traverse_util import flatten_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import max_abs_diff
from modeling_xlstm_flax import FlaxXLSTMForCausalLM, XLSTMFlaxConfig

settings.register_profile("ci", max_examples=3, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BASE = dict(vocab_size=61, embedding_dim=64, num_blocks=2, compute_dtype="float32", context_length=16, chunk_size=4)


@st.composite
def valid_configs(draw):
    layer_type = draw(st.sampled_from(["mlstm_v1", "mlstm"]))
    norm = st.sampled_from(["layernorm", "rmsnorm"])
    fields = dict(
        BASE,
        layer_type=layer_type,
        num_heads=draw(st.sampled_from([1, 2, 4])),
        qk_dim_factor=draw(st.sampled_from([0.5, 1.0])),
        v_dim_factor=draw(st.sampled_from([1.0, 2.0])),
        bias=draw(st.booleans()),
        norm_type=draw(norm), block_norm_type=draw(norm), mlstm_norm_type=draw(norm), cell_norm_type_v1=draw(norm),
        gate_soft_cap=draw(st.sampled_from([None, 5.0, 15.0])),
        logits_soft_cap=draw(st.sampled_from([None, 30.0])),
        scan_blocks=draw(st.booleans()),
        ff_type=draw(st.sampled_from([None, "ffn_gated", "ffn"])),
        ff_act_fn=draw(st.sampled_from(["gelu", "swish", "relu^2"])),
        add_qk_norm=draw(st.booleans()),
        add_post_norm=draw(st.booleans()),
        add_post_blocks_norm=draw(st.booleans()),
        tie_word_embeddings=draw(st.booleans()),
        igate_bias_init_range=draw(st.sampled_from([None, -10.0, 0.0])),
        fgate_bias_init_range=draw(st.sampled_from([[3.0, 6.0], 2.0])),
    )
    if layer_type == "mlstm":
        fields.update(
            gate_input=draw(st.sampled_from(["qkv", "x_mlstm", "x_mlstm_conv", "x_mlstm_conv_act"])),
            gate_linear_headwise=draw(st.booleans()),
            vmap_qk=draw(st.booleans()),
            conv1d_kernel_size=draw(st.sampled_from([2, 4])),
        )
    return XLSTMFlaxConfig(**fields)


@given(config=valid_configs(), seed=st.integers(0, 2**16))
def test_valid_configs_run_agree_and_round_trip(tmp_path_factory, config, seed):
    model = FlaxXLSTMForCausalLM(config, seed=seed)
    ids = np.random.RandomState(seed).randint(0, config.vocab_size, (2, 10))
    outputs = {}
    for kernel in ("parallel_stabilized", "chunkwise", "recurrent"):
        config.sequence_kernel = kernel
        form = FlaxXLSTMForCausalLM(config, _do_init=False)
        outputs[kernel] = np.asarray(jax.jit(lambda p, x: form(x, params=p).logits)(model.params, ids))
        assert np.all(np.isfinite(outputs[kernel])), kernel
    assert max_abs_diff(outputs["chunkwise"], outputs["parallel_stabilized"]) <= 1e-4
    assert max_abs_diff(outputs["recurrent"], outputs["parallel_stabilized"]) <= 1e-4
    directory = tmp_path_factory.mktemp("round_trip")
    model.save_pretrained(directory)
    loaded = FlaxXLSTMForCausalLM.from_pretrained(directory)
    original, again = flatten_dict(unfreeze(model.params)), flatten_dict(unfreeze(loaded.params))
    assert set(original) == set(again)
    for key, value in original.items():  # bit-identical params give bit-identical logits
        np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(value), err_msg=str(key))


INVALID = {
    "vocab_size": st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.text(max_size=3)),
    "embedding_dim": st.one_of(st.integers(max_value=0), st.just(64.5), st.none()),
    "num_heads": st.one_of(st.integers(max_value=0), st.sampled_from([3, 5, 7, 100])),
    "num_blocks": st.one_of(st.integers(max_value=0), st.just(True)),
    "layer_type": st.text(max_size=8).filter(lambda s: s not in ("mlstm", "mlstm_v1")),
    "norm_type": st.text(max_size=8).filter(lambda s: s not in ("layernorm", "rmsnorm")),
    "dropout": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.just(math.nan)),
    "norm_eps": st.one_of(st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan)),
    "gate_soft_cap": st.one_of(st.floats(max_value=0.0), st.just(math.nan)),
    "qk_dim_factor": st.one_of(st.floats(max_value=0.0), st.just(0.001)),
    "chunk_size": st.one_of(st.integers(max_value=0), st.just(2.5)),
    "compute_dtype": st.sampled_from(["float64", "int8", "fp8", ""]),
    "sequence_kernel": st.text(max_size=10).filter(lambda s: s not in ("parallel_stabilized", "chunkwise", "recurrent")),
    "igate_bias_init_range": st.one_of(st.lists(st.floats(allow_nan=False), min_size=3, max_size=4), st.text(max_size=2)),
    "slstm_at": st.one_of(st.lists(st.integers(2, 5), min_size=1, max_size=3), st.just([0, 0]), st.just("most")),
    "context_length": st.one_of(st.integers(max_value=-2), st.just(0)),
    "scan_blocks": st.sampled_from([0, 1, "true", None]),
}


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_invalid_values_raise_value_error(data):
    field = data.draw(st.sampled_from(sorted(INVALID)))
    value = data.draw(INVALID[field])
    with pytest.raises(ValueError):
        XLSTMFlaxConfig(**{**BASE, "num_heads": 2, "qk_dim_factor": 0.5, field: value})
