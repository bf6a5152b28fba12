"""sLSTM blocks inside the real model (`FlaxXLSTMForCausalLM`): NX-AI `xlstm==2.0.6` checkpoint folders load and
match the library's frozen logits (tests/fixtures/slstm, made by its make_fixtures.py), every config format the
library's users write loads to the same model, save -> load is bit-identical, the per-kind cache decodes, left
padding is exact and unsupported layouts are refused.

Tolerance: 1e-5 max abs on float32 logits of magnitude ~1-3 (measured ~6e-7).
"""

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file

from conftest import assert_left_padded_generation_is_per_prompt, load_slstm_fixture, slstm_cuda_layout

from modeling_xlstm_flax.configuration_xlstm_flax import XLSTMFlaxConfig
from modeling_xlstm_flax.library_checkpoint import config_from_library
from modeling_xlstm_flax.modeling_flax_xlstm import FlaxXLSTMForCausalLM, FlaxXLSTMModel

TOL = 1e-5


load = load_slstm_fixture  # (library config, state dict, arrays) of a frozen fixture


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def write_folder(folder: Path, config_files: dict, sd: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in config_files.items():
        (folder / name).write_text(text)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


def distil_folder(tmp_path: Path, name: str, key: str = "xlstm_cfg") -> Path:
    """The Distil-xLSTM layout: config.json (model_type "xlstm") with the library config under `key`."""
    library_config, sd, _ = load(name)
    config = {"model_type": "xlstm", "architectures": ["DistilxLSTM"], key: library_config}
    return write_folder(tmp_path / f"{name}-{key}", {"config.json": json.dumps(config)}, sd)


def to_cuda_layout(sd: dict, library_config: dict) -> dict:
    """A vanilla-layout state dict rewritten in the cuda layout (the layouts themselves are checked against the
    library in test_slstm.py::test_both_storage_layouts_give_identical_params_and_round_trip)."""
    heads = library_config["slstm_block"]["slstm"]["num_heads"]
    return slstm_cuda_layout(sd, heads)


def stepped_logits(model, idx, prefill: int):
    """Logits of idx (B, S): the first `prefill` tokens in one call from init_cache, then one token per call."""
    cache = model.init_cache(idx.shape[0])
    outs = []
    if prefill:
        out = model(idx[:, :prefill], past_key_values=cache)
        outs.append(out.logits)
        cache = out.past_key_values
    for t in range(prefill, idx.shape[1]):
        out = model(idx[:, t : t + 1], past_key_values=cache)
        outs.append(out.logits)
        cache = out.past_key_values
    return np.concatenate([np.asarray(o) for o in outs], axis=1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return FlaxXLSTMForCausalLM.from_pretrained(distil_folder(tmp_path_factory.mktemp("mixed"), "lm_mixed"))


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", ["lm_mixed", "lm_slstm"])
def test_library_folder_matches_library_logits_sequence_and_cached_steps(tmp_path, name):
    """lm_mixed: [mLSTM, sLSTM], S = context_length; lm_slstm: sLSTM blocks only, tied, S > context_length."""
    library_config, _, arrays = load(name)
    model = FlaxXLSTMForCausalLM.from_pretrained(distil_folder(tmp_path, name))
    expected = [1] if name == "lm_mixed" else list(range(library_config["num_blocks"]))
    assert model.config.slstm_block_indices == expected
    idx = arrays["idx"]
    assert max_diff(model(idx).logits, arrays["logits"]) <= TOL
    for prefill in (0, 5):  # from token 0 as the library's `step`, and prefill + steps
        assert max_diff(stepped_logits(model, idx, prefill), arrays["logits_step"]) <= TOL


def test_cache_has_each_block_kinds_state(mixed):
    cache = mixed.init_cache(3)
    assert set(cache[0]) == {"c", "n", "m", "conv"}  # library mLSTM block on our mlstm layer
    assert set(cache[1]) == {"y", "c", "n", "m", "conv"}
    assert all(cache[1][k].shape == (3, 4, 8) and cache[1][k].dtype == np.float32 for k in "ycnm")
    assert cache[1]["conv"].shape == (3, 3, 32)


def test_backbone_loads_from_a_library_folder(tmp_path):
    _, _, arrays = load("lm_mixed")
    folder = distil_folder(tmp_path, "lm_mixed")
    lm = FlaxXLSTMForCausalLM.from_pretrained(folder)
    backbone = FlaxXLSTMModel.from_pretrained(folder)
    hidden = backbone(arrays["idx"]).last_hidden_state
    assert max_diff(np.asarray(hidden) @ np.asarray(lm.params["lm_head"]["kernel"]), arrays["logits"]) <= TOL


# ---------------------------------------------------------------------------------------------- config formats
def _params(model) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(model.params, sep="/").items()}


def test_every_library_config_format_loads_to_the_same_model(tmp_path):
    library_config, sd, arrays = load("lm_mixed")
    reference = _params(FlaxXLSTMForCausalLM.from_pretrained(distil_folder(tmp_path, "lm_mixed")))
    yaml = pytest.importorskip("yaml")  # transformers requires PyYAML: always there
    helibrunna = dict(library_config)  # Helibrunna: no backend key (the library's "cuda" layout), a compiled model
    helibrunna["slstm_block"] = json.loads(json.dumps(library_config["slstm_block"]))
    del helibrunna["slstm_block"]["slstm"]["backend"]
    cuda_sd = {f"_orig_mod.{k}": v for k, v in to_cuda_layout(sd, library_config).items()}
    training = {"training": {"lr": 1e-3}, "model": helibrunna}
    folders = {
        "xlstm_config": distil_folder(tmp_path, "lm_mixed", key="xlstm_config"),
        "bare": write_folder(tmp_path / "bare", {"config.json": json.dumps(library_config)}, sd),
        "helibrunna": write_folder(tmp_path / "heli", {"config.yaml": yaml.safe_dump(training)}, cuda_sd),
        "yaml_model_only": write_folder(tmp_path / "yaml", {"config.yaml": yaml.safe_dump(helibrunna)}, cuda_sd),
    }
    for what, folder in folders.items():
        params = _params(FlaxXLSTMForCausalLM.from_pretrained(folder))
        assert params.keys() == reference.keys(), what
        for key, value in reference.items():
            np.testing.assert_array_equal(params[key], value, err_msg=f"{what} {key}")
    model = FlaxXLSTMForCausalLM.from_pretrained(folders["helibrunna"])
    assert max_diff(model(arrays["idx"]).logits, arrays["logits"]) <= TOL


def test_backend_that_does_not_match_the_stored_kernel_is_refused(tmp_path):
    yaml = pytest.importorskip("yaml")
    library_config, sd, _ = load("lm_mixed")  # vanilla storage
    library_config["slstm_block"]["slstm"].pop("backend")  # -> the library default, cuda
    folder = write_folder(tmp_path / "wrong", {"config.yaml": yaml.safe_dump({"model": library_config})}, sd)
    with pytest.raises(ValueError, match=r"'vanilla' layout, so the config's backend does not describe"):
        FlaxXLSTMForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("keep", ["lm_head.weight", "token_embedding.weight"])
def test_tied_checkpoint_with_either_embedding_key_loads(tmp_path, keep):
    library_config, sd, arrays = load("lm_slstm")
    assert library_config["tie_weights"]
    drop = ({"lm_head.weight", "token_embedding.weight"} - {keep}).pop()
    sd = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items() if k != drop}  # also: a bf16 checkpoint
    folder = write_folder(tmp_path / keep, {"config.json": json.dumps({"xlstm_cfg": library_config})}, sd)
    model = FlaxXLSTMForCausalLM.from_pretrained(folder)
    assert model.config.tie_word_embeddings and "lm_head" not in model.params
    assert all(v.dtype == np.float32 for v in jax.tree_util.tree_leaves(model.params))
    assert max_diff(model(arrays["idx"]).logits, arrays["logits"]) < 0.5  # bf16 weights: close, not equal


