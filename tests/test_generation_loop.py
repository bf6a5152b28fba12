"""Our pure-JAX generation loop (`generate_loop` in modeling_xlstm_flax/generation.py).

Under transformers 4.x it is held token for token against transformers' Flax loop (`FlaxGenerationMixin.generate`,
jit-compiled here so the reference costs one compile): greedy search, beam search (sequences and scores) and
sampling with one PRNG key, on the unscanned and the scanned block layout (the same weights), with left-padded
prompts and eos hits. Those tests skip when transformers has no Flax loop (transformers 5); the rest run there.

Where the Flax loop has no counterpart the tests use another reference: greedy search step by step on the host
(with transformers' PyTorch processors for `repetition_penalty`, `no_repeat_ngram_size` and `min_new_tokens`,
which the Flax loop ignores or, for n-grams, cannot run under jax 0.10); `min_new_tokens` against the Flax loop's
`min_length` one token earlier (the Flax loop masks eos while cur_len <= min_length, PyTorch's min_new_tokens while
fewer than that many tokens are new); top_k=1 sampling, several eos ids and sampling's num_return_sequences
against the host greedy search.

Its programs compile with the suite's fast XLA:CPU settings (`tests/conftest.py`), the references too.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import GenerationConfig

from conftest import load_fixture
from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from flax_oracle import flax_oracle
from modeling_xlstm_flax.generation import (
    GenerationOutput,
    check_generation_config,
    generate_loop,
    logits_processor,
    logits_warper,
)

NEW = 8  # new tokens per test
S = 6  # prompt length


@pytest.fixture(scope="module")
def setup():
    """Upstream's small v2 fixture model (mlstm layer type, 2 blocks: its cache has a conv window too; vocabulary 97,
    pad id set to 1) in both block layouts with the same weights, and three prompts of S tokens, two of them
    left-padded: ({scanned: (model, params)}, ids (3, S), mask (3, S))."""
    models = {}
    for scanned in (False, True):
        config, params, _, _ = load_fixture("v2", chunk_size=8, scan_blocks=scanned, pad_token_id=1)
        models[scanned] = (FlaxXLSTMForCausalLM(config, _do_init=False), params)
    ids = np.random.RandomState(0).randint(3, 97, (3, S)).astype("i4")
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return models, ids, mask


_PROGRAMS = {}


def ours(model, params, ids, mask=None, key=0, **kwargs):
    """Our loop, jit-compiled once per model and checked settings (the loop depends on nothing else)."""
    config = copy.deepcopy(model.generation_config)
    assert not config.update(**kwargs)
    settings = check_generation_config(config, ids.shape[1])
    run = _PROGRAMS.get((id(model), settings))
    if run is None:
        run = _PROGRAMS[(id(model), settings)] = jax.jit(
            lambda p, i, m, k: generate_loop(model, p, i, m, config, k))
    return run(params, ids, mask, jax.random.PRNGKey(key))


def needs_flax_loop():
    """Skip the test (before compiling anything) when transformers has no Flax loop (transformers 5)."""
    return pytest.importorskip("transformers.generation.flax_utils")


def reference(model, params, ids, mask=None, key=0, **kwargs):
    """transformers' Flax loop, jit-compiled."""
    flax_utils = needs_flax_loop()
    extra = {} if mask is None else {"attention_mask": mask}  # its beam search cannot take attention_mask=None
    oracle = flax_oracle(model)  # the model with transformers' Flax loop (tests/flax_oracle.py)
    run = jax.jit(lambda p, i, k, e: flax_utils.FlaxGenerationMixin.generate(oracle, i, params=p, prng_key=k,
                                                                             **kwargs, **e))
    return run(params, ids, jax.random.PRNGKey(key), extra)


_STEP = {}


