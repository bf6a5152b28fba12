"""The recurrent cache and transformers' Flax generation loop (greedy, sampling, beam search)."""

import contextlib

import jax
import numpy as np
import pytest

from conftest import FIXTURES, assert_left_padded_generation_is_per_prompt, load_fixture, max_abs_diff, tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM


@contextlib.contextmanager
def compiles():
    """The XLA programs built inside the block, by function name (jax.monitoring's backend-compile event: once per
    new program, a hit of the persistent compilation cache included; a program reused from a jit's cache builds
    nothing)."""
    built = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            built.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield built
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def no_eos_config(layer_type="mlstm_v1", **overrides):
    """Tiny config without an end-of-sequence id, so generation always runs to max_new_tokens (transformers' Flax
    loop, the reference, needs an eos id: `flax_no_eos` gives it one no logit can produce)."""
    config = tiny_config(layer_type, **overrides)
    config.eos_token_id = None
    return config


def flax_no_eos(model) -> dict:
    """For transformers' Flax loop (the test oracle) on a `no_eos_config` model: an eos id outside the vocabulary."""
    return {"eos_token_id": model.config.vocab_size}


def _cached_forward(model):
    """model(ids, past_key_values=cache) jit-compiled: (params, ids, cache) -> (logits, new cache)."""

    @jax.jit
    def forward(params, ids, cache):
        out = model(ids, params=params, past_key_values=cache)
        return out.logits, out.past_key_values

    return forward


def _stepwise_logits(model, ids, params=None, prefill=0):
    """Logits of `ids` fed through the cache: a prefill chunk of `prefill` tokens, then one token per call."""
    params = model.params if params is None else params
    forward = _cached_forward(model)
    cache = model.init_cache(ids.shape[0], ids.shape[1])
    outs = []
    start = 0
    if prefill:
        logits, cache = forward(params, ids[:, :prefill], cache)
        outs.append(np.asarray(logits))
        start = prefill
    for t in range(start, ids.shape[1]):
        logits, cache = forward(params, ids[:, t : t + 1], cache)
        outs.append(np.asarray(logits))
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
@pytest.mark.parametrize("scan_blocks", [False, True])
def test_token_by_token_equals_full_sequence(layer_type, scan_blocks):
    model = FlaxXLSTMForCausalLM(tiny_config(layer_type, scan_blocks=scan_blocks, chunk_size=8), seed=0)
    ids = np.random.RandomState(0).randint(0, 97, (2, 24))
    full = np.asarray(model(ids).logits)
    assert max_abs_diff(_stepwise_logits(model, ids), full) <= 1e-4
    assert max_abs_diff(_stepwise_logits(model, ids, prefill=11), full) <= 1e-4  # chunk continuation


@pytest.mark.parametrize("name", ["v1", "v2_ffn"])
def test_token_by_token_matches_upstream_logits(name):
    """Upstream's parallel logits reproduced step by step; for v1 also upstream's own step logits. (Upstream's
    mlstm/v2 stepping is wrong - its cache has no conv window - so v2 compares with the parallel logits.)"""
    config, params, inputs, logits = load_fixture(name)
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    steps = _stepwise_logits(model, inputs, params=params)
    assert max_abs_diff(steps, logits) <= 1e-4
    if name == "v1":
        assert max_abs_diff(steps, np.load(FIXTURES / name / "step_logits.npy")) <= 1e-4