def test_library_folder_with_unused_or_missing_tensors_is_refused(tmp_path):
    library_config, sd, _ = load("lm_mixed")
    cfg = {"config.json": json.dumps({"xlstm_cfg": library_config})}
    with pytest.raises(ValueError, match=r"tensors the config does not use: \['extra.weight'\]"):
        FlaxXLSTMForCausalLM.from_pretrained(write_folder(tmp_path / "extra", cfg, {**sd, "extra.weight": np.ones(2)}))
    del sd["xlstm_block_stack.blocks.1.xlstm.zgate.weight"]
    with pytest.raises(ValueError, match=r"missing \['xlstm.zgate.weight'\]"):
        FlaxXLSTMForCausalLM.from_pretrained(write_folder(tmp_path / "missing", cfg, sd))


def test_missing_feedforward_key_is_the_library_default_and_null_is_none():
    library_config, _, _ = load("lm_mixed")
    block = library_config["slstm_block"]
    config, backend = config_from_library(dict(library_config, slstm_block={"slstm": block["slstm"]}))
    assert backend == "vanilla"
    ffn = config.slstm_block_config(1)
    assert (ffn.ff_proj_factor, ffn.ff_act_fn, ffn.ff_dim) == (1.3, "gelu", 64)  # FeedForwardConfig() defaults
    config, _ = config_from_library(dict(library_config, slstm_block=dict(block, feedforward=None)))
    assert config.slstm_block_config(1).ff_proj_factor is None
    config, _ = config_from_library(dict(library_config, mlstm_block=None))  # library: no mLSTM block -> all sLSTM
    assert config.slstm_block_indices == [0, 1]