def host_greedy(setup, eos=(), processors=None) -> np.ndarray:
    """Greedy search on the host through the unscanned model's cache: the prompt in one call, then one token per
    call, NEW tokens; `processors` (PyTorch's, or None) see the sequence so far. Rows that produced an eos id get
    the pad id. Returns (3, S + NEW)."""
    (model, params), ids, mask = setup[0][False], setup[1], setup[2]
    if not _STEP:
        _STEP["run"] = jax.jit(lambda p, i, m, c: (lambda o: (o.logits[:, -1], o.past_key_values))(
            model(i, attention_mask=m, params=p, past_key_values=c, logits_to_keep=1)))
    logits, cache = _STEP["run"](params, ids, mask, model.init_cache(3))
    seqs, finished = ids.astype(np.int64), np.zeros(3, bool)
    for _ in range(NEW):
        scores = np.asarray(logits)
        if processors is not None:
            import torch

            scores = processors(torch.tensor(seqs), torch.tensor(scores)).numpy()
        token = np.where(finished, model.generation_config.pad_token_id, scores.argmax(-1))
        finished |= np.isin(token, eos)
        seqs = np.concatenate([seqs, token[:, None]], axis=1)
        logits, cache = _STEP["run"](params, token[:, None].astype("i4"), None, cache)
    return seqs


def an_eos(setup) -> int:
    """The third new token of row 0 in the free greedy run: greedy search with this eos id stops there."""
    return int(host_greedy(setup)[0, S + 2])


def assert_same(a, b, scores=False):
    np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))
    if scores:
        np.testing.assert_allclose(np.asarray(a.scores), np.asarray(b.scores), rtol=1e-5, atol=1e-4)


def test_greedy_matches_flax_loop(setup):
    needs_flax_loop()
    (model, params), ids, mask = setup[0][False], setup[1], setup[2]
    eos = an_eos(setup)
    got = ours(model, params, ids, mask, max_new_tokens=NEW, eos_token_id=eos)
    assert_same(got, reference(model, params, ids, mask, max_new_tokens=NEW, eos_token_id=eos))
    seqs = np.asarray(got.sequences)
    assert seqs.shape == (3, S + NEW) and got.scores is None
    np.testing.assert_array_equal(seqs[:, :S], ids)  # the prompt stays in place
    assert seqs[0, S + 2] == eos and np.all(seqs[0, S + 3:] == 1)  # row 0 stops at its eos, padded after it


@pytest.mark.parametrize("processed", [False, True])
def test_greedy_matches_host_loop(setup, processed):
    """Plain (the program of the test above), and with repetition_penalty, no_repeat_ngram_size, min_new_tokens
    against PyTorch's processors (the Flax loop has no repetition penalty and its n-gram processor fails)."""
    (model, params), ids, mask = setup[0][False], setup[1], setup[2]
    eos = an_eos(setup)
    if not processed:
        got = ours(model, params, ids, mask, max_new_tokens=NEW, eos_token_id=eos)
        np.testing.assert_array_equal(np.asarray(got.sequences), host_greedy(setup, eos=[eos]))
        return
    pytest.importorskip("torch")
    from transformers.generation import logits_process as pt

    got = ours(model, params, ids, mask, max_new_tokens=NEW, eos_token_id=eos, repetition_penalty=1.8,
               no_repeat_ngram_size=2, min_new_tokens=2)
    want = host_greedy(setup, eos=[eos], processors=pt.LogitsProcessorList([
        pt.RepetitionPenaltyLogitsProcessor(1.8), pt.NoRepeatNGramLogitsProcessor(2),
        pt.MinNewTokensLengthLogitsProcessor(S, 2, eos)]))
    np.testing.assert_array_equal(np.asarray(got.sequences), want)
    assert not np.array_equal(want, host_greedy(setup, eos=[eos]))  # the processors changed something


@pytest.mark.parametrize("scanned, kwargs", [
    (False, dict(num_beams=3, num_return_sequences=2, length_penalty=0.7, early_stopping=True, max_new_tokens=NEW)),
    (True, dict(num_beams=2, length_penalty=1.5, early_stopping="never", max_length=S + NEW)),
])
def test_beam_search_matches_flax_loop(setup, scanned, kwargs):
    """Sequences and scores; the cache reordered by the chosen beams in both layouts."""
    needs_flax_loop()
    (model, params), ids, mask = setup[0][scanned], setup[1], setup[2]
    eos = an_eos(setup)
    got = ours(model, params, ids, mask, eos_token_id=eos, **kwargs)
    assert_same(got, reference(model, params, ids, mask, eos_token_id=eos, **kwargs), scores=True)
    n = kwargs.get("num_return_sequences", 1)
    assert np.asarray(got.sequences).shape == (3 * n, S + NEW) and np.asarray(got.scores).shape == (3 * n,)
    assert np.any(np.asarray(got.sequences)[:, S:] == eos)  # some returned beam ended


