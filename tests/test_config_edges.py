"""Config edges: every invalid value refused naming its field (NaN/inf, token ids, booleans, alias conflicts,
duplicate JSON keys, preset names that are paths, slstm_at forms, deleted fields), and a built model's config
keeps its shape-defining fields."""

import copy
import inspect
import json
import math

import jax
import pytest
from transformers import xLSTMConfig

from modeling_xlstm_flax import FlaxXLSTMForCausalLM, XLSTMFlaxConfig, load_preset
from modeling_xlstm_flax.checks import ALIASES, TOKEN_ID_FIELDS, TRANSFORMERS_BOOL_FIELDS
from modeling_xlstm_flax.configuration_xlstm_flax import (
    RUNTIME_FIELDS, _own_fields, from_transformers_config, known_field_names,
)

TINY = "tiny-mlstm-v1"  # vocab_size 97, bos 0, pad 1, eos 2
DEFAULTS = {name: p.default for name, p in inspect.signature(XLSTMFlaxConfig.__init__).parameters.items()
            if name not in ("self", "kwargs")}
FLOAT_FIELDS = sorted(name for name, default in DEFAULTS.items() if isinstance(default, float))
BOOL_FIELDS = sorted(name for name, default in DEFAULTS.items() if isinstance(default, bool))
# transformers' attributes this transformers major still knows (5.x dropped some; unknown names are refused anyway)
KNOWN_TRANSFORMERS_BOOLS = [name for name in TRANSFORMERS_BOOL_FIELDS if name in known_field_names()]
KNOWN_TOKEN_FIELDS = [name for name in TOKEN_ID_FIELDS if name in known_field_names()]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_refused_in_every_float_field(field, value):
    with pytest.raises(ValueError, match=rf"XLSTMFlaxConfig\.{field}={value!r} is invalid"):
        load_preset(TINY, **{field: value})


def test_nan_refused_inside_lists_and_in_config_files(tmp_path):
    with pytest.raises(ValueError, match=r"fgate_bias_init_range=\[nan, 6.0\] is invalid"):
        load_preset(TINY, fgate_bias_init_range=[math.nan, 6.0])
    fields = load_preset(TINY).to_dict()
    text = json.dumps(fields).replace('"reset_fgate_value": -25.0', '"reset_fgate_value": NaN')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"reset_fgate_value=nan is invalid: must be a finite number"):
        XLSTMFlaxConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("field", ["bos_token_id", "eos_token_id", "pad_token_id"])
@pytest.mark.parametrize("value", [97, 1000, -1, 1.0, 1.5, True, "3", [0, 97]])
def test_token_ids_outside_the_vocabulary_or_not_ints_refused(field, value):
    with pytest.raises(ValueError, match=rf"XLSTMFlaxConfig\.{field}=.* is invalid: must be None or a token id"):
        load_preset(TINY, **{field: value})


def test_valid_token_ids_accepted_and_every_token_field_checked():
    assert load_preset(TINY, eos_token_id=[2, 96], pad_token_id=None).eos_token_id == [2, 96]
    assert {"bos_token_id", "eos_token_id", "pad_token_id"} <= set(TOKEN_ID_FIELDS)
    config = load_preset(TINY)
    with pytest.raises(ValueError, match="eos_token_id=2 is invalid"):  # vocab shrinks below an id: refused
        config.update({"vocab_size": 2})
    assert config.vocab_size == 97
    for field in KNOWN_TOKEN_FIELDS:  # transformers' other token ids (forced eos, decoder start, ...) too
        with pytest.raises(ValueError, match=rf"{field}=-5 is invalid"):
            load_preset(TINY, **{field: -5})


@pytest.mark.parametrize("field", BOOL_FIELDS + KNOWN_TRANSFORMERS_BOOLS)
@pytest.mark.parametrize("value", ["false", "yes", 1, 0])
def test_truthy_values_refused_for_booleans(field, value):
    with pytest.raises(ValueError, match=rf"XLSTMFlaxConfig\.{field}={value!r} is invalid: must be true or false"):
        load_preset(TINY, **{field: value})
    config = load_preset(TINY)
    with pytest.raises(ValueError, match=rf"{field}={value!r} is invalid: must be true or false"):
        setattr(config, field, value)


ALIAS_CASES = [(alias, field, a, b) for alias, field, a, b in (
    ("hidden_size", "embedding_dim", 32, 64), ("num_hidden_layers", "num_blocks", 3, 2),
    ("tie_weights", "tie_word_embeddings", True, False), ("torch_dtype", "dtype", "float32", "bfloat16"))]