# ---------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip_is_bit_identical(tmp_path, mixed):
    _, _, arrays = load("lm_mixed")
    mixed.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "xlstm_flax" and saved["slstm_at"] == [1] and saved["slstm_block"]
    again = FlaxXLSTMForCausalLM.from_pretrained(tmp_path / "ours")
    before, after = _params(mixed), _params(again)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    np.testing.assert_array_equal(np.asarray(again(arrays["idx"]).logits), np.asarray(mixed(arrays["idx"]).logits))


# ---------------------------------------------------------------------------------------------- generation
def test_left_padded_batch_generates_like_each_prompt_alone(mixed):
    rng = np.random.RandomState(0)
    prompts = [rng.randint(2, 48, n) for n in (3, 7, 5)]
    assert_left_padded_generation_is_per_prompt(mixed, prompts, max_new_tokens=8)


def test_sampling_and_beam_search_run_on_a_mixed_model(mixed):
    prompt = np.array([[3, 9, 4], [5, 6, 7]])
    greedy = np.asarray(mixed.generate(prompt, max_new_tokens=5, pad_token_id=1).sequences)
    sampled = [np.asarray(mixed.generate(prompt, max_new_tokens=5, pad_token_id=1, do_sample=True, top_k=5,
                                         prng_key=jax.random.PRNGKey(k)).sequences) for k in (0, 0, 1)]
    np.testing.assert_array_equal(sampled[0], sampled[1])  # same key, same tokens
    beams = np.asarray(mixed.generate(prompt, max_new_tokens=5, pad_token_id=1, num_beams=3).sequences)
    for out in (greedy, beams, *sampled):
        assert out.shape == (2, 8) and np.all((out >= 0) & (out < 48))
        np.testing.assert_array_equal(out[:, :3], prompt)


