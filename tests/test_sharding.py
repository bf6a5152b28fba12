"""Sharding over a (data, fsdp, tensor) mesh: partition rules, sharded forward / grad / generate / cache, loading.

Rule tests run here (shapes only, no devices needed). Everything that needs several devices runs once in a
subprocess (`tests/sharding_checks.py`) with XLA_FLAGS=--xla_force_host_platform_device_count=8 - this process
imported jax with one CPU device already - and the tests below assert on the JSON it writes.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec as P

from conftest import FAST_XLA_FLAGS, NO_TORCH, tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from modeling_xlstm_flax import sharding as sh

pytestmark = pytest.mark.slow  # see setup.cfg: `pytest -m "not slow"` skips this file

HERE = Path(__file__).resolve().parent
TOL = 1e-5  # float32, sharded vs single device
SIZES_222 = {"data": 2, "fsdp": 2, "tensor": 2}


def param_shapes(config) -> dict:
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    return model.params_shape_tree


def flat_specs(config, sizes, fsdp_min=0) -> dict:
    specs = sh.param_partition_specs(param_shapes(config), config, sizes, fsdp_min)
    return {"/".join(k): v for k, v in flatten_dict(specs).items()}


def axes_of(entry) -> tuple:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


# ---------------------------------------------------------------------------------------------- rules (in-process)
VARIANTS = [
    ("mlstm_v1", {}),
    ("mlstm_v1", {"scan_blocks": True, "tie_word_embeddings": True, "bias": True, "add_qk_norm": True}),
    ("mlstm_v1", {"add_post_norm": True, "ff_type": "ffn", "num_heads": 4}),
    ("mlstm", {}),
    ("mlstm", {"scan_blocks": True, "ff_type": "ffn_gated", "bias": True, "add_qk_norm": True}),
    ("mlstm", {"vmap_qk": True, "gate_linear_headwise": True, "v_dim_factor": 0.5, "add_post_norm": True}),
    ("mlstm", {"gate_input": "x_mlstm_conv_act", "scan_blocks": True, "vmap_qk": True, "bias": True}),
]


@pytest.mark.parametrize("layer_type,overrides", VARIANTS)
def test_rules_cover_every_param_with_valid_specs(layer_type, overrides):
    """Every param of every layer variant gets a spec: one entry per dim, each axis once, each dividing its dim,
    multi-axis entries in mesh order (jax 0.10.2's Shardy miscomputes grads otherwise, see sharding.py), the
    scanned block axis unsharded, never the data axis; and the rules do shard (tensor and fsdp both used)."""
    overrides = dict(overrides)
    config = tiny_config(layer_type, num_heads=overrides.pop("num_heads", 8), **overrides)
    shapes = {"/".join(k): v.shape for k, v in flatten_dict(param_shapes(config)).items()}
    specs = flat_specs(config, SIZES_222)
    assert specs.keys() == shapes.keys()
    used = set()
    for path, spec in specs.items():
        shape = shapes[path]
        assert len(spec) == len(shape), path
        axes = [a for e in spec for a in axes_of(e)]
        assert len(axes) == len(set(axes)), (path, spec)
        assert "data" not in axes, (path, spec)
        for entry, dim in zip(spec, shape):
            assert dim % math.prod(SIZES_222[a] for a in axes_of(entry)) == 0, (path, spec, shape)
            order = [sh.AXES.index(a) for a in axes_of(entry)]
            assert order == sorted(order), (path, spec)
        if "scanned" in path:
            assert spec[0] is None, (path, spec)
        used.update(axes)
    assert used == {"fsdp", "tensor"}


def test_rules_head_layout_mlstm_v1():
    """mlstm_v1, 8 heads on tensor=2: q/k/v/o and gates column-wise (heads), out_proj row-wise, norms as stated."""
    specs = flat_specs(tiny_config("mlstm_v1", num_heads=8), SIZES_222)
    layer = "backbone/blocks/1/mlstm_layer/"
    for name in ("q", "k", "v", "ogate_preact", "igate_preact", "fgate_preact"):
        assert specs[layer + name + "/kernel"] == P("fsdp", "tensor"), name
    assert specs[layer + "igate_preact/bias"] == P("tensor")
    assert specs[layer + "out_proj/kernel"] == P("tensor", "fsdp")
    assert specs[layer + "multihead_norm/scale"] == P("tensor")
    assert specs["backbone/blocks/1/ffn/proj_up_gate/kernel"] == P("fsdp", "tensor")
    assert specs["backbone/blocks/1/ffn/proj_down/kernel"] == P("tensor", "fsdp")
    assert specs["backbone/blocks/1/norm_mlstm/scale"] == P(None)
    # vocab 97 divides nothing: the embedding and the head fall back to the feature dim
    assert specs["backbone/embeddings/embedding"] == P(None, ("fsdp", "tensor"))
    assert specs["lm_head/kernel"] == P(("fsdp", "tensor"), None)
    # a vocabulary that divides: vocab-parallel embedding and column-parallel head
    specs = flat_specs(tiny_config("mlstm_v1", num_heads=8, vocab_size=96), SIZES_222)
    assert specs["backbone/embeddings/embedding"] == P("tensor", "fsdp")
    assert specs["lm_head/kernel"] == P("fsdp", "tensor")


def test_rules_head_layout_mlstm_scanned():
    """mlstm with scan_blocks, fsdp=2, tensor=4: the up-projection/conv/headwise chain split by channel block on
    tensor, leading block axis None."""
    config = tiny_config("mlstm", num_heads=8, scan_blocks=True, bias=True)
    specs = flat_specs(config, {"fsdp": 2, "tensor": 4})
    layer = "backbone/blocks/scanned/block/mlstm_layer/"
    assert specs[layer + "proj_up_mlstm/kernel"] == P(None, "fsdp", "tensor")
    assert specs[layer + "proj_up_mlstm/bias"] == P(None, "tensor")
    assert specs[layer + "conv1d/kernel"] == P(None, None, "tensor")
    assert specs[layer + "q_proj/kernel"] == P(None, "tensor", None, None)  # tiny: never fsdp (see the module)
    assert specs[layer + "v_proj/bias"] == P(None, "tensor")
    assert specs[layer + "learnable_skip"] == P(None, "tensor")
    assert specs[layer + "out_proj/kernel"] == P(None, "tensor", "fsdp")
    assert specs[layer + "out_proj/bias"] == P(None, None)
    assert specs[layer + "igate_preact/kernel"] == P(None, "fsdp", "tensor")
    headwise = flat_specs(tiny_config("mlstm", num_heads=8, gate_linear_headwise=True), {"tensor": 2})
    assert headwise["backbone/blocks/0/mlstm_layer/fgate_preact/kernel"] == P("tensor", None, None)


def test_rules_fallbacks_and_errors():
    # heads that do not divide the tensor axis: the mLSTM layer is replicated on tensor, the feedforward is not
    specs = flat_specs(tiny_config("mlstm_v1", num_heads=2), {"tensor": 8})
    assert specs["backbone/blocks/0/mlstm_layer/q/kernel"] == P("fsdp", None)
    assert specs["backbone/blocks/0/mlstm_layer/out_proj/kernel"] == P(None, "fsdp")
    assert specs["backbone/blocks/0/ffn/proj_up/kernel"] == P("fsdp", "tensor")
    assert not sh.is_head_parallel(tiny_config("mlstm_v1", num_heads=2), {"tensor": 8})
    # mlstm also needs the projection blocks to divide: 128 / blocksize 32 = 4 blocks on tensor=8 -> no
    assert not sh.is_head_parallel(tiny_config("mlstm", num_heads=8, qkv_proj_blocksize=32), {"tensor": 8})
    # upstream's fsdp_min_weight_size: small params are not FSDP-sharded (tiny params are all below 2**18)
    specs = flat_specs(tiny_config("mlstm_v1", num_heads=8), SIZES_222, fsdp_min=2**18)
    assert all("fsdp" not in [a for e in s for a in axes_of(e)] for s in specs.values())
    assert specs["backbone/blocks/0/mlstm_layer/q/kernel"] == P(None, "tensor")
    specs = flat_specs(tiny_config("mlstm_v1", num_heads=8), SIZES_222, fsdp_min=64 * 32)
    assert specs["backbone/blocks/0/mlstm_layer/q/kernel"] == P("fsdp", "tensor")  # exactly at the threshold
    assert specs["backbone/blocks/0/mlstm_layer/igate_preact/kernel"] == P(None, "tensor")
    assert sh.fit_spec(("tensor", ("fsdp", "tensor")), (6, 4), {"fsdp": 2, "tensor": 4}) == P(None, "fsdp")
    with pytest.raises(ValueError, match="not in the param table"):
        sh.param_partition_spec("backbone/blocks/0/mlstm_layer/new_thing/kernel", (4, 4), tiny_config(), SIZES_222)


def test_cache_specs_follow_heads_and_batch():
    for layer_type, scan in (("mlstm_v1", False), ("mlstm", True)):
        config = tiny_config(layer_type, num_heads=8, scan_blocks=scan)
        model = FlaxXLSTMForCausalLM(config, _do_init=False)
        cache = jax.eval_shape(lambda: model.init_cache(8))
        specs = sh.cache_partition_specs(cache, config, SIZES_222)
        one = specs if scan else specs[0]
        lead = (("data", "fsdp"), None) if scan else (("data", "fsdp"),)
        assert one["c"] == P(*lead, "tensor", None, None)
        assert one["n"] == P(*lead, "tensor", None)
        assert one["m"] == P(*lead, "tensor")
        if layer_type == "mlstm":
            assert one["conv"] == P(*lead, None, "tensor")
        # batch 3 does not divide data*fsdp=4: the batch axis is replicated, heads still split
        odd = sh.cache_partition_specs(jax.eval_shape(lambda: model.init_cache(3)), config, SIZES_222)
        assert (odd if scan else odd[0])["m"] == P(*((None,) * len(lead)), "tensor")


def test_parallel_config_mapping_and_mesh_errors():
    upstream = {"data_axis_size": -1, "fsdp_axis_size": 1, "pipeline_axis_size": 1, "model_axis_size": 1,
                "data_axis_name": "dp", "fsdp_axis_name": "fsdp", "model_axis_name": "tp",
                "fsdp_min_weight_size": 4096, "remat": (), "tp_async_dense": True}
    mesh, kwargs = sh.mesh_from_parallel_config(upstream)
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    assert kwargs == {"fsdp_min_weight_size": 4096}
    assert set(sh.PARALLEL_CONFIG_MAPPING) >= set(upstream)
    with pytest.raises(ValueError, match="pipeline"):
        sh.mesh_from_parallel_config(dict(upstream, pipeline_axis_size=2))
    with pytest.raises(ValueError, match="needs"):
        sh.make_mesh(data=jax.device_count() + 1)
    with pytest.raises(ValueError, match="at most one"):
        sh.make_mesh(data=-1, tensor=-1)


def test_loader_checks_names_and_shapes(tmp_path):
    """One device is enough for the loader's bookkeeping: a missing tensor and a config whose shapes differ from
    the stored ones are errors naming the param, not silently wrong arrays."""
    from safetensors.numpy import load_file, save_file

    config = tiny_config("mlstm_v1", num_blocks=1)
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    params = jax.jit(lambda r: model.init_weights(r, (1, 1)))(jax.random.PRNGKey(0))
    model.save_pretrained(tmp_path / "ok", params=params)
    mesh = sh.make_mesh(devices=jax.devices()[:1])
    loaded = sh.load_sharded_params(str(tmp_path / "ok"), model, mesh)
    assert all(a.sharding.mesh == mesh for a in jax.tree_util.tree_leaves(loaded))
    wider = FlaxXLSTMForCausalLM(tiny_config("mlstm_v1", num_blocks=1, vocab_size=98), _do_init=False)
    with pytest.raises(ValueError, match="embeddings/embedding: has \\(97, 64\\), the config needs \\(98, 64\\)"):
        sh.load_sharded_params(str(tmp_path / "ok"), wider, mesh)
    tensors = load_file(str(tmp_path / "ok" / "model.safetensors"))
    del tensors["backbone.blocks.0.mlstm_layer.q.kernel"]
    (tmp_path / "gap").mkdir()
    save_file(tensors, str(tmp_path / "gap" / "model.safetensors"))
    with pytest.raises(ValueError, match="1 missing tensors:\n    backbone/blocks/0/mlstm_layer/q/kernel"):
        sh.load_sharded_params(str(tmp_path / "gap"), model, mesh)


# ---------------------------------------------------------------------------------------------- 8 devices
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """Run tests/sharding_checks.py once with 8 host CPU devices, and beside it (on the other core: compiling is
    mostly single-threaded) tests/sharding_multihost.py's two jax.distributed processes; their JSON results."""
    tmp = tmp_path_factory.mktemp("sharding")
    out = tmp / "results.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=8", *FAST_XLA_FLAGS,
                                 "--xla_llvm_disable_expensive_passes=true"])
    env["JAX_PLATFORMS"] = "cpu"
    env.update(NO_TORCH)
    hosts_dir = tmp / "multihost"
    hosts = subprocess.Popen([sys.executable, str(HERE / "sharding_multihost.py"), str(hosts_dir), str(free_port())],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc = subprocess.run([sys.executable, str(HERE / "sharding_checks.py"), str(out), str(tmp)], env=env,
                              capture_output=True, text=True, timeout=900)
        _, hosts_err = hosts.communicate(timeout=600)
    finally:
        if hosts.poll() is None:
            hosts.kill()
    if proc.returncode != 0 or not out.is_file():
        pytest.fail(f"sharding_checks.py failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    results = json.loads(out.read_text())
    result_file = hosts_dir / "result.json"
    results["multihost"] = (json.loads(result_file.read_text()) if result_file.is_file()
                            else {"error": hosts_err[-6000:]})
    return results


CASES = {  # case/mesh -> checks beyond forward (must match sharding_checks.main); every check runs on a mesh with
    # tensor parallelism (1x1x8 or 2x2x2) for each layout, data parallelism is the forward on 8x1x1; mlstm_v1 has
    # vocab 96 (the vocabulary-parallel embedding lookup), the others 97 (not divisible: the table's rows replicated)
    "mlstm_v1/8x1x1": set(),
    "mlstm_v1/2x2x2": {"grad", "generate", "cache"},
    "mlstm_v1/1x1x8": {"grad"},
    "mlstm_scan/2x2x2": {"grad"},
    "mlstm_scan/1x1x8": {"generate", "cache"},
    "mlstm_v1_scan/1x4x2": set(),
    "mlstm_2heads/1x1x8": set(),
    # NX-AI library mixed [mLSTM, sLSTM] model, 4 heads: 2 per tensor shard, then one per shard
    "slstm_mixed/2x2x2": {"generate", "cache"},
    "slstm_mixed/1x2x4": set(),
}


def test_subprocess_had_eight_devices(multi):
    assert multi["device_count"] == 8
    assert {k for k in multi if "/" in k} == set(CASES)
    assert set(multi["collectives"]) == {"mlstm_v1/1x1x8", "mlstm_headwise_gates/1x1x8", "mlstm_v1/2x2x2"}
    assert "embedding" in multi


@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_forward_equals_single_device(multi, case):
    r = multi[case]
    assert set(r["checks"]) == CASES[case]
    assert r["sharding_mismatches"] == []  # every param's .sharding is NamedSharding(mesh, rule spec)
    assert r["logits_diff"] <= TOL
    assert r["logits_spec"].startswith("P(('data', 'fsdp')")


@pytest.mark.parametrize("case", sorted(c for c, checks in CASES.items() if "grad" in checks))
def test_sharded_loss_and_grad_equal_single_device(multi, case):
    r = multi[case]
    assert r["loss_diff"] <= TOL
    assert r["grad_diff"] <= TOL
    assert r["grad_scale"] > 1e-2  # the gradients compared are not trivially zero
    assert r["grad_sharding_mismatches"] == []  # grads come back sharded like the params


@pytest.mark.parametrize("case", sorted(c for c, checks in CASES.items() if "generate" in checks))
def test_sharded_generate_gives_the_same_tokens(multi, case):
    r = multi[case]
    assert r["tokens_shape"] == [8, 12]
    assert r["tokens_equal"]
    assert r["distinct_new_tokens"] > 5  # not a degenerate repeat of one token


@pytest.mark.parametrize("case", sorted(c for c, checks in CASES.items() if "cache" in checks))
def test_sharded_cache_prefill_and_step(multi, case):
    r = multi[case]
    assert r["init_cache_bad_specs"] == [] and r["cache_bad_specs"] == []
    assert r["cache_logits_diff"] <= TOL
    assert r["cache_diff"] <= TOL
    assert all(spec.startswith("P(('data', 'fsdp')") and "'tensor'" in spec for spec in r["cache_specs"])


def test_shard_shapes_are_what_the_rules_mean(multi):
    """Independent of the rule code: the local shard shapes on the devices, written out by hand."""
    v1 = multi["mlstm_v1/2x2x2"]["table"]
    layer = "backbone/blocks/0/mlstm_layer/"
    assert v1[layer + "q/kernel"]["shard"] == [32, 16]  # (64, 32): fsdp 2 x tensor 2
    assert v1[layer + "igate_preact/kernel"]["shard"] == [32, 4]  # 8 heads -> 4 per tensor shard
    assert v1[layer + "out_proj/kernel"]["shard"] == [32, 32]
    assert v1[layer + "multihead_norm/scale"]["shard"] == [32]
    assert v1["backbone/blocks/0/ffn/proj_down/kernel"]["shard"] == [96, 32]
    assert v1["backbone/blocks/0/norm_mlstm/scale"]["shard"] == [64]
    scan = multi["mlstm_scan/1x1x8"]["table"]
    layer = "backbone/blocks/scanned/block/mlstm_layer/"
    assert scan[layer + "q_proj/kernel"]["shard"] == [2, 4, 4, 4]  # 32 projection blocks / 8
    assert scan[layer + "conv1d/kernel"]["shard"] == [2, 4, 16]
    assert scan[layer + "fgate_preact/kernel"]["shard"] == [2, 384, 1]  # one head per device
    assert scan[layer + "out_proj/kernel"]["shard"] == [2, 16, 64]
    two = multi["mlstm_2heads/1x1x8"]["table"]
    assert two["backbone/blocks/0/mlstm_layer/q_proj/kernel"]["shard"] == [32, 4, 4]  # not head-parallel
    assert two["backbone/embeddings/embedding"]["shard"] == [97, 8]


def test_library_folder_with_slstm_blocks_loads_into_mesh(multi):
    """`from_pretrained_sharded` of an NX-AI `xlstm` library folder (Distil-xLSTM layout, vanilla storage): the same
    params as the host `from_pretrained`, each sharded by the rules, the library's logits on the mesh; the sLSTM
    heads (4) on the tensor axis: shard shapes written out by hand; the sLSTM cache batch x heads sharded."""
    r = multi["slstm_loading"]
    for mesh, heads in (("2x2x2", 2), ("1x2x4", 1)):
        m = r[f"mixed/{mesh}"]
        assert m["slstm_at"] == [1] and m["diff"] == 0.0 and m["sharding_mismatches"] == [], mesh
        layer = "backbone/blocks/1/slstm_layer/"
        assert m["table"][layer + "recurrent_kernel"]["shard"] == [heads, 8, 32], mesh  # (NH 4, DH 8, 4 DH)
        assert m["table"][layer + "igate/kernel"]["shard"] == [heads, 8, 8], mesh
        assert m["table"][layer + "bias"]["shard"] == [heads, 4, 8], mesh
        assert m["table"][layer + "group_norm/scale"]["shard"] == [heads * 8], mesh
        assert m["slstm_cache_bad_specs"] == [], mesh
        batch = 2 if mesh == "2x2x2" else 4  # B 8 over data x fsdp = 4 (2x2x2) or 2 (1x2x4)
        for leaf in "ycnm":
            assert m["slstm_cache"][leaf]["shard"] == [batch, heads, 8], (mesh, leaf)
    assert r["mixed/2x2x2"]["library_logits_diff"] <= TOL
    scan = r["slstm_scan/2x2x2"]  # the sLSTM-only fixture (tied) into a scan_blocks model
    assert scan["scan_blocks"] and scan["diff"] == 0.0 and scan["sharding_mismatches"] == []


def test_sharded_train_step(multi):
    r = multi["train_step"]
    assert r["changed"] > 1e-2  # the step moved the params
    assert r["param_diff"] <= TOL and r["loss_diff"] <= TOL
    assert r["param_sharding_mismatches"] == [] and r["trace_sharding_mismatches"] == []


def test_load_into_mesh_tensor_by_tensor(multi):
    r = multi["loading"]
    assert r["flax_diff"] == 0.0 and r["flax_sharding_mismatches"] == []
    assert r["q_read_bytes"] == [r["q_full_bytes"] // 8]  # each device read its eighth of the tensor, no more
    assert r["max_read_fraction"] < 0.05  # no read came near the whole model
    assert r["indexed_diff"] == 0.0 and r["indexed_dtypes"] == ["bfloat16"]
    assert r["indexed_sharding_mismatches"] == [] and r["indexed_logits_diff"] <= TOL
    assert r["pt_scan_diff"] == 0.0 and r["pt_scan_sharding_mismatches"] == []
    assert r["scan_to_unrolled_diff"] == 0.0 and r["scan_to_unrolled_sharding_mismatches"] == []
    assert r["init_diff"] == 0.0 and r["init_sharding_mismatches"] == []


def test_tensor_parallel_keeps_each_heads_cell_local(multi):
    """Compiled 1-block forward on tensor=8 (vocab 96): the only collectives are the row-parallel all-reduces
    after out_proj (and proj_down) and the vocab-parallel embedding lookup - nothing inside the mLSTM cell."""
    for case, allowed in (("mlstm_v1/1x1x8", {"mlstm_layer/out_proj", "ffn/proj_down", EMBEDDING_PSUM}),
                          ("mlstm_headwise_gates/1x1x8", {"mlstm_layer/out_proj", EMBEDDING_PSUM})):
        found = multi["collectives"][case]
        assert "all-reduce backbone/blocks/0/mlstm_layer/out_proj/dot_general" in found, case
        assert all(any(a in f for a in allowed) for f in found), (case, found)
        assert not [f for f in found if f.startswith("all-gather")], (case, found)


# the all-reduce of `sharding.vocab_parallel_take` (its psum inside shard_map: jax names it psum_invariant in 0.10)
EMBEDDING_PSUM = "all-reduce backbone/embeddings/shard_map/"


def test_vocab_parallel_embedding_lookup(multi):
    """Where the vocabulary divides `tensor`, each shard looks up its own rows and one psum adds them
    (`sharding.vocab_parallel_take`): a bare `nn.Embed` on tensor 8, 2 and 4 (with data and fsdp) equals the unsharded
    lookup exactly, in its compute dtype (float32, bfloat16), and so does the table's gradient; ids outside the
    vocabulary are clamped, as the backbone clamps them (the mlstm_v1 cases above: vocab 96, the whole model through
    this path). A batch-1 decode step on 1x1x8 all-gathers nothing (XLA:GPU gathered the whole 412 MB table of the 7B
    there every step: tests/test_aot.py compiles that case for 8 H200s) and, fed out-of-range ids, gives the logits
    and cache of the single-device step on the clamped ids."""
    r = multi["embedding"]
    for dtype in ("float32", "bfloat16"):
        for mesh in ("1x1x8", "2x2x2", "1x2x4"):
            e = r[f"{dtype}/{mesh}"]
            assert e["diff"] == 0.0 and e["grad_diff"] == 0.0, (dtype, mesh, e)
            assert e["dtype"] == e["ref_dtype"] == dtype, (dtype, mesh, e)
    decode = r["decode_b1/1x1x8"]
    assert not [f for f in decode["collectives"] if f.startswith("all-gather")], decode
    assert [f for f in decode["collectives"] if f.startswith(EMBEDDING_PSUM)], decode
    assert len(decode["diffs"]) == 4 and max(decode["diffs"]) <= TOL, decode


def test_fsdp_gathers_weights_not_activations(multi):
    """On 2x2x2 the block inputs stay batch-sharded (`activation_sharding`): weights are all-gathered over fsdp,
    the only all-reduces are tensor parallelism's (the two row-parallel projections, and the vocabulary-parallel
    embedding lookup: the table keeps its vocabulary split over `tensor` once its fsdp dim is gathered, so each
    device looks up its own rows and one all-reduce sums them, instead of XLA rematerialising the lookup in full),
    and no norm has to all-reduce feature-sharded activations. The table is gathered over fsdp only (its
    vocabulary stays split), as FSDP gathers every weight where it is used."""
    found = multi["collectives"]["mlstm_v1/2x2x2"]
    for name in ("mlstm_layer/q/", "mlstm_layer/out_proj/", "ffn/proj_up/"):
        assert any(f.startswith("all-gather") and name in f for f in found), (name, found)
    assert not [f for f in found if "norm" in f], found
    reduces = {f for f in found if f.startswith("all-reduce")}
    embedding = {f for f in reduces if f.startswith(EMBEDDING_PSUM)}
    assert len(embedding) == 1 and reduces - embedding == {
        "all-reduce backbone/blocks/0/mlstm_layer/out_proj/dot_general",
        "all-reduce backbone/blocks/0/ffn/proj_down/dot_general"}, found
    # the table (96, 64), stored (tensor, fsdp): FSDP gathers its feature dim, never its vocabulary
    assert multi["embedding_gathers_2x2x2"] == ["f32[48,64]"], multi["embedding_gathers_2x2x2"]


def test_two_processes_with_jax_distributed(multi):
    """Multi-host in miniature: 2 processes x 4 CPU devices joined by jax.distributed.initialize into one
    (2, 2, 2) mesh; each loads only its own shards, and the gathered logits equal a single-device run."""
    r = multi["multihost"]
    assert r.get("returncodes") == [0, 0], r.get("error", r)
    assert len(r["results"]) == 2
    for res in r["results"]:
        assert res["process_count"] == 2 and res["global_devices"] == 8 and res["local_devices"] == 4
        assert res["params_fully_addressable"] is False  # really spread over both processes
        assert res["local_shards_per_param"] == [4]
        assert res["logits_diff"] <= TOL
