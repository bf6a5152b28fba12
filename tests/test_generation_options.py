"""Generation options: every GenerationConfig field is implemented or refused by name (issue 22, part 3), the
crashes of part 4 are one clear line each, and sharded generation pins the cache (issue 25, item 1).

References: transformers' PyTorch logits processors and warpers on the same scores (transformers 4.57 venv, which
has torch; tolerance 1e-6 on float32 scores, the -inf pattern exact), transformers' PyTorch `generate` on its
xLSTMForCausalLM with the same weights (greedy with repetition penalty and bad words: exact tokens), the model's own
forward for `output_scores` / `output_logits` (1e-5), and the loop's own greedy search for what only changes
which rows come back. Under transformers 5 (no torch) the PyTorch comparisons skip; the rest runs in both.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from transformers import GenerationConfig

from conftest import FAST_XLA_FLAGS, NO_TORCH, tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM, FlaxXLSTMModel
from modeling_xlstm_flax.logits_processors import (
    HANDLED_FIELDS, NO_EFFECT_FIELDS, REFUSED_FIELDS, check_generation_config, logits_processor, logits_warper,
)

HERE = Path(__file__).resolve().parent
IDS = np.array([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
NEW = 6


@pytest.fixture(scope="module")
def model():
    """Tiny causal LM (vocabulary 97) without an eos id: every row runs to its length."""
    config = tiny_config()
    config.eos_token_id = None
    return FlaxXLSTMForCausalLM(config, seed=0)


# ---------------------------------------------------------------------------------------------- the field rule
# A value that turns each refused field on (GenerationConfig's own checks are bypassed: set as attributes).
ON_VALUES = {
    "exponential_decay_length_penalty": (2, 1.5), "penalty_alpha": 0.6, "num_beam_groups": 2, "diversity_penalty": 0.5,
    "stop_strings": ["end"], "max_time": 1.0, "constraints": ["c"], "force_words_ids": [[5]],
    "encoder_no_repeat_ngram_size": 2, "encoder_repetition_penalty": 1.2, "sequence_bias": {(5,): -1.0},
    "guidance_scale": 1.5, "epsilon_cutoff": 0.1, "eta_cutoff": 0.1, "top_h": 0.5, "renormalize_logits": True,
    "remove_invalid_values": True, "watermarking_config": {"greenlist_ratio": 0.25}, "token_healing": True,
    "dola_layers": "low", "prompt_lookup_num_tokens": 3, "assistant_early_exit": 2, "output_attentions": True,
    "output_hidden_states": True, "forced_decoder_ids": [[1, 5]], "use_mtp": True, "speculation_type": "ngram",
    "continuous_batching_config": {"max_batch_tokens": 8},
}


def test_every_generation_config_field_is_decided():
    """Each field of this transformers' GenerationConfig is implemented, without effect on this loop, or refused:
    a new transformers field fails here until it is put in one of the tables."""
    fields = {name for name in GenerationConfig().to_dict() if not name.startswith("_")}
    undecided = fields - HANDLED_FIELDS - NO_EFFECT_FIELDS - set(REFUSED_FIELDS)
    assert not undecided, f"GenerationConfig fields in no table of logits_processors: {sorted(undecided)}"
    assert set(REFUSED_FIELDS) <= set(ON_VALUES)


@pytest.mark.parametrize("name", sorted(REFUSED_FIELDS))
def test_refused_field_named(name):
    config = GenerationConfig(max_new_tokens=2)
    setattr(config, name, ON_VALUES[name])
    with pytest.raises(ValueError, match=rf"generation_config\.{name}=.*not supported"):
        check_generation_config(config, 4)
    setattr(config, name, REFUSED_FIELDS[name])  # its off value passes
    check_generation_config(config, 4)


@pytest.mark.parametrize("kwargs, name", [
    (dict(exponential_decay_length_penalty=(2, 1.5)), "exponential_decay_length_penalty"),
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5), "num_beam_groups|diversity_penalty"),
    (dict(stop_strings=["end"]), "stop_strings"),
    (dict(do_sample=True, num_beams=2), "num_beams"),  # beam sampling
])
def test_refused_options_from_generate(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        model.generate(IDS, max_new_tokens=2, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=3, min_new_tokens=4), r"min_new_tokens=4 is more than max_new_tokens=3"),
    (dict(max_new_tokens=3, pad_token_id=97), r"pad_token_id=97 .*< vocab_size=97"),
    (dict(max_new_tokens=3, eos_token_id=[2, 400]), r"eos_token_id=\[2, 400\] .*< vocab_size=97"),
    (dict(max_new_tokens=3, forced_eos_token_id=97), r"forced_eos_token_id=97"),
    (dict(max_new_tokens=3, bos_token_id=-1), r"bos_token_id=-1"),
    (dict(max_new_tokens=3, bad_words_ids=[[5, 98]]), r"bad_words_ids\[0\]=\[5, 98\]"),
    (dict(max_new_tokens=3, num_beams=2, length_penalty=float("nan")), r"length_penalty=nan is invalid"),
    (dict(max_new_tokens=3, num_beams=2, length_penalty=float("inf")), r"length_penalty=inf is invalid"),
    (dict(max_new_tokens=3, min_new_tokens=3, eos_token_id=2, forced_eos_token_id=2),
     r"min_new_tokens=3 .*forced_eos_token_id puts eos at position"),
    (dict(max_new_tokens=3, logits_processor=[42]), r"logits_processor must be a callable"),
    (dict(max_new_tokens=3, logits_processor=lambda ids, scores: scores), r"must take \(input_ids, scores, cur_len\)"),
    (dict(max_new_tokens=3, prng_key=jax.random.PRNGKey(0)[None]), r"prng_key must be one key.*shape \(1, 2\)"),
    (dict(max_new_tokens=3, prng_key="seed"), r"prng_key must be one key.*got str"),
])
def test_refused_values(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(IDS, **kwargs)


def test_unclear_crashes_are_one_clear_line(model):
    with pytest.raises(TypeError, match="FlaxXLSTMModel is the xLSTM backbone .*FlaxXLSTMForCausalLM"):
        FlaxXLSTMModel(model.config, _do_init=False).generate(IDS, max_new_tokens=2)
    for empty in (np.zeros((1, 0), np.int32), [[]], []):
        with pytest.raises(ValueError, match=r"input_ids is empty .*at least one token"):
            model.generate(empty, max_new_tokens=2)
    long_prompt = np.arange(3, 28)[None]  # 25 tokens > the default max_length 20
    with pytest.raises(ValueError, match=r"no length given: the default max_length=20 counts the prompt's 25 tokens"
                                         r".*pass max_new_tokens"):
        model.generate(long_prompt)


def test_generate_command_refuses_an_empty_prompt_for_a_preset(capsys):
    from modeling_xlstm_flax.cli import generate_main as main

    assert main(["--preset", "tiny-mlstm-v1", "--prompt", ""]) == 1
    assert "--prompt is empty" in capsys.readouterr().err


def test_explicit_max_length_20_counts_the_prompt(model):
    """An explicit max_length=20 is 20 tokens in all (as any other max_length; transformers 4's Flax loop made it 20
    new ones); no length at all: the default 20, prompt included (transformers' rule)."""
    explicit = np.asarray(model.generate(IDS, max_length=20).sequences)
    assert explicit.shape == (2, 20)
    np.testing.assert_array_equal(np.asarray(model.generate(IDS).sequences), explicit)
    np.testing.assert_array_equal(np.asarray(model.generate(IDS, max_new_tokens=15).sequences), explicit)


# ---------------------------------------------------------------------------------------------- processors vs PyTorch
def _settings(prompt_length=4, **kwargs):
    return check_generation_config(GenerationConfig(max_new_tokens=8, **kwargs), prompt_length)


def _assert_same_scores(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("warpers", [
    dict(min_p=0.1), dict(typical_p=0.7), dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.8),
])
def test_warpers_match_pytorch(warpers):
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as lp

    scores = np.random.RandomState(0).randn(6, 50).astype(np.float32) * 3
    ours = logits_warper(_settings(do_sample=True, top_k=warpers.get("top_k", 0), **{
        k: v for k, v in warpers.items() if k != "top_k"}))(jax.numpy.asarray(scores))
    make = {"temperature": lp.TemperatureLogitsWarper, "top_k": lp.TopKLogitsWarper, "top_p": lp.TopPLogitsWarper,
            "min_p": lp.MinPLogitsWarper, "typical_p": lp.TypicalLogitsWarper}  # transformers' order
    torch_warpers = lp.LogitsProcessorList([make[name](warpers[name]) for name in make if name in warpers])
    theirs = torch_warpers(torch.zeros((6, 1), dtype=torch.long), torch.tensor(scores))
    _assert_same_scores(ours, theirs.numpy())
    assert np.isneginf(np.asarray(ours)).any() and np.isfinite(np.asarray(ours)).sum(-1).min() >= 1


def test_repetition_penalty_and_bad_words_match_pytorch():
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as lp

    rs = np.random.RandomState(1)
    scores = rs.randn(4, 30).astype(np.float32) * 2
    L, cur_len = 12, 7
    sequences = rs.randint(0, 30, (4, L)).astype(np.int32)
    sequences[:, cur_len:] = 0  # not generated yet (must not count)
    sequences[0, cur_len - 2:cur_len] = [4, 5]
    bad = [[9], [4, 5, 6], [2, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]  # one, two-token prefix, longer
    s = _settings(prompt_length=3, repetition_penalty=1.7, bad_words_ids=bad, eos_token_id=[9, 2])
    ours = logits_processor(s)(jax.numpy.asarray(sequences), jax.numpy.asarray(scores), jax.numpy.int32(cur_len))
    prefix = torch.tensor(sequences[:, :cur_len], dtype=torch.long)
    # transformers drops a bad word equal to [an eos id]: [9] here, since 9 is an eos id
    theirs = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.7),
                                     lp.NoBadWordsLogitsProcessor(bad, eos_token_id=[9, 2])])(prefix,
                                                                                             torch.tensor(scores))
    _assert_same_scores(ours, theirs.numpy())
    assert np.isneginf(np.asarray(ours)[0, 6]) and np.isfinite(np.asarray(ours)[:, 9]).all()


