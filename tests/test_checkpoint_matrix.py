"""Every way in x every way out of a checkpoint, and back in (the one load sequence, `loading`): params
bit-identical and logits equal; the checks at load; upstream backend configs in every stored form.

Ways in: random init; transformers' PyTorch safetensors single and sharded (written by transformers' own
`xLSTMForCausalLM.save_pretrained`, loaded with `from_pt=True`); upstream params (the golden fixture mapped in
memory); upstream's orbax run (the fixture, converted by `xlstm-flax convert from-orbax`); Flax msgpack; Flax sharded
safetensors. Ways out: `save_pretrained` single and sharded; the Hub export; conversion to PyTorch
(`xlstm-flax convert to-pytorch`) and from there back to Flax (`xlstm-flax convert from-pytorch`). Every result is loaded back
with `FlaxXLSTMForCausalLM.from_pretrained`. The upstream fixture's config (rmsnorm multi-head norm) is not
expressible by transformers' xLSTMConfig, so the two PyTorch ways out are skipped for the upstream ways in.
"""

import json
import logging

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import FIXTURES, assert_params_identical, load_fixture

PT_KW = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_heads=2, qk_dim_factor=0.5, chunk_size=128)
IDS = np.random.RandomState(5).randint(0, 97, (2, 11)).astype(np.int32)
WAYS_IN = ["random", "pt_single", "pt_sharded", "upstream", "orbax", "msgpack", "flax_sharded"]
WAYS_OUT = ["save_single", "save_sharded", "hub_export", "to_pytorch", "to_flax"]


def _flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}


_LOGITS = {}


def _logits(config, params) -> np.ndarray:
    """float32 logits for IDS, one compiled program per config layout."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    key = (config.vocab_size, config.cell_norm_type_v1)
    if key not in _LOGITS:
        model = FlaxXLSTMForCausalLM(config, dtype=jax.numpy.float32, _do_init=False)
        _LOGITS[key] = jax.jit(lambda p, ids: model.module.apply({"params": p}, ids)[0].logits)
    return np.asarray(_LOGITS[key](params, IDS % config.vocab_size))


def _load(directory):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    model, params = FlaxXLSTMForCausalLM.from_pretrained(directory, dtype=jax.numpy.float32, _do_init=False)
    return model.config, params


def _convert(conversion: str, *argv) -> None:
    from modeling_xlstm_flax.convert_common import main

    status = main(conversion, [str(a) for a in argv] + ["-q"])
    assert status == 0, f"{conversion} {argv} exited {status}"


def _pt_config():
    from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config
    from transformers import xLSTMConfig

    return from_transformers_config(xLSTMConfig(**PT_KW, dtype="float32"))


def _torch_model(seed: int):
    """transformers' PyTorch xLSTM with perturbed weights (the ways in from PyTorch; skipped without torch)."""
    torch = pytest.importorskip("torch", reason="the PyTorch ways in are written by transformers' xLSTMForCausalLM")
    from transformers import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(seed)
    model = xLSTMForCausalLM(xLSTMConfig(**PT_KW, autocast_kernel_dtype="float32", dtype="float32")).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def _way_in(name: str, tmp):
    """(config, params) arriving by way `name`."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    if name == "random":
        config = _pt_config()
        return config, FlaxXLSTMForCausalLM(config, seed=3).params
    if name in ("pt_single", "pt_sharded"):
        torch_model = _torch_model(1)
        torch_model.save_pretrained(tmp / name, **({"max_shard_size": "40KB"} if name == "pt_sharded" else {}))
        assert (tmp / name / ("model.safetensors.index.json" if name == "pt_sharded" else "model.safetensors")).is_file()
        config, params = _load(tmp / name)
        state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
        flat = _flat(params)  # independent check of the reader: transformers' own tensors, transposed by hand
        np.testing.assert_array_equal(flat["backbone/blocks/1/mlstm_layer/q/kernel"],
                                      state["backbone.blocks.1.mlstm_layer.q.weight"].T)
        np.testing.assert_array_equal(flat["lm_head/kernel"], state["lm_head.weight"].T)
        return config, params
    if name == "upstream":
        config, params, _, _ = load_fixture("v1", compute_dtype="float32")
        return config, jax.tree_util.tree_map(np.asarray, params)
    if name == "orbax":
        _convert("from-orbax", FIXTURES / "v1_orbax", tmp / name)
        return _load(tmp / name)
    source_config = _pt_config()
    model = FlaxXLSTMForCausalLM(source_config, seed=4)
    if name == "msgpack":
        model.save_pretrained(tmp / name, safe_serialization=False)
        assert (tmp / name / "flax_model.msgpack").is_file()
    else:
        model.save_pretrained(tmp / name, max_shard_size="40KB")
        assert (tmp / name / "model.safetensors.index.json").is_file()
    config, params = _load(tmp / name)
    assert_params_identical(params, model.params, name)
    return config, params


def _way_out(name: str, config, params, tmp):
    """Write (config, params) by way `name` and load the result back: (config, params)."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM
    from modeling_xlstm_flax.hub import export_hub_folder

    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    if name in ("save_single", "save_sharded"):
        model.save_pretrained(tmp / name, params=params,
                              **({"max_shard_size": "40KB"} if name == "save_sharded" else {}))
        return _load(tmp / name)
    if name == "hub_export":
        model._is_initialized = True
        model.params = params
        export_hub_folder(model, tmp / name)
        return _load(tmp / name)
    model.save_pretrained(tmp / "flax", params=params)
    _convert("to-pytorch", tmp / "flax", tmp / "pytorch")
    if name == "to_pytorch":
        return _load(tmp / "pytorch")
    _convert("from-pytorch", tmp / "pytorch", tmp / "flax_again")
    return _load(tmp / "flax_again")