@pytest.mark.parametrize("name", ["v1", "v2_ffn"])
def test_segmented_prefill_matches_upstream_logits(name):
    """A cached prefill run in segments (here 2 leading tokens, then 6 segments of 5 through `lax.scan`) gives
    upstream's logits; `logits_to_keep` keeps the last rows; the state equals a one-pass prefill's."""
    config, params, inputs, logits = load_fixture(name, prefill_segment_size=5, chunk_size=4)
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    out = model(inputs, params=params, past_key_values=model.init_cache(inputs.shape[0]))
    assert max_abs_diff(out.logits, logits) <= 1e-4
    last = model(inputs, params=params, past_key_values=model.init_cache(inputs.shape[0]), logits_to_keep=3)
    assert last.logits.shape == (inputs.shape[0], 3, config.vocab_size)
    assert max_abs_diff(last.logits, logits[:, -3:]) <= 1e-4
    one_pass = FlaxXLSTMForCausalLM(load_fixture(name, prefill_segment_size=None, chunk_size=4)[0], _do_init=False)
    ref = one_pass(inputs, params=params, past_key_values=one_pass.init_cache(inputs.shape[0]))
    for a, b in zip(jax.tree_util.tree_leaves(last.past_key_values), jax.tree_util.tree_leaves(ref.past_key_values)):
        assert max_abs_diff(a, b) <= 1e-4 * max(1.0, float(np.max(np.abs(b))))


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
def test_segmented_prefill_with_padding_and_borders(layer_type):
    """Left padding and document resets cross segment edges: same logits and greedy tokens as one pass."""
    overrides = dict(chunk_size=4, reset_at_document_boundaries=True)
    segmented = FlaxXLSTMForCausalLM(no_eos_config(layer_type, prefill_segment_size=6, **overrides), seed=6)
    one_pass = FlaxXLSTMForCausalLM(no_eos_config(layer_type, prefill_segment_size=None, **overrides),
                                    _do_init=False)
    rng = np.random.RandomState(6)
    ids = rng.randint(3, 97, (2, 23))
    mask = np.ones_like(ids)
    mask[1, :8] = 0
    borders = np.zeros(ids.shape, bool)
    borders[:, 13] = True
    got = segmented(ids, attention_mask=mask, document_borders=borders, past_key_values=segmented.init_cache(2))
    want = one_pass(ids, attention_mask=mask, document_borders=borders, past_key_values=one_pass.init_cache(2),
                    params=segmented.params)
    assert max_abs_diff(got.logits, want.logits) <= 1e-4
    kwargs = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=1)
    np.testing.assert_array_equal(np.asarray(segmented.generate(ids, **kwargs).sequences),
                                  np.asarray(one_pass.generate(ids, params=segmented.params, **kwargs).sequences))


def test_logits_to_keep_checked_and_used_by_generate():
    model = FlaxXLSTMForCausalLM(no_eos_config(), seed=7)
    ids = np.random.RandomState(7).randint(3, 97, (2, 9))
    full = np.asarray(model(ids).logits)
    assert max_abs_diff(model(ids, logits_to_keep=2).logits, full[:, -2:]) <= 1e-5
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, logits_to_keep=bad)
    from modeling_xlstm_flax import FlaxXLSTMModel

    with pytest.raises(ValueError, match="logits_to_keep=1 needs a model with an LM head"):
        FlaxXLSTMModel(model.config, _do_init=False)(ids, params=model.params["backbone"], logits_to_keep=1)
    # a one-token prompt runs inside transformers' while_loop from the start (no logits_to_keep in its carry)
    for kwargs in ({}, {"do_sample": True, "prng_key": jax.random.PRNGKey(0)}, {"num_beams": 2}):
        out = np.asarray(model.generate(ids[:, :1], max_new_tokens=4, pad_token_id=1, **kwargs).sequences)
        assert out.shape == (2, 5)


def test_generate_is_compiled_once_and_equals_transformers_loop():
    """Outside a trace, `generate` runs through a jit kept per model and arguments: same outputs as transformers'
    own (eager) `generate` (transformers 4.x; 5.x has no Flax loop), one compiled program for repeated calls of one
    shape, a new one per argument set; inside a trace it runs as is, with the same tokens."""
    from flax_oracle import flax_oracle

    model = FlaxXLSTMForCausalLM(no_eos_config(), seed=8)
    prompt = np.random.RandomState(8).randint(3, 97, (2, 5))
    mask = np.ones_like(prompt)
    mask[1, :2] = 0
    for kwargs in ({"max_new_tokens": 6}, {"max_new_tokens": 6, "attention_mask": mask},
                   {"max_new_tokens": 6, "do_sample": True, "top_k": 5, "prng_key": jax.random.PRNGKey(4)},
                   {"max_new_tokens": 6, "num_beams": 3, "attention_mask": mask}):
        with compiles() as built:
            ours = model.generate(prompt, pad_token_id=1, **kwargs)
        assert built, f"{kwargs}: a new argument set builds its program"
        with compiles() as built:
            again = model.generate(prompt, pad_token_id=1, **kwargs)
        assert built == [], f"{kwargs}: the same call again is compiled once only, built {built}"
        np.testing.assert_array_equal(np.asarray(again.sequences), np.asarray(ours.sequences), err_msg=str(kwargs))
        oracle = flax_oracle(model)  # transformers 4.x's Flax loop on the same model (None under 5.x)
        if oracle is not None:
            theirs = oracle.generate(prompt, pad_token_id=1, **flax_no_eos(model), **kwargs)
            np.testing.assert_array_equal(np.asarray(ours.sequences), np.asarray(theirs.sequences),
                                          err_msg=str(kwargs))
    with compiles() as built:
        model.generate(prompt[:, 1:], max_new_tokens=6, pad_token_id=1)
    assert built  # a new prompt length: a new program
    traced = jax.jit(lambda p, ids: model.generate(ids, params=p, max_new_tokens=6, pad_token_id=1).sequences)
    np.testing.assert_array_equal(np.asarray(traced(model.params, prompt)),
                                  np.asarray(model.generate(prompt, max_new_tokens=6, pad_token_id=1).sequences))


