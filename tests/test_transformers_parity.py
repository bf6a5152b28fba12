"""Parity with transformers' PyTorch `xLSTMForCausalLM` (the NX-AI/xLSTM-7b layout), float32, tolerance 1e-4.

transformers 4.57.6's PyTorch chunkwise kernel fails once a sequence reaches its chunk size, so the reference runs
with chunk_size=128 and sequences shorter than that; hidden_size * qk_dim_factor is a multiple of 64 (its cache
rounds to 64).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import max_abs_diff  # noqa: E402

TOL = 1e-4


def make_pt_model(tmp_path, tie=False, seed=0):
    from transformers import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(seed)
    config = xLSTMConfig(vocab_size=101, hidden_size=128, num_hidden_layers=2, num_heads=2, qk_dim_factor=0.5,
                         chunk_size=128, mode="inference", autocast_kernel_dtype="float32", dtype="float32",
                         tie_word_embeddings=tie)
    model = xLSTMForCausalLM(config).eval()
    with torch.no_grad():  # perturb every weight (several init to constants) so each one matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    if tie:  # transformers' xLSTM declares no tied-weight keys, so its save_pretrained refuses safetensors for a
        # tied model; safetensors' save_model stores the shared tensor once (what the .bin error message advises)
        from safetensors.torch import save_model

        model.config.save_pretrained(tmp_path)
        save_model(model, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_from_pt_logits_match(tmp_path, tie):
    from transformers import FlaxAutoModelForCausalLM

    import modeling_xlstm_flax

    modeling_xlstm_flax.register_auto_classes()  # our classes in transformers' auto classes

    pt = make_pt_model(tmp_path, tie=tie)
    flax_model = FlaxAutoModelForCausalLM.from_pretrained(tmp_path, from_pt=True)
    assert flax_model.config.tie_word_embeddings == tie
    for seq_len in (1, 17, 100):
        ids = np.random.RandomState(seq_len).randint(0, 101, (2, seq_len))
        with torch.no_grad():
            ref = pt(torch.tensor(ids)).logits.numpy()
        assert max_abs_diff(flax_model(ids).logits, ref) <= TOL


def test_from_pt_works_without_torch_in_model_path(tmp_path):
    """The model path imports no torch: loading PyTorch-layout safetensors uses safetensors' numpy reader."""
    import subprocess
    import sys

    make_pt_model(tmp_path)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "import modeling_xlstm_flax, numpy as np\n"
        "modeling_xlstm_flax.register_auto_classes()\n"
        "from transformers import FlaxAutoModelForCausalLM\n"
        f"m = FlaxAutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, from_pt=True)\n"
        "print(m(np.ones((1, 4), 'i4')).logits.shape)\n"
    )
    # run outside the repo so the installed package (not the source folder) is imported
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 4, 101)" in result.stdout


def test_config_translation_round_trip():
    from transformers import xLSTMConfig

    from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config, to_transformers_config

    pt_config = xLSTMConfig(vocab_size=50304, hidden_size=4096, num_hidden_layers=32, num_heads=8)
    ours = from_transformers_config(pt_config)
    assert (ours.embedding_dim, ours.num_blocks, ours.qk_dim, ours.v_dim, ours.ff_dim) == (4096, 32, 2048, 4096, 10944)
    assert (ours.gate_soft_cap, ours.logits_soft_cap, ours.cell_norm_type_v1) == (15.0, 30.0, "layernorm")
    back = to_transformers_config(ours)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "qk_dim_factor", "v_dim_factor",
                  "norm_eps", "gate_soft_cap", "output_logit_soft_cap", "ffn_proj_factor", "chunk_size", "eps",
                  "tie_word_embeddings", "add_out_norm", "pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(back, field) == getattr(pt_config, field), field
    assert from_transformers_config(back).to_dict() == ours.to_dict()


def test_feedforward_width_survives_translation():
    """transformers floors a fractional hidden x ffn_proj_factor where upstream (and we) ceil: 768 x 2.667 builds
    2048 there and 2112 here. Each translation converts the factor so the width is the same on both sides."""
    from transformers import xLSTMConfig

    from modeling_xlstm_flax import load_preset
    from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config, to_transformers_config

    from transformers.models.xlstm.modeling_xlstm import xLSTMFeedForward

    def torch_width(pt_config):  # the width transformers' PyTorch feedforward really builds
        return xLSTMFeedForward(pt_config).proj_up.out_features

    ours = load_preset("xlstm-160m")
    assert ours.ff_dim == 2112
    assert torch_width(to_transformers_config(ours)) == 2112
    pt_config = xLSTMConfig(vocab_size=64, hidden_size=768, num_hidden_layers=1, num_heads=4, ffn_proj_factor=2.667)
    assert from_transformers_config(pt_config).ff_dim == torch_width(pt_config) == 2048


@pytest.mark.parametrize(
    "field,value",
    [("layer_type", "mlstm"), ("add_qk_norm", True), ("ff_act_fn", "gelu"), ("block_norm_type", "layernorm"),
     ("block_norm_eps", 1e-5)],
)
def test_untranslatable_to_transformers_is_an_error(field, value):
    from modeling_xlstm_flax import load_preset
    from modeling_xlstm_flax.configuration_xlstm_flax import to_transformers_config

    overrides = {field: value}
    if field == "layer_type":
        overrides.update(qk_dim_factor=1.0)
    config = load_preset("xlstm-160m", **overrides)
    with pytest.raises(ValueError, match=field):
        to_transformers_config(config)


@pytest.mark.parametrize("field,value", [("use_bias", True), ("weight_mode", "fused"),
                                         ("inference_state_dtype", "bfloat16")])
def test_untranslatable_from_transformers_is_an_error(field, value):
    from transformers import xLSTMConfig

    from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config

    with pytest.raises(ValueError, match=field):
        from_transformers_config(xLSTMConfig(hidden_size=128, num_heads=2, **{field: value}))


def test_sharded_pytorch_checkpoint_loads(tmp_path):
    """NX-AI/xLSTM-7b ships sharded safetensors, which transformers 4.57's Flax loader cannot read; ours streams
    them (PyTorch layout, with or without from_pt=True)."""
    from transformers import FlaxAutoModelForCausalLM, xLSTMConfig, xLSTMForCausalLM

    import modeling_xlstm_flax

    modeling_xlstm_flax.register_auto_classes()

    torch.manual_seed(3)
    config = xLSTMConfig(vocab_size=101, hidden_size=128, num_hidden_layers=2, num_heads=2, chunk_size=128,
                         autocast_kernel_dtype="float32", dtype="float32")
    pt = xLSTMForCausalLM(config).eval()
    pt.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    ids = np.random.RandomState(3).randint(0, 101, (2, 20))
    with torch.no_grad():
        ref = pt(torch.tensor(ids)).logits.numpy()
    for kwargs in ({}, {"from_pt": True}):
        flax_model = FlaxAutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
        assert max_abs_diff(flax_model(ids).logits, ref) <= TOL
