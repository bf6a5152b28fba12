"""The one plan and the one load sequence (`loading`), and the transformers conventions they carry.

Classes: the plan every user checks against is one computation (from_pretrained's checks, the models' shape trees,
the sharded loader, the converters), equal to an independent trace of `init_weights`, for a mixed mLSTM/sLSTM
config and the 7B preset; a float16 / bfloat16 checkpoint keeps its dtype unless `param_dtype` asks otherwise
(`dtype` is the compute dtype only, as in transformers' Flax models), through `from_pretrained` and the sharded
loader alike; `_do_init=False` with
params missing from the checkpoint (a warning naming them, `model._missing_keys`, `init_weights` completes them)
while `_do_init=True` refuses them; a checkpoint folder of NX-AI's `xlstm` library gives our config through
`XLSTMFlaxConfig.from_pretrained`, and transformers' AutoConfig's reading of a Distil-xLSTM config.json is
translated, not taken at face value.
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import assert_params_identical, tiny_config

IDS = np.array([[1, 5, 9, 3, 7, 2]], dtype=np.int32)


def _flat(tree) -> dict:
    return {"/".join(k): v for k, v in flatten_dict(dict(tree)).items()}


def _mixed_config():
    return tiny_config("mlstm", num_blocks=3, slstm_at=[1], slstm_block={"slstm": {"num_heads": 4}})


# ---------------------------------------------------------------------------------------------- one plan
@pytest.mark.parametrize("which", ["mixed", "xlstm-7b"])
def test_loader_models_sharding_and_converters_share_one_plan(which):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, FlaxXLSTMModel, convert_common, loading, load_preset, \
        param_table

    config = _mixed_config() if which == "mixed" else load_preset("xlstm-7b")
    plan = loading.model_plan(config)
    assert loading.model_plan(config) is plan  # computed once per config
    # independent: a trace of the model's own init_weights (the sLSTM bias init included)
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    traced = jax.eval_shape(lambda rng: model.init_weights(rng, (1, 1)), jax.random.PRNGKey(0))
    assert {k: tuple(v.shape) for k, v in _flat(traced).items()} == dict(plan)
    assert {v.dtype for v in _flat(traced).values()} == {jnp.dtype("float32")}
    # what the models check params against and what the sharded loader and init shard by
    assert dict(loading.param_plan(model)) == dict(plan)
    assert {k: tuple(v.shape) for k, v in _flat(model.params_shape_tree).items()} == dict(plan)
    if which == "mixed":  # the bare backbone: the same plan without the head and the prefix
        backbone = FlaxXLSTMModel(config, _do_init=False)
        assert dict(loading.param_plan(backbone)) == {k[len("backbone/"):]: s for k, s in plan.items()
                                                      if k.startswith("backbone/")}
    # what the converters and the loader compare a checkpoint with: the unrolled causal-LM names
    assert convert_common.model_plan is loading.model_plan
    unrolled = loading.model_plan(config, scanned=False)
    assert param_table.unrolled_plan(plan) == dict(unrolled)
    if which == "mixed":
        assert any("slstm_layer" in k for k in plan) and any("mlstm_layer" in k for k in plan)


def test_sharded_loader_reads_exactly_the_plan(tmp_path):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, loading, sharding

    model = FlaxXLSTMForCausalLM(_mixed_config(), seed=2)
    model.save_pretrained(tmp_path)
    names = set()
    params = sharding.load_sharded_params(tmp_path, model, sharding.make_mesh(),
                                          on_read=lambda name, index, nbytes: names.add(name))
    assert names == set(loading.model_plan(model.config))
    assert_params_identical(params, model.params)


# ---------------------------------------------------------------------------------------------- stored dtype
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_checkpoint_keeps_its_dtype_unless_asked(tmp_path, half):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, sharding

    model = FlaxXLSTMForCausalLM(tiny_config(), seed=1)
    stored = jax.tree_util.tree_map(lambda p: p.astype(half), model.params)
    model.save_pretrained(tmp_path, params=stored)

    def dtypes(params):
        return {np.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(params)}

    loaded = FlaxXLSTMForCausalLM.from_pretrained(tmp_path)
    assert dtypes(loaded.params) == {np.dtype(half)}
    assert_params_identical(loaded.params, stored)
    assert loaded.dtype == jnp.float32  # the compute dtype stays the config's
    _, params = FlaxXLSTMForCausalLM.from_pretrained(tmp_path, _do_init=False)
    assert dtypes(params) == {np.dtype(half)}
    assert dtypes(sharding.load_sharded_params(tmp_path, loaded, sharding.make_mesh())) == {np.dtype(half)}
    widened = jax.tree_util.tree_map(lambda p: np.asarray(p).astype(np.float32), stored)
    for kwargs in ({"param_dtype": jnp.float32}, {"param_dtype": "float32", "dtype": half}):
        again = FlaxXLSTMForCausalLM.from_pretrained(tmp_path, **kwargs)
        assert dtypes(again.params) == {np.dtype("float32")}, kwargs
        assert_params_identical(again.params, widened)
    # `dtype` is the compute dtype only (transformers' Flax models): the params keep the stored dtype
    computed = FlaxXLSTMForCausalLM.from_pretrained(tmp_path, dtype=jnp.float32)
    assert computed.dtype == jnp.float32 and dtypes(computed.params) == {np.dtype(half)}
    model.save_pretrained(tmp_path / "f32")  # and a float32 checkpoint with half compute stays float32
    mixed = FlaxXLSTMForCausalLM.from_pretrained(tmp_path / "f32", dtype=half)
    assert mixed.dtype == jnp.dtype(half) and dtypes(mixed.params) == {np.dtype("float32")}
    other = "bfloat16" if half == "float16" else "float16"
    assert dtypes(FlaxXLSTMForCausalLM.from_pretrained(tmp_path, param_dtype=other).params) == {np.dtype(other)}


# ---------------------------------------------------------------------------------------------- missing params
def test_do_init_false_tolerates_missing_params_and_init_weights_completes_them(tmp_path, caplog):
    from safetensors.numpy import load_file, save_file

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM
    from modeling_xlstm_flax.checkpoint_io import CheckpointFileError

    config = tiny_config()
    whole = FlaxXLSTMForCausalLM(config, seed=1)
    whole.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    gone = ["backbone.out_norm.scale", next(k for k in tensors if k.startswith("backbone.blocks.1."))]
    save_file({k: v for k, v in tensors.items() if k not in gone}, str(tmp_path / "model.safetensors"),
              metadata={"format": "flax"})
    missing = {tuple(k.split(".")) for k in gone}

    with caplog.at_level(logging.WARNING):
        model, params = FlaxXLSTMForCausalLM.from_pretrained(tmp_path, _do_init=False)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all("/".join(k) in warned for k in missing) and "init_weights" in warned
    assert model._missing_keys == missing
    assert not set(_flat(params)) & {"/".join(k) for k in missing}
    with pytest.raises(ValueError, match="out_norm"):  # incomplete params are named, never run
        model(IDS, params=params)

    rng = jax.random.PRNGKey(7)
    completed = model.init_weights(rng, (1, 1), params)
    assert model._missing_keys == set()
    fresh = FlaxXLSTMForCausalLM(config, seed=7)  # built whole with the same rng: its values for the missing ones
    expected = {k: (fresh.params if tuple(k.split("/")) in missing else whole.params) for k in _flat(whole.params)}
    expected = {k: _flat(tree)[k] for k, tree in expected.items()}
    assert_params_identical(_flat(completed), expected)
    np.testing.assert_array_equal(np.asarray(model(IDS, params=completed).logits),
                                  np.asarray(whole(IDS, params=_unflat(expected)).logits))

    with pytest.raises(CheckpointFileError, match=r"2 missing tensors[\s\S]*out_norm"):
        FlaxXLSTMForCausalLM.from_pretrained(tmp_path)  # _do_init=True: a model on random weights is refused
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        allowed = FlaxXLSTMForCausalLM.from_pretrained(tmp_path, allow_missing_keys=True)
    assert "newly initialized" in " ".join(r.getMessage() for r in caplog.records)
    assert set(_flat(allowed.params)) == set(_flat(whole.params))


def _unflat(flat: dict) -> dict:
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


# ---------------------------------------------------------------------------------------------- library configs
def test_config_loader_reads_library_folders_and_autoconfigs_distil_reading(tmp_path):
    yaml = pytest.importorskip("yaml")  # transformers requires PyYAML: always there
    from safetensors.numpy import save_file
    from transformers import AutoConfig

    from conftest import load_slstm_fixture
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, XLSTMFlaxConfig
    from modeling_xlstm_flax.library_checkpoint import config_from_library

    lm, sd, _ = load_slstm_fixture("lm_mixed")
    expected = config_from_library(lm)[0].to_dict()
    files = {"distil": {"config.json": json.dumps({"model_type": "xlstm", "xlstm_cfg": lm})},
             "bare": {"config.json": json.dumps(lm)},
             "helibrunna": {"config.yaml": yaml.safe_dump({"training": {"lr": 1e-3}, "model": lm})}}
    for name, config_files in files.items():
        (tmp_path / name).mkdir()
        for file, text in config_files.items():
            (tmp_path / name / file).write_text(text)
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / name / "model.safetensors"))
        assert XLSTMFlaxConfig.from_pretrained(tmp_path / name).to_dict() == expected, name
    # transformers' AutoConfig reads the Distil-xLSTM config.json (model_type "xlstm", the library's config under
    # xlstm_cfg) as its own xLSTMConfig with default sizes; our model built from it takes the library's config
    auto = AutoConfig.from_pretrained(tmp_path / "distil")
    assert type(auto).__name__ == "xLSTMConfig" and auto.hidden_size != lm["embedding_dim"]
    assert FlaxXLSTMForCausalLM(auto, _do_init=False).config.to_dict() == expected
    for name in ("bare", "helibrunna"):  # no model_type / no config.json: transformers cannot read them
        with pytest.raises((OSError, ValueError)):
            AutoConfig.from_pretrained(tmp_path / name)