def test_pad_to_multiple_of_shares_one_program_and_changes_nothing():
    model = FlaxXLSTMForCausalLM(no_eos_config("mlstm", chunk_size=4), seed=9)
    rng = np.random.RandomState(9)
    # greedy over three prompt lengths (one program); max_length, beams and sampling at one unaligned length
    for kwargs in ({"max_new_tokens": 5}, {"max_length": 12}, {"max_new_tokens": 5, "num_beams": 2},
                   {"max_new_tokens": 5, "do_sample": True, "prng_key": jax.random.PRNGKey(1)}):
        for length in ((5, 7, 8) if len(kwargs) == 1 and "max_new_tokens" in kwargs else (7,)):
            prompt = rng.randint(3, 97, (2, length))
            plain = np.asarray(model.generate(prompt, pad_token_id=1, **kwargs).sequences)
            padded = np.asarray(model.generate(prompt, pad_token_id=1, pad_to_multiple_of=8, **kwargs).sequences)
            np.testing.assert_array_equal(padded, plain, err_msg=f"{kwargs} length {length}")
    prompt = rng.randint(3, 97, (2, 6))
    with compiles() as padded:  # a new length padded into the bucket of 8 (5, 7 and 8 tokens ran above) ...
        padded_out = model.generate(prompt, pad_token_id=1, pad_to_multiple_of=8, max_new_tokens=5)
    with compiles() as plain:  # ... builds none of what the same length without padding builds (its program)
        plain_out = model.generate(prompt, pad_token_id=1, max_new_tokens=5)
    assert plain and not set(padded) & set(plain), (plain, padded)  # (only eager host-side slices may compile)
    np.testing.assert_array_equal(np.asarray(padded_out.sequences), np.asarray(plain_out.sequences))
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model.generate(prompt, max_new_tokens=2, pad_to_multiple_of=0)


def test_cache_size_independent_of_max_length():
    for layer_type in ("mlstm_v1", "mlstm"):
        model = FlaxXLSTMForCausalLM(tiny_config(layer_type), seed=0)
        sizes = [sum(x.nbytes for x in jax.tree_util.tree_leaves(model.init_cache(2, n))) for n in (16, 16384)]
        assert sizes[0] == sizes[1] > 0
        assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(model.init_cache(2, 16)))


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
def test_greedy_equals_argmax_loop(layer_type):
    model = FlaxXLSTMForCausalLM(no_eos_config(layer_type), seed=1)
    prompt = np.random.RandomState(1).randint(3, 97, (2, 6))
    out = model.generate(prompt, max_new_tokens=12, pad_token_id=1).sequences
    forward = _cached_forward(model)
    logits, cache = forward(model.params, prompt, model.init_cache(2))
    ids = prompt
    for _ in range(12):
        token = np.argmax(np.asarray(logits[:, -1]), -1)[:, None]
        ids = np.concatenate([ids, token], axis=1)
        logits, cache = forward(model.params, token, cache)
    np.testing.assert_array_equal(np.asarray(out), ids)