@pytest.fixture(scope="module", params=WAYS_IN)
def arrived(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"in_{request.param}")
    config, params = _way_in(request.param, tmp)
    return request.param, config, params, _logits(config, params)


@pytest.mark.parametrize("way_out", WAYS_OUT)
def test_every_way_in_and_out(arrived, way_out, tmp_path):
    way_in, config, params, logits = arrived
    if way_in in ("upstream", "orbax") and way_out in ("to_pytorch", "to_flax"):
        pytest.skip("the upstream fixture's config (rmsnorm multi-head norm) has no transformers xLSTMConfig")
    back_config, back = _way_out(way_out, config, params, tmp_path)
    assert_params_identical(back, params, f"{way_in} -> {way_out}")
    np.testing.assert_array_equal(_logits(back_config, back), logits)


def test_non_contiguous_params_are_saved_as_their_values(tmp_path):
    """safetensors writes raw memory: a transposed (Fortran-ordered) view must still be saved as its values."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    config = _pt_config()
    params = jax.tree_util.tree_map(lambda x: np.asfortranarray(np.asarray(x)),
                                    FlaxXLSTMForCausalLM(config, seed=2).params)
    assert not params["lm_head"]["kernel"].flags.c_contiguous
    FlaxXLSTMForCausalLM(config, _do_init=False).save_pretrained(tmp_path, params=params)
    assert_params_identical(_load(tmp_path)[1], params)


def test_param_dtype_bfloat16_and_no_warning_list(tmp_path, caplog):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    config = _pt_config()
    model = FlaxXLSTMForCausalLM(config, seed=2)
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = FlaxXLSTMForCausalLM.from_pretrained(tmp_path, param_dtype=jax.numpy.bfloat16)
    assert {np.asarray(x).dtype for x in jax.tree_util.tree_leaves(loaded.params)} == {np.dtype("bfloat16")}
    assert not [r for r in caplog.records if "precision" in r.getMessage() or "newly initialized" in r.getMessage()]
    np.testing.assert_array_equal(np.asarray(loaded.params["lm_head"]["kernel"]),
                                  np.asarray(model.params["lm_head"]["kernel"]).astype("bfloat16"))


def test_backbone_checkpoint_into_lm_initialises_the_head(tmp_path, caplog):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, FlaxXLSTMModel

    config = _pt_config()
    base = FlaxXLSTMModel(config, seed=2)
    base.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        lm = FlaxXLSTMForCausalLM.from_pretrained(tmp_path)
    assert any("lm_head/kernel" in r.getMessage() and "newly initialized" in r.getMessage() for r in caplog.records)
    assert_params_identical(lm.params["backbone"], base.params)
    assert lm.params["lm_head"]["kernel"].shape == (config.embedding_dim, config.vocab_size)

    model, params = FlaxXLSTMForCausalLM.from_pretrained(tmp_path, _do_init=False)
    assert "lm_head" not in params and model._missing_keys == {("lm_head", "kernel")}
    full = model.init_weights(jax.random.PRNGKey(0), (1, 1), params)
    assert_params_identical(full["backbone"], base.params)
    assert "lm_head" in full


def _save_tensors(directory, tensors: dict, metadata=None):
    from safetensors.numpy import save_file

    save_file(tensors, str(directory / "model.safetensors"), metadata=metadata or {"format": "flax"})


@pytest.fixture
def saved(tmp_path):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    FlaxXLSTMForCausalLM(_pt_config(), seed=0).save_pretrained(tmp_path)
    from safetensors.numpy import load_file

    return tmp_path, load_file(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("case, message", [
    ("integer", r"model\.safetensors:backbone\.out_norm\.scale \(int32\)"),
    ("shape", r"backbone/out_norm/scale: has \(3,\), the config needs \(64,\)"),
    ("missing", r"1 missing tensors:\n    backbone/out_norm/scale"),
    ("unexpected", r"1 unexpected tensors .*\n    backbone/extra/scale"),
    ("nan", r"model\.safetensors:backbone\.out_norm\.scale: 1 of 64 values are not finite"),
    ("truncated", r"model\.safetensors: not a valid safetensors file"),
    ("index_outside", r"mapped to '\.\./evil\.safetensors', a path outside the model folder"),
    ("index_missing_shard", r"names shard 'model-00002-of-00002\.safetensors' .*does not exist"),
])
def test_checks_at_load_name_file_and_tensor(saved, case, message):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    directory, tensors = saved
    key = "backbone.out_norm.scale"
    if case == "integer":
        _save_tensors(directory, {**tensors, key: tensors[key].astype(np.int32)})
    elif case == "shape":
        _save_tensors(directory, {**tensors, key: tensors[key][:3]})
    elif case == "missing":
        _save_tensors(directory, {k: v for k, v in tensors.items() if k != key})
    elif case == "unexpected":
        _save_tensors(directory, {**tensors, "backbone.extra.scale": tensors[key]})
    elif case == "nan":
        bad = tensors[key].copy()
        bad[5] = np.nan
        _save_tensors(directory, {**tensors, key: bad})
    elif case == "truncated":
        data = (directory / "model.safetensors").read_bytes()
        (directory / "model.safetensors").write_bytes(data[: len(data) - 100])
    else:
        (directory / "model.safetensors").rename(directory / "model-00001-of-00002.safetensors")
        other = "../evil.safetensors" if case == "index_outside" else "model-00002-of-00002.safetensors"
        weight_map = {k: "model-00001-of-00002.safetensors" for k in tensors}
        weight_map[key] = other
        if case == "index_outside":
            _save_tensors(directory.parent, {key: tensors[key]})
            (directory.parent / "model.safetensors").rename(directory.parent / "evil.safetensors")
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ValueError, match=message):
        FlaxXLSTMForCausalLM.from_pretrained(directory)
    if case == "nan":  # the check can be skipped, and then the values load as they are
        loaded = FlaxXLSTMForCausalLM.from_pretrained(directory, check_finite=False)
        assert np.isnan(np.asarray(loaded.params["backbone"]["out_norm"]["scale"])[5])


def test_other_missing_params_stay_an_error_unless_allowed(saved):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    directory, tensors = saved
    key = "backbone.blocks.0.ffn.proj_down.kernel"
    _save_tensors(directory, {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ValueError, match="backbone/blocks/0/ffn/proj_down/kernel"):
        FlaxXLSTMForCausalLM.from_pretrained(directory)
    model = FlaxXLSTMForCausalLM.from_pretrained(directory, allow_missing_keys=True)
    assert model.params["backbone"]["blocks"]["0"]["ffn"]["proj_down"]["kernel"].shape == tensors[key].shape


@pytest.mark.parametrize("backend, expect", [
    ({"name": "parallel_stabilized", "kwargs": {}}, ("parallel_stabilized", 64)),
    ({"name": "parallel_stabilized", "kwargs": "mLSTMBackendParallelConfig(context_length=64)"},
     ("parallel_stabilized", 64)),
    ({"name": "fwbw_stabilized", "kwargs": "mLSTMBackendFwbwConfig(chunk_size=32, context_length=64)"},
     ("chunkwise", 32)),
    ({"name": "triton_kernels", "kwargs": "None"}, ("chunkwise", 64)),
    ({"name": "parallel_stabilized", "kwargs": "<unreadable object at 0x7f>"}, ("parallel_stabilized", 64)),
    ("mLSTMBackendNameAndKwargs(name='recurrent', kwargs={})", ("recurrent", 64)),
    (None, ("parallel_stabilized", 64)),
    ("missing", ("parallel_stabilized", 64)),
])
def test_upstream_backend_in_every_stored_form(backend, expect):
    from modeling_xlstm_flax.configuration_xlstm_flax import from_upstream_config

    upstream = json.loads((FIXTURES / "v1" / "config.json").read_text())
    cell = upstream["mlstm_block"]["mlstm"]["mlstm_cell"]
    if backend == "missing":
        cell.pop("backend", None)
    else:
        cell["backend"] = backend
    config = from_upstream_config(upstream)
    assert (config.sequence_kernel, config.chunk_size) == expect
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (None, None, None)


@pytest.mark.parametrize("backend", [{"name": "no_such_backend", "kwargs": {}}, "garbage(", 3])
def test_upstream_backend_errors_are_value_errors(backend):
    from modeling_xlstm_flax.configuration_xlstm_flax import from_upstream_config

    upstream = json.loads((FIXTURES / "v1" / "config.json").read_text())
    upstream["mlstm_block"]["mlstm"]["mlstm_cell"]["backend"] = backend
    with pytest.raises(ValueError, match="backend"):
        from_upstream_config(upstream)


def test_orbax_run_with_repr_backend_converts_and_generates_without_eos(tmp_path):
    """An orbax run whose metadata stores the backend kwargs as a dataclass repr (xlstm-jax's trainer for the 7B
    recipe) converts; the result has no invented special-token ids, and greedy generation runs to the length."""
    import shutil

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "v1_orbax", run)
    checkpoint = next(p for p in run.rglob("metadata") if p.is_file())
    metadata = json.loads(checkpoint.read_text())
    cell = metadata["model"]["model_config"]["mlstm_block"]["mlstm"]["mlstm_cell"]
    if isinstance(cell, str):
        pytest.skip("fixture metadata stores the cell as a string")
    cell["backend"] = {"name": "parallel_stabilized", "kwargs": "mLSTMBackendParallelConfig(context_length=64)"}
    checkpoint.write_text(json.dumps(metadata))
    _convert("from-orbax", run, tmp_path / "out")
    model = FlaxXLSTMForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.eos_token_id is None and model.config.pad_token_id is None
    out = model.generate(IDS[:1, :4], max_new_tokens=5)
    assert out.sequences.shape == (1, 9)


def test_conversion_commands_turn_unexpected_errors_into_one_line(tmp_path, capsys, monkeypatch):
    from modeling_xlstm_flax import convert_common as common

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    def main(argv):
        return common.main("from-pytorch", argv)

    monkeypatch.setattr(common, "convert_pytorch_to_flax", boom)
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == common.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["xlstm-flax convert from-pytorch: error: disk on fire"]

    def surprise(*args, **kwargs):
        raise KeyError("weights")

    monkeypatch.setattr(common, "convert_pytorch_to_flax", surprise)
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == common.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        "xlstm-flax convert from-pytorch: error: KeyError: 'weights' (--debug shows the traceback)"]
    monkeypatch.setenv("XLSTM_FLAX_DEBUG", "1")  # what `xlstm-flax --debug` sets: the traceback instead
    with pytest.raises(KeyError):
        main([str(tmp_path / "a"), str(tmp_path / "b")])


def test_conversion_command_options_and_pytorch_limits(tmp_path, capsys):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM
    from modeling_xlstm_flax.convert_common import main

    def flax_to_pytorch_main(argv):
        return main("to-pytorch", argv)

    config = _pt_config()  # hidden 64 x qk_dim_factor 0.5 = 32: transformers' kernels need a multiple of 64
    FlaxXLSTMForCausalLM(config, seed=0).save_pretrained(tmp_path / "flax")
    assert flax_to_pytorch_main([str(tmp_path / "flax"), str(tmp_path / "pt"), "--verify", "-q"]) == 1
    assert "is not a multiple of 64" in capsys.readouterr().err and not (tmp_path / "pt").exists()
    for bad in (["--tolerance", "nan"], ["--tolerance", "-1"], ["--verify-length", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            flax_to_pytorch_main([str(tmp_path / "flax"), str(tmp_path / "pt"), *bad])
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err
    assert flax_to_pytorch_main([str(tmp_path / "missing"), str(tmp_path / "pt"), "-q"]) == 1
    assert "missing" in capsys.readouterr().err