def test_greedy_with_repetition_penalty_and_bad_words_matches_pytorch_generate(tmp_path):
    """Token for token with transformers' PyTorch generate on its xLSTMForCausalLM with the same weights."""
    torch = pytest.importorskip("torch")
    from test_transformers_parity import make_pt_model

    pt = make_pt_model(tmp_path, seed=3)
    ours_model = FlaxXLSTMForCausalLM.from_pretrained(tmp_path)
    prompt = np.random.RandomState(3).randint(3, 101, (2, 7))
    free = np.asarray(ours_model.generate(prompt, max_new_tokens=12, pad_token_id=1, eos_token_id=None).sequences)
    bad = [[int(free[0, 8])], [int(free[1, 9]), int(free[1, 10])]]  # words the free run produces
    options = dict(max_new_tokens=12, pad_token_id=1, repetition_penalty=1.5, bad_words_ids=bad)
    with torch.no_grad():
        ref = pt.generate(torch.tensor(prompt), do_sample=False, eos_token_id=None, min_new_tokens=12,
                          **options).numpy()
    ours = np.asarray(ours_model.generate(prompt, eos_token_id=None, **options).sequences)
    np.testing.assert_array_equal(ours, ref)
    assert not np.array_equal(ours, free)  # the options changed the tokens