def test_sampling_matches_flax_loop(setup):
    """Scanned layout. One PRNG key: the same samples (temperature, top-k, top-p, suppressed tokens, eos, left
    padding, and min_new_tokens=3 against the Flax loop's min_length = S + 3 - 1), eos being row 0's first greedy
    token; another key: other samples."""
    needs_flax_loop()
    (model, params), ids, mask = setup[0][True], setup[1], setup[2]
    eos = int(host_greedy(setup)[0, S])
    kwargs = dict(do_sample=True, temperature=0.7, top_k=10, top_p=0.9, suppress_tokens=[5, 7], eos_token_id=eos,
                  max_new_tokens=NEW)
    got = ours(model, params, ids, mask, key=3, min_new_tokens=3, **kwargs)
    assert_same(got, reference(model, params, ids, mask, key=3, min_length=S + 3 - 1, **kwargs))
    assert not np.any(np.asarray(got.sequences)[:, S:S + 3] == eos)
    other = ours(model, params, ids, mask, key=4, min_new_tokens=3, **kwargs)
    assert not np.array_equal(np.asarray(got.sequences), np.asarray(other.sequences))


def test_top_k_1_sampling_several_returns_and_eos_ids(setup):
    """Sampling with top_k=1 is greedy search. num_return_sequences=2 returns rows b * 2 and b * 2 + 1 for prompt b
    (transformers' PyTorch layout; the Flax loop ignores num_return_sequences when sampling). eos_token_id as a
    list: a row ends at the first of them (the Flax loop takes one id); pad_token_id=None pads with the first."""
    (model, params), ids, mask = setup[0][False], setup[1], setup[2]
    free = host_greedy(setup)
    eos = [int(free[1, S + 1]), int(free[0, S + 2])]
    got = np.asarray(ours(model, params, ids, mask, key=7, do_sample=True, top_k=1, num_return_sequences=2,
                          max_new_tokens=NEW, eos_token_id=eos, pad_token_id=None).sequences)
    assert got.shape == (6, S + NEW)
    for row in range(3):
        hits = np.flatnonzero(np.isin(free[row, S:], eos))
        end = S + (hits[0] + 1 if len(hits) else NEW)
        for sample in got[2 * row:2 * row + 2]:
            np.testing.assert_array_equal(sample[:end], free[row, :end])
            assert np.all(sample[end:] == eos[0])
    assert np.all(got[2:4, S + 2:] == eos[0])  # row 1 ended at its second new token


def test_compiled_once_per_shape_and_output_type(setup):
    (model, params), ids, mask = setup[0][False], setup[1], setup[2]
    eos = an_eos(setup)
    first = ours(model, params, ids, mask, max_new_tokens=NEW, eos_token_id=eos)
    config = copy.deepcopy(model.generation_config)
    config.update(max_new_tokens=NEW, eos_token_id=eos)
    run = _PROGRAMS[(id(model), check_generation_config(config, S))]
    out = run(params, ids[::-1].copy(), mask[::-1].copy(), jax.random.PRNGKey(1))  # new values, same shapes
    assert run._cache_size() == 1
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(first.sequences)[::-1])
    assert isinstance(out, GenerationOutput) and out.replace(sequences=None).sequences is None


_RNG = np.random.RandomState(1)
_SEQS = _RNG.randint(0, 12, (4, 14)).astype("i4")  # a vocabulary of 12, so n-grams repeat
_SEQS[:, 2:5] = _SEQS[:, 7:10]  # and certainly some 4-grams
_SCORES = _RNG.randn(4, 12).astype("f4")


def processed(**kwargs):
    """Our processors then warpers on _SCORES after _SEQS[:, :cur_len] (a prompt of 5 tokens, max_length 14, eos
    3): cur_len -> (4, 12) scores. The buffer past cur_len holds other tokens, which must not count."""
    settings = check_generation_config(GenerationConfig(**{"max_length": 14, "eos_token_id": 3, **kwargs}), 5)
    run = jax.jit(lambda c: logits_warper(settings)(logits_processor(settings)(_SEQS, _SCORES, c)))
    return lambda cur_len: np.asarray(run(cur_len))


