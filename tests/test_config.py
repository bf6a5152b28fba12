"""Config: validation errors name field/value/allowed values; JSON round trip; upstream translation; presets."""

import json

import pytest

from conftest import FIXTURE_MODELS, FIXTURES, config_fields
from modeling_xlstm_flax import XLSTMFlaxConfig, load_preset, preset_names
from modeling_xlstm_flax.configuration_xlstm_flax import FIELD_DOCS, from_upstream_config, to_upstream_config


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("layer_type", "slstm", r"layer_type='slstm' is invalid: allowed values are \['mlstm', 'mlstm_v1'\]"),
        ("norm_type", "batchnorm", r"norm_type='batchnorm'.*\['layernorm', 'rmsnorm'\]"),
        ("cell_norm_type_v1", "groupnorm", "cell_norm_type_v1"),
        ("num_heads", 3, r"qk_dim_factor=0.5 is invalid: gives qk_dim=32, which must be a positive multiple of num_heads=3"),
        ("embedding_dim", -64, "embedding_dim=-64 is invalid: must be a positive integer"),
        ("vocab_size", 0, "vocab_size=0"),
        ("num_blocks", 1.5, "num_blocks=1.5"),
        ("dropout", 1.0, r"dropout=1.0 is invalid: must be a number in \[0, 1\)"),
        ("norm_eps", 0.0, "norm_eps=0.0 is invalid: must be a positive finite number"),
        ("gate_soft_cap", -1.0, "gate_soft_cap=-1.0"),
        ("compute_dtype", "float8", r"compute_dtype='float8'.*\['float32', 'bfloat16', 'float16'\]"),
        ("sequence_kernel", "triton", "sequence_kernel='triton'"),
        ("chunk_size", 0, "chunk_size=0"),
        ("gate_input", "z", "gate_input='z'"),
        ("ff_act_fn", "tanh", "ff_act_fn='tanh'"),
        ("ff_type", "moe", "ff_type='moe'"),
        ("igate_bias_init_range", [1.0], r"igate_bias_init_range=\[1.0\].*\[low, high\]"),
        ("slstm_at", [99], r"slstm_at=\[99\] is invalid: block indices must be ints in \[0, num_blocks="),
        ("context_length", 0, "context_length=0"),
        ("scan_blocks", "yes", "scan_blocks='yes' is invalid: must be true or false"),
        ("gate_linear_headwise", True, "gate_linear_headwise=True is invalid: only layer_type='mlstm' supports it"),
        ("init_distribution", "xavier", "init_distribution='xavier'"),
        ("output_init_fn", "zeros", "output_init_fn='zeros'"),
    ],
)
def test_invalid_values_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        load_preset("tiny-mlstm-v1", **{field: value})


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(qkv_proj_blocksize=5), "qkv_proj_blocksize=5 is invalid: must divide the mlstm inner width 128"),
        (dict(num_heads=3), "must be a positive multiple of num_heads=3"),
        (dict(proj_factor=0.1, round_proj_up_dim_up=False), "proj_factor=0.1 is invalid: gives an inner width of 0"),
    ],
)
def test_invalid_mlstm_dims_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_preset("tiny-mlstm", **overrides)


def test_every_documented_field_is_a_config_attribute():
    config = XLSTMFlaxConfig()
    for field in FIELD_DOCS:
        assert hasattr(config, field), field
    assert config.hidden_size == config.embedding_dim and config.num_hidden_layers == config.num_blocks
    assert config.tie_weights is config.tie_word_embeddings and config.block_map == [0] * 32


def test_json_round_trip_exact(tmp_path):
    for name in preset_names():
        config = load_preset(name)
        path = tmp_path / f"{name}.json"
        config.to_json_file(path)
        again = XLSTMFlaxConfig.from_json_file(path)
        assert config_fields(again) == config_fields(config)
        assert again.to_json_string() == config.to_json_string()


def test_presets():
    assert {"xlstm-7b", "xlstm-160m", "tiny-mlstm-v1", "tiny-mlstm"} <= set(preset_names())
    seven_b = load_preset("xlstm-7b")
    assert (seven_b.vocab_size, seven_b.embedding_dim, seven_b.num_blocks, seven_b.num_heads) == (50304, 4096, 32, 8)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_preset("nope")


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_upstream_translation_round_trip(name):
    upstream = json.loads((FIXTURES / name / "config.json").read_text())
    config = from_upstream_config(upstream)
    again = from_upstream_config(to_upstream_config(config), sequence_kernel=config.sequence_kernel)
    assert config_fields(again) == config_fields(config)
    written = to_upstream_config(config)
    layer = written["mlstm_block"]["mlstm"]
    for key in ("num_heads", "qk_dim_factor", "v_dim_factor", "layer_type", "norm_type", "proj_factor"):
        assert layer[key] == upstream["mlstm_block"]["mlstm"][key], key
    for key in ("gate_soft_cap", "norm_type_v1", "igate_bias_init_range", "fgate_bias_init_range", "norm_eps"):
        assert layer["mlstm_cell"][key] == upstream["mlstm_block"]["mlstm"]["mlstm_cell"][key], key


def test_upstream_translation_records_what_upstream_computed(caplog):
    upstream = json.loads((FIXTURES / "v1" / "config.json").read_text())
    upstream.update(tie_weights=True, add_post_blocks_norm=False)
    with caplog.at_level("INFO"):
        config = from_upstream_config(upstream)
    assert config.tie_word_embeddings is False and config.add_post_blocks_norm is True
    assert "never ties" in caplog.text and "always applies the LM head out-norm" in caplog.text


def test_upstream_translation_errors():
    upstream = json.loads((FIXTURES / "v1" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"cannot express: \['fancy_new_field'\]"):
        from_upstream_config(dict(upstream, fancy_new_field=1))
    with pytest.raises(ValueError, match="sLSTM"):
        from_upstream_config(dict(upstream, slstm_at=[0]))
    bad_backend = json.loads(json.dumps(upstream))
    bad_backend["mlstm_block"]["mlstm"]["mlstm_cell"]["backend"]["name"] = "attention"
    with pytest.raises(ValueError, match="backend 'attention' has no counterpart"):
        from_upstream_config(bad_backend)
    for field, value in (("tie_word_embeddings", True), ("add_post_blocks_norm", False), ("cell_eps", 1e-5)):
        with pytest.raises(ValueError, match=field):
            to_upstream_config(load_preset("tiny-mlstm-v1", **{field: value}))