# ---------------------------------------------------------------------------------------------- implemented options
def test_output_scores_and_logits_are_the_steps(model):
    """Greedy: one (B, V) per step; the logits are the model's own at each position (1e-5), the scores those after
    the processors (repetition penalty here), and each token is the argmax of its step's scores."""
    out = model.generate(IDS, max_new_tokens=NEW, output_scores=True, output_logits=True,
                         return_dict_in_generate=True, repetition_penalty=1.3)
    seqs = np.asarray(out.sequences)
    assert len(out.scores) == len(out.logits) == NEW and out.scores[0].shape == (2, model.config.vocab_size)
    full = np.asarray(model(seqs).logits)  # logits at position t predict token t + 1
    S = IDS.shape[1]
    for i in range(NEW):
        np.testing.assert_allclose(np.asarray(out.logits[i]), full[:, S - 1 + i], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out.scores[i]).argmax(-1), seqs[:, S + i])
    assert not np.allclose(np.asarray(out.scores[0]), np.asarray(out.logits[0]))  # penalised


def test_sampling_num_return_sequences_and_new_warpers(model):
    """n rows per prompt (rows b * n ... b * n + n - 1, each starting with its prompt), different samples; min_p,
    typical_p and bad words act (a banned token never comes; top_k=1 with num_return_sequences is greedy n times)."""
    key = jax.random.PRNGKey(5)
    out = np.asarray(model.generate(IDS, max_new_tokens=NEW, do_sample=True, num_return_sequences=3, prng_key=key,
                                    min_p=0.01, typical_p=0.95).sequences)
    assert out.shape == (6, IDS.shape[1] + NEW)
    np.testing.assert_array_equal(out[:, :IDS.shape[1]], np.repeat(IDS, 3, axis=0))
    assert len({tuple(row) for row in out[:3, IDS.shape[1]:]}) > 1
    greedy = np.asarray(model.generate(IDS, max_new_tokens=NEW).sequences)
    top1 = np.asarray(model.generate(IDS, max_new_tokens=NEW, do_sample=True, top_k=1, num_return_sequences=2,
                                     prng_key=key).sequences)
    np.testing.assert_array_equal(top1, np.repeat(greedy, 2, axis=0))
    banned = int(greedy[0, IDS.shape[1]])
    no_bad = np.asarray(model.generate(IDS, max_new_tokens=NEW, bad_words_ids=[[banned]]).sequences)
    assert banned not in no_bad[:, IDS.shape[1]:]