def test_alias_table_is_complete():
    assert set(XLSTMFlaxConfig.attribute_map.items()) <= set(ALIASES.items())
    assert {alias for alias, *_ in ALIAS_CASES} == set(ALIASES)


@pytest.mark.parametrize("alias,field,a,b", ALIAS_CASES)
def test_alias_conflicts_in_one_call_refused(tmp_path, alias, field, a, b):
    message = rf"{alias}={a!r} and {field}={b!r} name the same field"
    fields = {k: v for k, v in load_preset(TINY).to_dict().items() if k != "dtype"}
    with pytest.raises(ValueError, match=message):
        XLSTMFlaxConfig(**{**fields, alias: a, field: b})
    with pytest.raises(ValueError, match=message):
        load_preset(TINY, **{alias: a, field: b})
    config = load_preset(TINY)
    with pytest.raises(ValueError, match=message):
        config.update({alias: a, field: b})
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):  # keyword arguments of from_pretrained / from_dict
        XLSTMFlaxConfig.from_pretrained(tmp_path, **{alias: a, field: b})
    if field != "dtype":
        same = load_preset(TINY, **{alias: a, field: a})  # one value under two names: fine
        alone = load_preset(TINY, **{alias: a})  # the alias alone sets the field (also over the preset's value)
        assert getattr(same, field) == getattr(alone, field) == a


def test_duplicate_keys_in_config_json_refused(tmp_path):
    fields = load_preset(TINY).to_dict()
    text = json.dumps(fields)[:-1] + ', "vocab_size": 50}'
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config.json: duplicate key 'vocab_size' in the JSON \(values 97 and 50\)"):
        XLSTMFlaxConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(fields)[:-1] + ', "task_specific_params": {"a": 1, "a": 2}}')
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        XLSTMFlaxConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["../presets/tiny-mlstm-v1", "tiny-mlstm-v1.json", "./tiny-mlstm-v1",
                                  "/etc/passwd", "presets/../tiny-mlstm-v1", "", None, 3])
def test_load_preset_takes_a_name_not_a_path(name):
    with pytest.raises(ValueError, match=r"unknown preset .*\(a name, not a path\)"):
        load_preset(name)


def test_load_preset_absolute_path_of_a_real_preset_refused():
    from modeling_xlstm_flax.configuration_xlstm_flax import PRESETS_DIR

    with pytest.raises(ValueError, match="unknown preset"):
        load_preset(str(PRESETS_DIR / TINY))


@pytest.mark.parametrize("value", [None, 1, "0", [0.5], [True]])
def test_slstm_at_forms_refused_by_name(value):
    with pytest.raises(ValueError, match=r"slstm_at=.* is invalid: must be a list of block indices"):
        load_preset(TINY, slstm_at=value)
    with pytest.raises(ValueError, match=r"slstm_at=\[99\] is invalid: block indices must be ints in \[0, num_blocks"):
        load_preset(TINY, slstm_at=[99])
    assert load_preset(TINY, slstm_at=()).slstm_at == []
    assert load_preset(TINY, slstm_at="all").slstm_at == "all" and load_preset(TINY, slstm_at=[0]).slstm_at == [0]


def test_deleting_a_field_refused():
    config = load_preset(TINY)
    for field in ("vocab_size", "embedding_dim", "pad_token_id", "slstm_at"):
        with pytest.raises(AttributeError, match=rf"cannot delete XLSTMFlaxConfig\.{field}"):
            delattr(config, field)
    assert config.vocab_size == 97
    config.validate()


def test_from_dict_of_transformers_model_type_reads_transformers_defaults():
    """`{"model_type": "xlstm"}` is transformers' xLSTM config with its defaults (as `xLSTMConfig.from_dict` reads
    it), translated; transformers' own class gives the reference."""
    ours = XLSTMFlaxConfig.from_dict({"model_type": "xlstm"})
    reference = from_transformers_config(xLSTMConfig())
    assert ours.to_dict() == reference.to_dict()
    assert (ours.vocab_size, ours.embedding_dim, ours.num_blocks) == (xLSTMConfig().vocab_size,
                                                                     xLSTMConfig().hidden_size,
                                                                     xLSTMConfig().num_hidden_layers)


# a valid value different from the tiny preset's, for each field a built model lets change
RUNTIME_CHANGES = {
    "sequence_kernel": "recurrent", "step_kernel": "recurrent", "chunk_size": 4, "prefill_segment_size": None,
    "gradient_checkpointing": True, "dropout": 0.1, "context_length": 64, "weight_decay_on_embedding": True,
    "init_distribution_embed": "uniform", "init_distribution_out": "uniform", "init_distribution": "uniform",
    "ff_init_distribution": "uniform", "output_init_fn": "small", "ff_output_init_fn": "small",
    "reset_at_document_boundaries": True, "reset_fgate_value": -10.0, "igate_bias_init_range": -5.0,
    "fgate_bias_init_range": 4.0, "bos_token_id": 3, "eos_token_id": 4, "pad_token_id": 5,
}


