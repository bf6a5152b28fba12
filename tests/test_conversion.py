"""Checkpoint converters (conversion/orbax_to_hf.py, pytorch_to_flax.py, flax_to_pytorch.py): the orbax fixture
against upstream's golden logits, Flax <-> PyTorch against transformers' `xLSTMForCausalLM`, sharded outputs,
bad inputs, and the xLSTM-7B key/shape plan (no weights).

transformers 4.57.6's PyTorch xLSTM: chunk_size=128 with shorter sequences, hidden_size * qk_dim_factor a multiple
of 64, float32 kernels (`autocast_kernel_dtype="float32"`).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, NO_TORCH, causal_lm_loader, max_abs_diff


def _torch():
    """torch, or a skip: transformers' PyTorch xLSTM is the reference of the tests that call this (the orbax and
    bad-input tests need no torch and run under transformers 5 as well)."""
    return pytest.importorskip("torch", reason="transformers' PyTorch xLSTMForCausalLM is the reference here")

TOL = 1e-4
ORBAX = FIXTURES / "v1_orbax"
PT_KW = dict(vocab_size=101, hidden_size=128, num_hidden_layers=2, num_heads=2, qk_dim_factor=0.5, chunk_size=128)


def _run(conversion: str, *argv) -> int:
    """`xlstm-flax convert CONVERSION ARGV -q` (its exit status)."""
    from modeling_xlstm_flax.convert_common import main

    return main(conversion, [str(a) for a in argv] + ["-q"])


def _no_leftovers(out) -> bool:
    """Neither the output nor a temporary folder beside it exists."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


def _pt_logits(directory, ids):
    torch = _torch()
    from transformers import xLSTMForCausalLM

    model = xLSTMForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                             autocast_kernel_dtype="float32").eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _flax_logits(directory, ids):
    return np.asarray(causal_lm_loader().from_pretrained(directory)(ids).logits)


@pytest.fixture(scope="module")
def pt_dir(tmp_path_factory):
    """A transformers PyTorch xLSTM saved sharded (index + 14 shards), every weight perturbed."""
    torch = _torch()
    from transformers import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(0)
    model = xLSTMForCausalLM(xLSTMConfig(**PT_KW, autocast_kernel_dtype="float32", dtype="float32")).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    path = tmp_path_factory.mktemp("pt") / "model"
    model.save_pretrained(path, max_shard_size="100KB")
    (path / "tokenizer.json").write_text('{"stand-in": "copied byte for byte"}')
    return path


@pytest.fixture(scope="module")
def ids():
    return np.random.RandomState(7).randint(0, PT_KW["vocab_size"], (2, 19)).astype(np.int32)


@pytest.fixture(scope="module")
def pt_reference(pt_dir, ids):
    """transformers' logits of `pt_dir` for `ids`."""
    return _pt_logits(pt_dir, ids)