# ---------------------------------------------------------------------------------------------- config
def test_fresh_mixed_model_builds_each_kind_with_its_depth():
    config = XLSTMFlaxConfig(vocab_size=32, embedding_dim=32, num_blocks=3, slstm_at=[0, 2], layer_type="mlstm",
                             num_heads=4, compute_dtype="float32", ff_type=None,
                             slstm_block={"slstm": {"num_heads": 4}, "feedforward": {"proj_factor": 1.3}})
    model = FlaxXLSTMForCausalLM(config)
    blocks = model.params["backbone"]["blocks"]
    assert "slstm_layer" in blocks["0"] and "mlstm_layer" in blocks["1"] and "ffn" in blocks["2"]
    assert "ffn" not in blocks["1"]  # per-kind feedforward: ff_type None for the mLSTM blocks
    fbias = [np.asarray(blocks[i]["slstm_layer"]["bias"][:, 1]) for i in ("0", "2")]
    assert not np.allclose(fbias[0], fbias[1])  # powerlaw_blockdependent: the forget bias depends on the depth
    assert np.isfinite(np.asarray(model(np.array([[1, 2, 3]])).logits)).all()


@pytest.mark.parametrize("fields, message", [
    ({"slstm_at": [1], "scan_blocks": True}, "scan_blocks=True is invalid: needs a homogeneous stack"),
    ({"slstm_at": [5]}, r"slstm_at=\[5\] is invalid: block indices must be ints in \[0, num_blocks=2\)"),
    ({"slstm_at": "some"}, "slstm_at='some' is invalid"),
    ({"slstm_at": [1], "slstm_block": {"slstm": {"num_heads": 3}}}, "multiple of num_heads 3"),
    ({"slstm_at": [1], "slstm_block": {"slstm": {"function": "gru"}}}, "function 'gru' is not supported"),
])
def test_bad_slstm_config_is_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        XLSTMFlaxConfig(vocab_size=32, embedding_dim=32, num_blocks=2, layer_type="mlstm", num_heads=4, **fields)


def test_export_to_formats_without_slstm_is_refused(mixed):
    """xlstm-jax and transformers' xLSTM have no sLSTM blocks: their config cannot drop them silently."""
    from modeling_xlstm_flax.config_translation import to_transformers_config, to_upstream_config

    with pytest.raises(ValueError, match=r"slstm_at=\[1\] cannot be expressed upstream"):
        to_upstream_config(mixed.config)
    with pytest.raises(ValueError, match=r"slstm_at=\[1\] cannot be expressed by transformers' xLSTMConfig"):
        to_transformers_config(mixed.config)


def test_sharding_rules_cover_slstm_params_and_cache(mixed):
    """Every sLSTM param and cache leaf has a rule; the sLSTM heads (leading axis of the gate/recurrent kernels and
    the bias; after the batch in the cache) go on the tensor axis."""
    from jax.sharding import PartitionSpec as P

    from modeling_xlstm_flax import sharding as sh

    sizes = {"data": 1, "fsdp": 1, "tensor": 2}
    specs = flatten_dict(sh.param_partition_specs(mixed.params, mixed.config, sizes), sep="/")
    layer = "backbone/blocks/1/slstm_layer/"
    for name in ("igate/kernel", "recurrent_kernel", "bias"):
        assert specs[layer + name] == P("tensor", None, None), name
    assert specs[layer + "conv1d/kernel"] == P(None, "tensor")
    assert specs["backbone/blocks/1/ffn/proj_up/kernel"] == P(None, "tensor")  # the existing FFN rule
    cache = sh.cache_partition_specs(jax.eval_shape(lambda: mixed.init_cache(2)), mixed.config, sizes)
    assert all(cache[1][k] == P(("data", "fsdp"), "tensor", None) for k in "ycnm")
    assert cache[0]["c"] == P(("data", "fsdp"), "tensor", None, None)