def test_logits_processors_match_flax_processors():
    flax_proc = pytest.importorskip("transformers.generation.flax_logits_process")
    # (FlaxNoRepeatNGramLogitsProcessor fails under jax 0.10: no-repeat n-grams are held against PyTorch's below)
    for kwargs, proc in [
        (dict(min_length=9), flax_proc.FlaxMinLengthLogitsProcessor(9, 3)),
        (dict(forced_eos_token_id=4), flax_proc.FlaxForcedEOSTokenLogitsProcessor(14, 4)),
        (dict(forced_bos_token_id=8), flax_proc.FlaxForcedBOSTokenLogitsProcessor(8)),
        (dict(suppress_tokens=[1, 6]), flax_proc.FlaxSuppressTokensLogitsProcessor([1, 6])),
        (dict(begin_suppress_tokens=[0, 2]), flax_proc.FlaxSuppressTokensAtBeginLogitsProcessor([0, 2], 5)),
        (dict(do_sample=True, top_k=4), flax_proc.FlaxTopKLogitsWarper(4)),
        (dict(do_sample=True, top_k=0, top_p=0.6), flax_proc.FlaxTopPLogitsWarper(0.6)),
        (dict(do_sample=True, top_k=0, temperature=0.5), flax_proc.FlaxTemperatureLogitsWarper(0.5)),
    ]:
        ours_at = processed(**kwargs)
        theirs = jax.jit(lambda c: proc(jnp.asarray(_SEQS), jnp.asarray(_SCORES), c))
        for cur_len in (1, 5, 9, 13):
            np.testing.assert_array_equal(ours_at(cur_len), np.asarray(theirs(cur_len)),
                                          err_msg=f"{kwargs} cur_len={cur_len}")


def test_logits_processors_match_pytorch_processors():
    """The settings the Flax loop lacks, against transformers' PyTorch processors."""
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as pt

    for kwargs, proc in [(dict(repetition_penalty=1.7), pt.RepetitionPenaltyLogitsProcessor(1.7)),
                         (dict(no_repeat_ngram_size=3), pt.NoRepeatNGramLogitsProcessor(3)),
                         (dict(no_repeat_ngram_size=1), pt.NoRepeatNGramLogitsProcessor(1)),
                         (dict(min_new_tokens=5, eos_token_id=[3, 7]),
                          pt.MinNewTokensLengthLogitsProcessor(5, 5, [3, 7]))]:
        ours_at = processed(**kwargs)
        for cur_len in (5, 9, 10, 13):
            want = proc(torch.tensor(_SEQS[:, :cur_len], dtype=torch.long), torch.tensor(_SCORES)).numpy()
            np.testing.assert_allclose(ours_at(cur_len), want, rtol=1e-6, err_msg=f"{kwargs} cur_len={cur_len}")


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(do_sample=True, num_beams=2), "num_beams"),
    (dict(num_beam_groups=2, num_beams=2, diversity_penalty=1.0), "diversity_penalty|num_beam_groups"),
    (dict(bad_words_ids=[5]), "bad_words_ids"),
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
    (dict(exponential_decay_length_penalty=(2, 1.5)), "exponential_decay_length_penalty"),
    (dict(stop_strings=["end"]), "stop_strings"),
    (dict(num_beams=2, output_scores=True), "output_scores"),
    (dict(max_length=S), "max_length"),
    (dict(max_new_tokens=4, min_length=12), "min_length"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(forced_decoder_ids=[[1, 5]]), "forced_decoder_ids"),
])
def test_unsupported_settings_raise(kwargs, field):
    config = GenerationConfig()
    for name, value in kwargs.items():  # set directly: GenerationConfig's own checks would catch some first
        setattr(config, name, value)
    with pytest.raises(ValueError, match=field):
        check_generation_config(config, S)


def test_unsupported_setting_raises_from_generate_loop(setup):
    (model, params), ids, mask = setup[0][False], setup[1], setup[2]
    config = GenerationConfig(max_new_tokens=3)
    config.constraints = ["something"]
    with pytest.raises(ValueError, match="constraints"):
        generate_loop(model, params, ids, mask, config, jax.random.PRNGKey(0))
    # settings that cannot change the tokens are accepted
    check_generation_config(GenerationConfig(max_new_tokens=3, use_cache=False, return_dict_in_generate=True,
                                             temperature=0.3, bos_token_id=5), S)