def _flax_model(tie: bool = False, scan: bool = False, seed: int = 0):
    """Our model for a PyTorch-expressible config, every param perturbed (gate kernels init to zeros)."""
    import jax
    from transformers import xLSTMConfig

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM
    from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config

    config = from_transformers_config(xLSTMConfig(**PT_KW, tie_word_embeddings=tie), scan_blocks=scan)
    model = FlaxXLSTMForCausalLM(config, seed=seed)
    leaves, tree = jax.tree_util.tree_flatten(model.params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    model.params = jax.tree_util.tree_unflatten(
        tree, [p + 0.1 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    return model


# ---------------------------------------------------------------------------------------------- 1. orbax
def test_orbax_fixture_converts_and_reproduces_upstream_logits(tmp_path):
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text('{"model": "stand-in"}')
    (tokenizer / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "hf"
    assert _run("from-orbax", ORBAX, out, "--tokenizer", tokenizer) == 0

    assert json.loads((out / "config.json").read_text())["model_type"] == "xlstm_flax"
    assert (out / "tokenizer.json").read_text() == '{"model": "stand-in"}' and (out / "tokenizer_config.json").is_file()
    inputs, expected = np.load(FIXTURES / "v1" / "inputs.npy"), np.load(FIXTURES / "v1" / "logits.npy")
    assert max_abs_diff(_flax_logits(out, inputs), expected) <= TOL
    assert not list(tmp_path.glob(".hf.partial-*"))


def test_orbax_verify_and_bfloat16_output(tmp_path, capfd):
    from safetensors import safe_open

    out = tmp_path / "hf"
    assert _run("from-orbax", ORBAX / "checkpoints" / "checkpoint_1", out, "--dtype", "bfloat16", "--verify") == 0
    assert "max |logits diff| = 0 " in capfd.readouterr().err  # same rounded weights on both sides
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
        assert f.metadata() == {"format": "flax"}
    inputs, expected = np.load(FIXTURES / "v1" / "inputs.npy"), np.load(FIXTURES / "v1" / "logits.npy")
    diff = max_abs_diff(_flax_logits(out, inputs), expected)
    assert 0 < diff < 0.5  # bfloat16 weights: close to upstream, but not float32-exact


def _orbax_from_fixture(name: str, run):
    """An orbax checkpoint laid out as upstream's trainer writes it (no `params` root; leaves that upstream boxes
    with partition names get a trailing `value`), holding the fixture's params and config."""
    import orbax.checkpoint as ocp
    from flax.traverse_util import unflatten_dict
    from safetensors.numpy import load_file

    boxed = {line.split("\t")[0] for line in (FIXTURES / name / "tree.txt").read_text().splitlines()
             if not line.startswith("#") and line.split("\t")[3] != "None"}
    tree = {tuple(k.split("/")[1:] + (["value"] if k in boxed else [])): v
            for k, v in load_file(str(FIXTURES / name / "params.safetensors")).items()}
    checkpoint = run / "checkpoints" / "checkpoint_5"
    (checkpoint / "metadata").mkdir(parents=True)
    ocp.PyTreeCheckpointer().save(str(checkpoint / "params"), unflatten_dict(tree))
    config = json.loads((FIXTURES / name / "config.json").read_text())
    (checkpoint / "metadata" / "metadata").write_text(json.dumps({"model": {"model_config": config}}))
    return run


def test_orbax_scanned_upstream_checkpoint(tmp_path):
    """Upstream's scan_blocks layout (leaves stacked (NB, ...)): converted stacked (our scanned layout, the 7B
    case) it equals the unrolled fixture's params; converted unrolled it reproduces upstream's logits."""
    from flax.traverse_util import flatten_dict

    from conftest import load_fixture
    from modeling_xlstm_flax import unstack_block_params
    from modeling_xlstm_flax.convert_common import load_flax_params

    run = _orbax_from_fixture("v1_scan", tmp_path / "run")
    assert _run("from-orbax", run, tmp_path / "scanned") == 0
    assert json.loads((tmp_path / "scanned" / "config.json").read_text())["scan_blocks"] is True
    params = flatten_dict(unstack_block_params(load_flax_params(tmp_path / "scanned"), 2))
    reference = flatten_dict(load_fixture("v1")[1])
    assert set(params) == set(reference)
    for key in reference:
        np.testing.assert_array_equal(params[key], np.asarray(reference[key]), err_msg=str(key))

    assert _run("from-orbax", run, tmp_path / "unrolled", "--set", "scan_blocks=false") == 0
    inputs, expected = np.load(FIXTURES / "v1_scan" / "inputs.npy"), np.load(FIXTURES / "v1_scan" / "logits.npy")
    assert max_abs_diff(_flax_logits(tmp_path / "unrolled", inputs), expected) <= TOL


def test_orbax_picks_highest_step_or_the_named_one(tmp_path):
    from modeling_xlstm_flax.convert_common import ConversionError
    from modeling_xlstm_flax.convert_orbax_to_hf import find_checkpoint

    for step in (3, 12, 7):
        (tmp_path / "checkpoints" / f"checkpoint_{step}" / "params").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"checkpoint_{step}" / "metadata").mkdir()
    assert find_checkpoint(tmp_path).name == "checkpoint_12"
    assert find_checkpoint(tmp_path, step=3).name == "checkpoint_3"
    with pytest.raises(ConversionError, match=r"no checkpoint_5; available steps: \[3, 7, 12\]"):
        find_checkpoint(tmp_path, step=5)


# ---------------------------------------------------------------------------------------------- 2. PyTorch <-> Flax
def test_pytorch_to_flax_sharded_input_matches_transformers(tmp_path, pt_dir, ids, pt_reference):
    assert (pt_dir / "model.safetensors.index.json").is_file()
    out = tmp_path / "flax"
    assert _run("from-pytorch", pt_dir, out) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert max_abs_diff(_flax_logits(out, ids), pt_reference) <= TOL


def test_pytorch_to_flax_sharded_scanned_output_loads_with_from_pretrained(tmp_path, pt_dir, ids, pt_reference):
    out = tmp_path / "flax"
    assert _run("from-pytorch", pt_dir, out, "--max-shard-size", "150KB", "--set", "scan_blocks=true",
                "--flax-shard-format", "msgpack") == 0
    index = json.loads((out / "flax_model.msgpack.index.json").read_text())
    shards = sorted(p.name for p in out.glob("flax_model-*.msgpack"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert "backbone/blocks/scanned/block/mlstm_layer/q/kernel" in index["weight_map"]
    assert max_abs_diff(_flax_logits(out, ids), pt_reference) <= TOL


def test_pytorch_to_flax_sharded_safetensors_output(tmp_path, pt_dir, ids, pt_reference):
    from modeling_xlstm_flax.configuration_xlstm_flax import XLSTMFlaxConfig
    from modeling_xlstm_flax.convert_common import flax_logits, load_flax_params

    out = tmp_path / "flax"
    assert _run("from-pytorch", pt_dir, out, "--max-shard-size", "150KB", "--flax-shard-format", "safetensors") == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    pt_index = json.loads((pt_dir / "model.safetensors.index.json").read_text())  # written by transformers
    assert index["metadata"]["total_size"] == pt_index["metadata"]["total_size"]
    config = XLSTMFlaxConfig.from_pretrained(out)
    assert max_abs_diff(flax_logits(config, load_flax_params(out), ids), pt_reference) <= TOL


@pytest.mark.parametrize("tie,scan", [(False, False), (True, True)])
def test_flax_to_pytorch_sharded_matches_and_round_trips(tmp_path, ids, tie, scan):
    from flax.traverse_util import flatten_dict

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    model = _flax_model(tie=tie, scan=scan)
    model.save_pretrained(tmp_path / "flax")
    out = tmp_path / "pt"
    assert _run("to-pytorch", tmp_path / "flax", out, "--max-shard-size", "100KB") == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert ("lm_head.weight" in index["weight_map"]) == (not tie)
    assert json.loads((out / "config.json").read_text())["model_type"] == "xlstm"
    flax_logits = np.asarray(model(ids).logits)
    assert max_abs_diff(_pt_logits(out, ids), flax_logits) <= TOL

    back = tmp_path / "flax_again"
    assert _run("from-pytorch", out, back, "--set", f"scan_blocks={str(scan).lower()}") == 0
    loaded = FlaxXLSTMForCausalLM.from_pretrained(back)
    a, b = flatten_dict(model.params), flatten_dict(loaded.params)
    assert set(a) == set(b)
    for key in a:  # transposes only: bit-identical after the round trip
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=str(key))


def test_flax_to_pytorch_bfloat16_with_verify(tmp_path, capfd):
    from safetensors import safe_open

    _torch()  # --verify runs transformers' PyTorch model

    _flax_model().save_pretrained(tmp_path / "flax")
    out = tmp_path / "pt"
    assert _run("to-pytorch", tmp_path / "flax", out, "--dtype", "bfloat16", "--verify") == 0
    err = capfd.readouterr().err
    diff = float(err.split("max |logits diff| = ")[1].split()[0])
    assert diff <= TOL
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}


# ---------------------------------------------------------------------------------------------- 3. bad input
def _pt_copy(pt_dir, tmp_path):
    bad = tmp_path / "bad_pt"
    shutil.copytree(pt_dir, bad)
    return bad


def _rewrite_shard(directory, change):
    """Apply `change(dict of arrays)` to the shard holding backbone.blocks.1.mlstm_layer.q.weight."""
    from safetensors.numpy import load_file, save_file

    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = directory / index["weight_map"]["backbone.blocks.1.mlstm_layer.q.weight"]
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != shard.name}
    index["weight_map"].update({k: shard.name for k in tensors})
    index_path.write_text(json.dumps(index))


def test_missing_key_is_an_error(tmp_path, pt_dir, capsys):
    bad = _pt_copy(pt_dir, tmp_path)
    _rewrite_shard(bad, lambda t: t.pop("backbone.blocks.1.mlstm_layer.q.weight"))
    out = tmp_path / "out"
    assert _run("from-pytorch", bad, out) == 1
    err = capsys.readouterr().err
    assert "1 missing tensors" in err and "backbone.blocks.1.mlstm_layer.q.weight (64, 128)" in err
    assert _no_leftovers(out)


def test_unexpected_key_is_an_error(tmp_path, pt_dir, capsys):
    bad = _pt_copy(pt_dir, tmp_path)
    _rewrite_shard(bad, lambda t: t.update({"backbone.blocks.1.mlstm_layer.mystery.weight": np.zeros((3, 5), "f4")}))
    out = tmp_path / "out"
    assert _run("from-pytorch", bad, out) == 1
    err = capsys.readouterr().err
    assert "1 unexpected tensors" in err and "backbone.blocks.1.mlstm_layer.mystery.weight (3, 5)" in err
    assert _no_leftovers(out)


def test_shape_mismatch_is_an_error(tmp_path, pt_dir, capsys):
    bad = _pt_copy(pt_dir, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(config, vocab_size=99)))
    out = tmp_path / "out"
    assert _run("from-pytorch", bad, out) == 1
    err = capsys.readouterr().err
    assert "2 shape mismatches" in err
    assert "backbone.embeddings.weight: has (101, 128), the config needs (99, 128)" in err
    assert "lm_head.weight: has (101, 128), the config needs (99, 128)" in err
    assert _no_leftovers(out)


def test_untranslatable_config_is_an_error(tmp_path, capsys):
    from conftest import tiny_config

    src = tmp_path / "flax_mlstm"
    tiny_config("mlstm").save_pretrained(src)  # the `mlstm` layer: transformers' xLSTM has none
    out = tmp_path / "out"
    assert _run("to-pytorch", src, out) == 1
    assert "cannot be expressed as transformers' xLSTMConfig: layer_type='mlstm'" in capsys.readouterr().err
    assert _no_leftovers(out)

    run = tmp_path / "run"
    shutil.copytree(ORBAX, run)
    meta_path = run / "checkpoints" / "checkpoint_1" / "metadata" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["model"]["model_config"]["slstm_at"] = [1]
    meta_path.write_text(json.dumps(meta))
    assert _run("from-orbax", run, out) == 1
    err = capsys.readouterr().err
    assert "metadata/metadata: the model config cannot be translated" in err and "sLSTM" in err
    assert _no_leftovers(out)


def test_truncated_safetensors_is_an_error_naming_the_file(tmp_path, pt_dir, capsys):
    bad = _pt_copy(pt_dir, tmp_path)
    shard = bad / "model-00003-of-00014.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    out = tmp_path / "out"
    assert _run("from-pytorch", bad, out) == 1
    err = capsys.readouterr().err
    assert f"{shard}: not a valid safetensors file" in err
    assert _no_leftovers(out)


def test_corrupt_orbax_file_is_an_error_and_removes_the_partial_output(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ORBAX, run)
    params = run / "checkpoints" / "checkpoint_1" / "params"
    data_files = [p for p in (params / "ocdbt.process_0" / "d").iterdir() if p.is_file()]
    for p in data_files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    out = tmp_path / "out"
    assert _run("from-orbax", run, out) == 1
    err = capsys.readouterr().err
    assert f"orbax checkpoint {params}: cannot read" in err
    assert _no_leftovers(out)  # the failure came mid-write: the temporary folder was removed


def test_verify_failure_and_existing_output_leave_nothing(tmp_path, capsys, monkeypatch):
    from modeling_xlstm_flax import convert_orbax_to_hf as orbax_to_hf

    real = orbax_to_hf.flax_dir_logits
    monkeypatch.setattr(orbax_to_hf, "flax_dir_logits", lambda *a, **k: real(*a, **k) + 1e-3)  # a broken output
    out = tmp_path / "out"
    assert _run("from-orbax", ORBAX, out, "--verify") == 3
    monkeypatch.undo()
    assert "verification failed" in capsys.readouterr().err
    assert _no_leftovers(out)

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _run("from-orbax", ORBAX, out) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_python_m_entry_point_reports_bad_input(tmp_path):
    """`python -m` (run outside the repo, so the installed package is imported) exits 1 with a clear message."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "modeling_xlstm_flax.cli", "convert", "from-pytorch", str(tmp_path / "nowhere"), str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, **NO_TORCH))
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: {tmp_path / 'nowhere'}: no such directory" in result.stderr
    assert _no_leftovers(out)


@pytest.mark.parametrize("name", ["from-orbax", "from-pytorch", "to-pytorch"])
def test_help_explains_every_option(name):
    from modeling_xlstm_flax.convert_common import build_parser

    parser = build_parser(name)
    for action in parser._actions:
        assert action.help and len(action.help) > 10, action.dest
    help_text = parser.format_help()
    for option in ("--dtype", "--max-shard-size", "--verify", "--tolerance", "--set", "--overwrite"):
        assert option in help_text


# ---------------------------------------------------------------------------------------------- 4. xLSTM-7B plan
def test_xlstm_7b_shapes_match_the_converter_plan_in_both_layouts():
    """No weights: the 7B preset's Flax param shapes (jax.eval_shape inside FlaxPreTrainedModel, unrolled and
    scanned) and transformers' PyTorch xLSTMForCausalLM built on the meta device equal what the converter plans
    to write."""
    from flax.traverse_util import flatten_dict

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, load_preset
    from modeling_xlstm_flax import param_table
    from modeling_xlstm_flax.convert_common import output_tensors
    from modeling_xlstm_flax.loading import Source, SourceTensor, model_plan

    config = load_preset("xlstm-7b")
    assert (config.vocab_size, config.embedding_dim, config.num_blocks, config.num_heads) == (50304, 4096, 32, 8)
    plan = model_plan(config)

    def unreadable():
        raise AssertionError("the plan must not read weights")

    source = Source("plan", {k: SourceTensor(s, np.dtype("float32"), unreadable, k) for k, s in plan.items()})

    def written(layout, cfg, sep):
        return {sep.join(t.key): t.shape for t in output_tensors(source, cfg, layout)}

    # Flax, unrolled and scanned: the shapes from_pretrained checks against (params_shape_tree is jax.eval_shape)
    for scan in (False, True):
        cfg = load_preset("xlstm-7b", scan_blocks=scan)
        model_shapes = {"/".join(k): tuple(v.shape)
                        for k, v in flatten_dict(FlaxXLSTMForCausalLM(cfg, _do_init=False).params_shape_tree).items()}
        assert written("flax", cfg, "/") == model_shapes
    assert plan["backbone/embeddings/embedding"] == (50304, 4096) and plan["lm_head/kernel"] == (4096, 50304)
    assert plan["backbone/blocks/31/ffn/proj_up/kernel"] == (4096, 10944)
    assert plan["backbone/blocks/0/mlstm_layer/q/kernel"] == (4096, 2048)

    # PyTorch: transformers' own module, built without memory
    torch = _torch()
    from transformers import xLSTMConfig, xLSTMForCausalLM

    with torch.device("meta"):
        reference = xLSTMForCausalLM(xLSTMConfig(vocab_size=50304, hidden_size=4096, num_hidden_layers=32,
                                                 num_heads=8))
    reference_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert written("pytorch", config, ".") == reference_shapes
    assert param_table.pytorch_plan(plan) == reference_shapes
    assert len(reference_shapes) == 483