# ---------------------------------------------------------------------------------------------- back to the library
@pytest.mark.parametrize("name", ["lm_mixed", "lm_slstm"])
def test_back_to_the_library_layout_in_both_backends(tmp_path, name):
    """ours -> library state dict == the library's own file (vanilla; cuda as `to_cuda_layout`), and a library
    folder written in either layout loads back to bit-identical params."""
    from modeling_xlstm_flax.library_checkpoint import library_config, library_state_dict, save_library_folder

    library_config_in, sd, _ = load(name)
    model = FlaxXLSTMForCausalLM.from_pretrained(distil_folder(tmp_path, name))
    if library_config_in["tie_weights"]:  # tied: both names, as the library's own state dict
        np.testing.assert_array_equal(sd["lm_head.weight"], sd["token_embedding.weight"])
    for backend, stored in (("vanilla", sd), ("cuda", to_cuda_layout(sd, library_config_in))):
        back = library_state_dict(model.params, model.config, backend)
        assert back.keys() == stored.keys()
        for key in stored:  # norm weights pass through 1 + w and back: equal to float32 rounding
            np.testing.assert_allclose(back[key], stored[key], rtol=0, atol=1e-7 if "norm" in key else 0,
                                       err_msg=f"{backend} {key}")
        assert library_config(model.config, backend)["slstm_block"]["slstm"]["backend"] == backend
        again = FlaxXLSTMForCausalLM.from_pretrained(save_library_folder(model.params, model.config,
                                                                         tmp_path / f"out-{backend}", backend))
        before, after = _params(model), _params(again)
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=f"{backend} {key}")


def test_config_the_library_cannot_express_is_refused():
    from modeling_xlstm_flax.library_checkpoint import library_config

    config = XLSTMFlaxConfig(vocab_size=32, embedding_dim=32, num_blocks=2, slstm_at=[1], layer_type="mlstm_v1",
                             num_heads=4, compute_dtype="float32")
    with pytest.raises(ValueError, match="the xlstm library cannot express this config: .*layer_type='mlstm_v1'"):
        library_config(config)


def test_document_borders_reset_slstm_blocks_only_with_the_config_flag(mixed):
    """As for mLSTM blocks: `document_borders` need `reset_at_document_boundaries` (a library model has it off, so
    borders given to it are refused, never ignored); with it on, the sLSTM carry restarts at a border (exactly, per
    cell: test_slstm.py::test_document_border_resets_the_state; the conv window too:
    test_slstm_blocks_follow_the_mask_and_border_rule)."""
    idx = np.array([[3, 9, 4, 7, 5, 6, 2, 8]])
    borders = np.zeros_like(idx, bool)
    borders[0, 3] = True
    with pytest.raises(ValueError, match="reset_at_document_boundaries=False"):
        mixed(idx, document_borders=borders)
    library_config, sd, _ = load("lm_slstm")
    config, backend = config_from_library(library_config, reset_at_document_boundaries=True)
    from modeling_xlstm_flax.library_checkpoint import params_from_library

    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    params = params_from_library(sd, config, backend)
    with_reset = np.asarray(model(idx, document_borders=borders, params=params).logits)
    without = np.asarray(model(idx, params=params).logits)
    assert max_diff(with_reset[:, :3], without[:, :3]) <= 1e-6  # before the border: nothing changes
    assert max_diff(with_reset[:, 3:], without[:, 3:]) > 1e-3


def test_slstm_blocks_follow_the_mask_and_border_rule():
    """The rule of every layer (`layer_parts`), on a mixed mLSTM/sLSTM model with a conv in its sLSTM block: a masked
    token changes no state (== the token removed) and a border starts a fresh document (== a fresh run), carry and
    conv window alike (fp32; 2e-5 as tests/test_masks_borders.py, whose noise floor is ~1e-5)."""
    library_config, sd, _ = load("lm_mixed")
    config, backend = config_from_library(library_config, reset_at_document_boundaries=True)
    from modeling_xlstm_flax.library_checkpoint import params_from_library

    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    params = params_from_library(sd, config, backend)
    idx = np.array([[3, 9, 4, 7, 5, 6, 2, 8]])
    mask = np.ones_like(idx)
    mask[0, 3] = 0
    masked = np.asarray(model(idx, attention_mask=mask, params=params).logits)
    removed = np.asarray(model(np.delete(idx, 3, axis=1), params=params).logits)
    assert max_diff(np.delete(masked, 3, axis=1), removed) <= 2e-5
    borders = np.zeros_like(idx, bool)
    borders[0, 4] = True
    with_border = np.asarray(model(idx, document_borders=borders, params=params).logits)
    fresh = np.asarray(model(idx[:, 4:], params=params).logits)
    assert max_diff(with_border[:, 4:], fresh) <= 2e-5