def test_plain_callable_logits_processor(model):
    """transformers' Flax processor signature, run after the built-in processors: banning a token this way gives
    the tokens bad_words_ids gives."""
    greedy = np.asarray(model.generate(IDS, max_new_tokens=NEW).sequences)
    banned = int(greedy[0, IDS.shape[1]])

    def ban(input_ids, scores, cur_len):
        return scores.at[:, banned].set(-np.inf)

    got = np.asarray(model.generate(IDS, max_new_tokens=NEW, logits_processor=ban).sequences)
    np.testing.assert_array_equal(got, np.asarray(model.generate(IDS, max_new_tokens=NEW,
                                                                 bad_words_ids=[[banned]]).sequences))
    assert not np.array_equal(got, greedy)
    try:  # transformers 4.x's own Flax processors are such callables
        from transformers.generation.flax_logits_process import (
            FlaxLogitsProcessorList, FlaxSuppressTokensLogitsProcessor,
        )
    except ImportError:
        return
    flax_list = FlaxLogitsProcessorList([FlaxSuppressTokensLogitsProcessor([banned])])
    np.testing.assert_array_equal(np.asarray(model.generate(IDS, max_new_tokens=NEW,
                                                            logits_processor=flax_list).sequences), got)


# ---------------------------------------------------------------------------------------------- sharded cache
@pytest.mark.slow
def test_sharded_generate_pins_the_cache(tmp_path):
    """On a (2, 2, 2) mesh of 8 host devices: every cache leaf the model receives inside `sharded_generate` (the
    prefill's fresh cache, and the cache each step starts from: the prefill's, then each step's) has the pinned
    sharding (`sharding.cache_shardings`), greedy and beam search; the tokens are the single-device ones. Without
    the loop applying the constraint the prefill's cache is replicated (checked when this test was written)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **NO_TORCH,
               XLA_FLAGS=" ".join(["--xla_force_host_platform_device_count=8", *FAST_XLA_FLAGS]))
    out = tmp_path / "cache.json"
    proc = subprocess.run([sys.executable, str(HERE / "sharded_generate_cache.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-4000:]
    for name, result in json.loads(out.read_text()).items():
        kinds = {row["kind"] for row in result["seen"]}
        assert kinds == {"prefill input", "step input"}, (name, kinds)
        wrong = [row for row in result["seen"] if not row["pinned"]]
        assert not wrong, (name, wrong[:3])
        assert result["tokens_equal"], name

