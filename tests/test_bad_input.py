"""Bad input, class by class (issue 13): each case ends in an error that names the offending thing, or in the
correct result. Cheap: tiny configs, errors raised before any compile; the few successful calls compile once."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from modeling_xlstm_flax.cache import MLSTMCache
from modeling_xlstm_flax import FlaxXLSTMForCausalLM, XLSTMFlaxConfig, load_preset
from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config, parse_field_overrides


@pytest.fixture(scope="module")
def model():
    return FlaxXLSTMForCausalLM(tiny_config(), seed=0)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: XLSTMFlaxConfig(num_blockz=3), r"XLSTMFlaxConfig\(\): unknown XLSTMFlaxConfig field 'num_blockz' "
                                                r"\(did you mean 'num_blocks'\?\)"),
        (lambda: load_preset("tiny-mlstm", embeding_dim=64), r"overrides: .*'embeding_dim' \(did you mean "
                                                             r"'embedding_dim'\?\)"),
        (lambda: parse_field_overrides(["num_head=4"]), r"--set 'num_head=4': .*did you mean 'num_heads'"),
        (lambda: parse_field_overrides(["num_heads"]), r"--set 'num_heads': expected FIELD=VALUE"),
        (lambda: setattr(tiny_config(), "chunk_sise", 8), r"setting XLSTMFlaxConfig.chunk_sise: .*'chunk_size'"),
        (lambda: setattr(tiny_config(), "num_heads", 3), r"cannot set XLSTMFlaxConfig.num_heads=3 \(the config keeps "
                                                         r"num_heads=2\): .*multiple of num_heads=3"),
        (lambda: setattr(tiny_config(), "chunk_size", 0), r"cannot set XLSTMFlaxConfig.chunk_size=0"),
        (lambda: tiny_config().update({"num_heads": 3, "vocab_sise": 5}), r"update\(\): .*'vocab_sise'"),
    ],
)
def test_config_names_and_assignments_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_config_assignment_keeps_old_value_and_update_is_atomic():
    config = tiny_config()
    with pytest.raises(ValueError):
        config.num_heads = 3
    assert config.num_heads == 2
    with pytest.raises(ValueError):
        config.update({"num_blocks": 5, "num_heads": 3})
    assert (config.num_blocks, config.num_heads) == (2, 2)
    config.update({"num_heads": 4, "embedding_dim": 128})  # invalid one at a time, valid together
    assert (config.num_heads, config.embedding_dim) == (4, 128)
    config.__dict__["num_heads"] = 3  # bypassing the checks: building a model still refuses it
    with pytest.raises(ValueError, match="num_heads=3"):
        FlaxXLSTMForCausalLM(config, _do_init=False)


def test_transformers_attributes_accepted_and_round_trip(tmp_path):
    """Whatever we write, we read: standard PretrainedConfig attributes set on our config survive save/load."""
    config = tiny_config(use_cache=False)
    config.gradient_checkpointing = True
    config.output_attentions = True
    config.save_pretrained(tmp_path)
    again = XLSTMFlaxConfig.from_pretrained(tmp_path)
    assert (again.use_cache, again.gradient_checkpointing, again.output_attentions) == (False, True, True)


def test_config_files_checked(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} has no config.json"):
        XLSTMFlaxConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config file .*config\.json holds a JSON list"):
        XLSTMFlaxConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(tiny_config().to_dict(), num_blockz=2)))
    with pytest.raises(ValueError, match=r"config\.json: unknown XLSTMFlaxConfig field 'num_blockz'"):
        XLSTMFlaxConfig.from_json_file(tmp_path / "config.json")


def test_transformers_config_keys_accounted_for(caplog):
    from transformers import xLSTMConfig

    pt = xLSTMConfig(hidden_size=128, num_heads=2, num_hidden_layers=2, vocab_size=97, mode="train").to_dict()
    with caplog.at_level(logging.INFO, logger="modeling_xlstm_flax.config_translation"):
        config = from_transformers_config(pt)
    assert config.embedding_dim == 128 and "'mode': 'train'" in caplog.text  # runtime choice: logged
    with pytest.raises(ValueError, match=r"does not know: \['fancy_gate'\]"):
        from_transformers_config(dict(pt, fancy_gate=1))


# ---------------------------------------------------------------------------------------------- calling, generating
IDS = np.array([[3, 4, 5, 6]])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(attention_mask=np.array([[1, 1, 1, 0]]), max_new_tokens=2),
         r"attention_mask row 0 ends with padding \(\[1, 1, 1, 0\]\).*pad prompts on the left"),
        (dict(attention_mask=np.array([[0, 0, 0, 0]]), max_new_tokens=2), "row 0 is all zeros"),
        (dict(max_length=3), r"max_length=3 is invalid: must be an int >= 5 .*prompt's 4 tokens"),
        (dict(max_length=4), r"max_length=4 is invalid"),
        (dict(max_new_tokens=10**12), r"max_new_tokens=1000000000000 is invalid: must be an int >= 1 and <= "),
        (dict(max_new_tokens=0), r"max_new_tokens=0 is invalid"),
        (dict(max_new_tokens=2, num_beams=0), r"num_beams=0 is invalid: must be an int >= 1"),
        (dict(max_new_tokens=2, num_beams=-2), r"num_beams=-2 is invalid"),
        (dict(max_new_tokens=2, do_sample=True, top_p=1.5), r"top_p=1.5 is invalid when sampling: must be in \(0, 1\]"),
        (dict(max_new_tokens=2, do_sample=True, top_p=0.0), r"top_p=0.0 is invalid"),
        (dict(max_new_tokens=2, do_sample=True, top_k=-1), r"top_k=-1 is invalid"),
        (dict(max_new_tokens=2, do_sample=True, temperature=0.0), r"temperature=0.0 is invalid when sampling"),
        (dict(max_new_tokens=2, do_sample=True, temperature=float("inf")), r"temperature=inf is invalid"),
        (dict(max_new_tokens=2, generation_config="greedy"), "generation_config must be a transformers"),
    ],
)
def test_generate_arguments_checked(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(IDS, **kwargs)


def test_generation_config_values_checked_too(model):
    from transformers import GenerationConfig

    with pytest.raises(ValueError, match=r"top_p=2.0 is invalid when sampling"):
        model.generate(IDS, generation_config=GenerationConfig(do_sample=True, top_p=2.0, max_new_tokens=2))
    with pytest.raises(ValueError, match=r"num_beams=0"):
        model.generate(IDS, generation_config=GenerationConfig(num_beams=0, max_new_tokens=2))


def test_generate_accepts_lists(model):
    want = np.asarray(model.generate(IDS, max_new_tokens=3, pad_token_id=1).sequences)
    got = np.asarray(model.generate(IDS.tolist(), max_new_tokens=3, pad_token_id=1).sequences)
    np.testing.assert_array_equal(got, want)


def _cache(config_overrides=None, batch=1):
    other = FlaxXLSTMForCausalLM(tiny_config(**(config_overrides or {})), _do_init=False)
    return other.init_cache(batch)


@pytest.mark.parametrize(
    "make_cache,message",
    [
        (lambda: _cache(batch=2), r"past_key_values\[0\]\.c has shape \(2, 2, 16, 32\) \(float32\), expected "
                                  r"\(1, 2, 16, 32\) \(float32\)"),
        (lambda: _cache(dict(num_heads=4)), r"past_key_values\[0\]\.c has shape \(1, 4, 8, 16\)"),
        (lambda: _cache(dict(num_blocks=3)), r"must be a list of 2 per-block caches .*got a list of 3"),
        (lambda: jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), _cache()), r"\(bfloat16\), expected"),
        (lambda: {"foo": 1}, r"past_key_values must be a list of 2 .*got a dict with keys \['foo'\]"),
        (lambda: [1, 2], r"past_key_values\[0\] must be an MLSTMCache with fields \['c', 'n', 'm'\] .*got int"),
        (lambda: [dict(c=0, n=0, m=0), {}], r"past_key_values\[0\] must be an MLSTMCache .*got a dict with keys"),
        (lambda: [MLSTMCache(c="x", n=0, m=0), {}], r"past_key_values\[0\]\.c must be an array of shape"),
        (lambda: jax.tree_util.tree_map(lambda x: x * np.nan, _cache()), "past_key_values holds NaN"),
    ],
)
def test_bad_caches_rejected_on_the_host(model, make_cache, message):
    with pytest.raises(ValueError, match=message):
        model(IDS, past_key_values=make_cache())


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "2", True, None])
def test_init_cache_batch_size_checked(model, batch_size):
    with pytest.raises(ValueError, match=f"batch_size={batch_size!r} is invalid: must be an int >= 1"):
        model.init_cache(batch_size)
    assert jax.tree_util.tree_leaves(model.init_cache(np.int64(2)))[0].shape[0] == 2


def test_traced_out_of_range_ids_are_clamped(model):
    """Inside jit ids cannot be checked; they are clamped into [0, vocab) (the README says so), never NaN."""
    logits = jax.jit(lambda ids: model(ids).logits)
    bad = jnp.array([[3, 500, -2, 4]])
    clamped = jnp.array([[3, 96, 0, 4]])
    np.testing.assert_array_equal(np.asarray(logits(bad)), np.asarray(logits(clamped)))
    assert np.all(np.isfinite(np.asarray(logits(bad))))


# ---------------------------------------------------------------------------------------------- commands
def _commands():
    from modeling_xlstm_flax import cli, hub, training

    return {
        "xlstm-flax generate": lambda model, out: cli.generate_main(["--model", model]),
        "xlstm-flax train": lambda model, out: training.main(["--model", model, "--output-dir", out]),
        "xlstm-flax export-hub": lambda model, out: hub.main(["--model", model, "--output", out]),
    }


def _bad_model(tmp_path, kind):
    if kind == "missing":
        return str(tmp_path / "no-such-model"), "no such folder"
    if kind == "file":
        path = tmp_path / "weights.bin"
        path.write_bytes(b"x")
        return str(path), "is a file; expected a model folder"
    if kind == "no-config":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty"), "has no config.json"
    a, b = tmp_path / "loop-a", tmp_path / "loop-b"
    os.symlink(b, a)
    os.symlink(a, b)
    return str(a), "a broken symbolic link or a symlink loop"


@pytest.mark.parametrize("command", ["xlstm-flax generate", "xlstm-flax train", "xlstm-flax export-hub"])
@pytest.mark.parametrize("kind", ["missing", "file", "no-config", "symlink-loop"])
def test_commands_name_a_bad_model_in_one_line(tmp_path, capsys, command, kind):
    model, message = _bad_model(tmp_path, kind)
    assert _commands()[command](model, str(tmp_path / "out")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{command}: error: --model {model}: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", ["xlstm-flax train", "xlstm-flax export-hub"])
def test_commands_refuse_an_unwritable_output(tmp_path, capsys, command):
    from modeling_xlstm_flax import bundled_model_path

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _commands()[command](str(bundled_model_path()), str(blocker / "out")) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot be created" in err and str(blocker) in err and len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_parent(tmp_path, capsys):
    from modeling_xlstm_flax import hub
    from modeling_xlstm_flax import bundled_model_path

    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert hub.main(["--model", str(bundled_model_path()), "--output", str(parent / "out")]) == 1
    finally:
        parent.chmod(0o755)
    assert "cannot write into" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be positive, got 0"),
        (["--num-beams", "0"], "--num-beams must be >= 1"),
        (["--do-sample", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--do-sample", "--temperature", "nan"], "--temperature must be a positive finite number, got nan"),
        (["--preset", "nope"], "unknown preset 'nope'"),
    ],
)
def test_generate_command_options(capsys, args, message):
    from modeling_xlstm_flax.cli import generate_main as main

    assert main(args) == 1
    err = capsys.readouterr().err
    assert "xlstm-flax generate: error: " in err and message in err


# ---------------------------------------------------------------------------------------------- noise
def test_transformers_noise_filtered():
    from modeling_xlstm_flax.cli import quiet_transformers

    quiet_transformers()

    def kept(logger_name, message):
        record = logging.LogRecord(logger_name, logging.WARNING, __file__, 1, message, None, None)
        return logging.getLogger(logger_name).filter(record)

    assert not kept("transformers.modeling_flax_utils", "TensorFlow and JAX classes are deprecated and will be ...")
    assert not kept("transformers.pipelines.base", "Device set to use 0")
    assert not kept("transformers.modeling_flax_utils",
                    "The argument `trust_remote_code` is to be used with Auto classes. It has no effect here")
    assert kept("transformers.modeling_flax_utils", "Some weights of the model checkpoint were not used")