def test_convert_command_writes_our_layout_with_the_tokenizer(tmp_path, capsys):
    from modeling_xlstm_flax.convert_common import main

    _, _, arrays = load("lm_mixed")
    folder = distil_folder(tmp_path, "lm_mixed")
    (folder / "tokenizer.json").write_text("{}")
    out = tmp_path / "flax"
    assert main("from-library", [str(folder), str(out)]) == 0
    assert (out / "tokenizer.json").is_file() and json.loads((out / "config.json").read_text())["slstm_at"] == [1]
    model = FlaxXLSTMForCausalLM.from_pretrained(out)
    assert max_diff(model(arrays["idx"]).logits, arrays["logits"]) <= TOL
    assert main("from-library", [str(folder), str(out)]) == 1  # exists, no --overwrite: refused, old output kept
    assert "already exists" in capsys.readouterr().err and (out / "model.safetensors").is_file()
    assert main("from-library", [str(folder), str(folder / "sub")]) == 1
    assert "lies inside the input" in capsys.readouterr().err
    assert main("from-library", [str(out), str(tmp_path / "x")]) == 1  # our own layout is not a library folder
    assert "no xlstm library config" in capsys.readouterr().err


def test_scanned_slstm_only_stack_matches_library_and_unrolled(tmp_path):
    """scan_blocks with a homogeneous sLSTM stack: library logits (sequence and cached steps), the unrolled params
    stacked, a save -> load round trip, and a fresh init with each block's depth-dependent forget bias."""
    from modeling_xlstm_flax.xlstm_layers import stack_block_params

    library_config, _, arrays = load("lm_slstm")
    folder = distil_folder(tmp_path, "lm_slstm")
    unrolled = FlaxXLSTMForCausalLM.from_pretrained(folder)
    scanned = FlaxXLSTMForCausalLM.from_pretrained(folder, scan_blocks=True)
    stacked = {k: np.asarray(v) for k, v in flatten_dict(stack_block_params(unrolled.params, 2), sep="/").items()}
    assert stacked.keys() == _params(scanned).keys()
    for key, value in _params(scanned).items():
        np.testing.assert_array_equal(value, stacked[key], err_msg=key)
    assert max_diff(scanned(arrays["idx"]).logits, arrays["logits"]) <= TOL
    assert max_diff(stepped_logits(scanned, arrays["idx"], 5), arrays["logits_step"]) <= TOL
    scanned.save_pretrained(tmp_path / "scanned")
    again = FlaxXLSTMForCausalLM.from_pretrained(tmp_path / "scanned")
    assert again.config.scan_blocks
    for key, value in _params(scanned).items():
        np.testing.assert_array_equal(_params(again)[key], value, err_msg=key)
    fresh_scanned = FlaxXLSTMForCausalLM(scanned.config)
    fresh_unrolled = FlaxXLSTMForCausalLM(unrolled.config)
    bias = np.asarray(fresh_scanned.params["backbone"]["blocks"]["scanned"]["block"]["slstm_layer"]["bias"])
    for i in range(2):  # the compiled unrolled init and the eager formula may differ in the last bit (1 ulp)
        np.testing.assert_allclose(bias[i], np.asarray(
            fresh_unrolled.params["backbone"]["blocks"][str(i)]["slstm_layer"]["bias"]), rtol=1e-6, atol=0)
    assert not np.array_equal(bias[0], bias[1])


def test_segmented_prefill_of_a_mixed_model_matches_library(tmp_path):
    """A prompt longer than `prefill_segment_size` runs through the per-kind cache segment by segment."""
    _, _, arrays = load("lm_mixed")
    model = FlaxXLSTMForCausalLM.from_pretrained(distil_folder(tmp_path, "lm_mixed"), prefill_segment_size=5)
    out = model(arrays["idx"], past_key_values=model.init_cache(arrays["idx"].shape[0]))
    assert max_diff(out.logits, arrays["logits"]) <= TOL