def test_sampling_reproducible_and_key_dependent():
    model = FlaxXLSTMForCausalLM(no_eos_config(), seed=2)
    prompt = np.random.RandomState(2).randint(3, 97, (3, 4))
    kwargs = dict(do_sample=True, max_new_tokens=20, temperature=1.5, top_k=20, top_p=0.95, pad_token_id=1)
    a = model.generate(prompt, prng_key=jax.random.PRNGKey(0), **kwargs).sequences
    b = model.generate(prompt, prng_key=jax.random.PRNGKey(0), **kwargs).sequences
    c = model.generate(prompt, prng_key=jax.random.PRNGKey(1), **kwargs).sequences
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.asarray(a).shape == (3, 24)
    np.testing.assert_array_equal(np.asarray(a)[:, :4], prompt)
    top1 = model.generate(prompt, prng_key=jax.random.PRNGKey(3), **dict(kwargs, top_k=1)).sequences
    greedy = model.generate(prompt, max_new_tokens=20, pad_token_id=1).sequences
    np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))  # top_k=1 sampling is greedy


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
def test_beam_search_well_formed(layer_type):
    model = FlaxXLSTMForCausalLM(no_eos_config(layer_type), seed=3)
    prompt = np.random.RandomState(3).randint(3, 97, (2, 5))
    out = model.generate(prompt, num_beams=3, max_new_tokens=8, pad_token_id=1)
    seqs, scores = np.asarray(out.sequences), np.asarray(out.scores)
    assert seqs.shape == (2, 13) and scores.shape == (2,)
    np.testing.assert_array_equal(seqs[:, :5], prompt)
    assert np.all(np.isfinite(scores)) and np.all(scores <= 0)
    # no beam finished (no eos), so transformers returns the running score: the generated tokens' log-probability
    logp = jax.nn.log_softmax(np.asarray(model(seqs[:, :-1]).logits), -1)
    seq_logp = np.take_along_axis(logp[:, 4:], seqs[:, 5:, None], -1).sum(axis=(1, 2))
    np.testing.assert_allclose(scores, seq_logp, rtol=1e-4, atol=1e-4)
    greedy = np.asarray(model.generate(prompt, max_new_tokens=8, pad_token_id=1).sequences)
    greedy_logp = np.take_along_axis(jax.nn.log_softmax(np.asarray(model(greedy[:, :-1]).logits), -1)[:, 4:],
                                     greedy[:, 5:, None], -1).sum(axis=(1, 2))
    assert np.all(seq_logp >= greedy_logp - 1e-4)  # beam search finds at least the greedy likelihood


def test_eos_and_pad_handling():
    model = FlaxXLSTMForCausalLM(no_eos_config(), seed=4)
    prompt = np.random.RandomState(4).randint(3, 97, (2, 5))
    free = np.asarray(model.generate(prompt, max_new_tokens=10, pad_token_id=1).sequences)
    eos = int(free[0, 7])  # the third generated token of row 0 becomes the end-of-sequence token
    out = np.asarray(model.generate(prompt, max_new_tokens=10, pad_token_id=1, eos_token_id=eos).sequences)
    first = 5 + int(np.argmax(free[0, 5:] == eos))
    np.testing.assert_array_equal(out[0, : first + 1], free[0, : first + 1])
    assert np.all(out[0, first + 1 :] == 1)  # padded after eos
    assert out.shape == (2, 15)


def test_left_padded_batch_generates_like_each_prompt_alone():
    for layer_type in ("mlstm_v1", "mlstm"):
        model = FlaxXLSTMForCausalLM(no_eos_config(layer_type, chunk_size=4), seed=5)
        rng = np.random.RandomState(5)
        prompts = [rng.randint(3, 97, n) for n in (3, 9, 6)]
        ids, mask = assert_left_padded_generation_is_per_prompt(model, prompts, max_new_tokens=16, what=layer_type)
        width = ids.shape[1]
        logits_pad = np.asarray(model(ids, attention_mask=mask).logits)
        logits_alone = np.asarray(model(prompts[0][None]).logits)
        assert max_abs_diff(logits_pad[0, width - 3 :], logits_alone[0]) <= 1e-4


def test_greedy_matches_transformers_pytorch(tmp_path):
    """32 new tokens, token for token, with transformers' PyTorch xLSTM on the same random weights."""
    torch = pytest.importorskip("torch")
    from transformers import FlaxAutoModelForCausalLM

    from test_transformers_parity import make_pt_model

    pt = make_pt_model(tmp_path, seed=7)
    flax_model = FlaxAutoModelForCausalLM.from_pretrained(tmp_path, from_pt=True)
    prompt = np.random.RandomState(7).randint(3, 101, (2, 10))
    with torch.no_grad():
        ref = pt.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False, pad_token_id=1,
                          eos_token_id=None, min_new_tokens=32).numpy()
    ours = np.asarray(flax_model.generate(prompt, max_new_tokens=32, pad_token_id=1,
                                          eos_token_id=None).sequences)  # no eos: no early stop
    np.testing.assert_array_equal(ours, ref)