def test_runtime_fields_do_not_change_param_shapes():
    """The fields a built model lets change are exactly those that leave its param shapes alone."""
    assert set(RUNTIME_CHANGES) == set(RUNTIME_FIELDS)
    shapes = lambda config: jax.tree_util.tree_map(  # noqa: E731
        lambda x: (x.shape, x.dtype), FlaxXLSTMForCausalLM(config, _do_init=False).params_shape_tree)
    reference = shapes(load_preset(TINY))
    for field, value in RUNTIME_CHANGES.items():
        assert shapes(load_preset(TINY, **{field: value})) == reference, field


def test_built_model_config_keeps_its_shape_defining_fields():
    model = FlaxXLSTMForCausalLM(load_preset(TINY), _do_init=False)
    config = model.config
    frozen = sorted(_own_fields() - RUNTIME_FIELDS)
    assert {"vocab_size", "embedding_dim", "num_blocks", "num_heads", "layer_type", "scan_blocks",
            "tie_word_embeddings", "compute_dtype"} <= set(frozen)
    for field in frozen:
        before = getattr(config, field)
        new = not before if isinstance(before, bool) else 50 if isinstance(before, int) else "other"
        with pytest.raises(ValueError, match=rf"cannot set XLSTMFlaxConfig\.{field}=.*belongs to a built "
                                             "FlaxXLSTMForCausalLM"):
            setattr(config, field, new)
        with pytest.raises(ValueError, match="belongs to a built"):
            config.update({field: new})
        assert getattr(config, field) == before
    with pytest.raises(ValueError, match="belongs to a built"):
        config.hidden_size = 32  # aliases too
    config.embedding_dim = config.embedding_dim  # the same value: fine
    for field, value in RUNTIME_CHANGES.items():  # runtime fields stay settable
        setattr(config, field, value)
        assert getattr(config, field) == value
    # the model's checks still follow its params
    with pytest.raises(ValueError, match=r"outside the vocabulary range \[0, 97\)"):
        model([[97]])


def test_copy_of_a_built_models_config_can_change():
    model = FlaxXLSTMForCausalLM(load_preset(TINY), _do_init=False)
    other = copy.deepcopy(model.config)
    other.vocab_size = 50
    assert other.vocab_size == 50 and model.config.vocab_size == 97
    assert other.to_dict() == XLSTMFlaxConfig.from_dict({**model.config.to_dict(), "vocab_size": 50}).to_dict()


@pytest.mark.parametrize("keyword", ["torch_dtype", "dtype"])
@pytest.mark.parametrize("value", ["bfloat16", "float16", "float32"])
def test_transformers_dtype_keyword_round_trips_as_in_transformers(tmp_path, keyword, value):
    """transformers' common `dtype` / `torch_dtype` keyword is kept and saved exactly as transformers' own configs
    keep it (`PretrainedConfig` is the reference); it records the PyTorch weights' dtype, ours is compute_dtype."""
    from transformers import PretrainedConfig

    config = load_preset(TINY, **{keyword: value})
    assert config.to_dict()["dtype"] == PretrainedConfig(**{keyword: value}).to_dict()["dtype"] == value
    assert config.compute_dtype == "float32"  # unchanged: a different setting
    config.save_pretrained(tmp_path)
    again = XLSTMFlaxConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
    assert str(again.torch_dtype).removeprefix("torch.") == value


def test_dtype_keyword_and_zero_sizes_refused_by_name():
    with pytest.raises(ValueError, match=r"XLSTMFlaxConfig\.dtype='bogus' is invalid"):
        load_preset(TINY, torch_dtype="bogus")
    assert "dtype" not in load_preset(TINY).to_dict()  # unset: not written
    for field in ("hidden_size", "embedding_dim", "num_hidden_layers", "vocab_size"):
        with pytest.raises(ValueError, match=r"XLSTMFlaxConfig\.\w+=0 is invalid: must be a positive integer"):
            load_preset(TINY, **{field: 0})


def test_duplicate_keys_refused_in_a_pytorch_config_to_convert(tmp_path):
    from modeling_xlstm_flax.convert_common import read_json_config

    (tmp_path / "config.json").write_text('{"model_type": "xlstm", "vocab_size": 97, "vocab_size": 50}')
    with pytest.raises(ValueError, match=r"duplicate key 'vocab_size' in the JSON \(values 97 and 50\)"):
        read_json_config(tmp_path)
