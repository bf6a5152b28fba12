"""The Flax text-generation pipeline (modeling_xlstm_flax.auto) against model.generate + tokenizer.decode.

Every test runs under transformers 4.x and 5.x (the pipeline class is our own); only those that need torch in this
process say so. Compiles are kept few: prompts are bucketed to BUCKET tokens (pipeline and references alike), so
calls of one batch size and generation config share one program."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from modeling_xlstm_flax.auto import TASK, FlaxTextGenerationPipeline, text_generation_pipeline

PROMPTS = ["The object", "A list of things is made"]  # different token lengths: left padding
NEW = 8
BUCKET = 16  # every prompt here is shorter: one program per batch size and generation config
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}a:{% endif %}")  # short: chats fit in BUCKET tokens
SAMPLING = {"do_sample": True, "temperature": 1.3, "top_k": 20, "top_p": 0.9}
# what a call without sampling arguments samples with (so, under transformers 4, one compiled program for both)
DEFAULT_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 1.0}


def torch_installed() -> bool:
    from transformers.utils import is_torch_available

    return is_torch_available()


def build_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained here on a few hundred lines of CPython's pydoc topics (no download):
    <s>=0, <pad>=1, </s>=2 like the tiny presets; left padding."""
    import pydoc_data.topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [line for topic in sorted(pydoc_data.topics.topics)[:40]
             for line in pydoc_data.topics.topics[topic].splitlines() if line.strip()][:400]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   padding_side="left")


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    return FlaxXLSTMForCausalLM(tiny_config(vocab_size=len(tokenizer), chunk_size=8), seed=0)


@pytest.fixture(scope="module")
def generator(model, tokenizer):
    return text_generation_pipeline(model, tokenizer, pad_to_multiple_of=BUCKET)


def hf_pipeline(task, **kwargs):
    """transformers' pipeline(); without torch it needs dtype=None (and, under transformers 4, framework="flax"):
    it reads its default dtype "auto" on torch and infers the framework with torch."""
    from transformers import pipeline

    if not torch_installed():
        kwargs = {"dtype": None, "framework": "flax", **kwargs}
    return pipeline(task, **kwargs)


def _generate(model, tokenizer, prompt_ids, **kwargs):
    """The reference: the prompts (lists of ids) left-padded here into one batch, `model.generate` on it (bucketed
    like the pipeline's calls), the padding cut off again: each prompt's sequence as a list. The tests pass two
    prompts at a time, so every greedy reference shares one compiled program."""
    width = max(len(ids) for ids in prompt_ids)
    batch = np.full((len(prompt_ids), width), tokenizer.pad_token_id)
    mask = np.zeros_like(batch)
    for row, ids in enumerate(prompt_ids):
        batch[row, width - len(ids):], mask[row, width - len(ids):] = ids, 1
    kwargs = {"max_new_tokens": NEW, "pad_token_id": tokenizer.pad_token_id, "pad_to_multiple_of": BUCKET, **kwargs}
    sequences = np.asarray(model.generate(batch, attention_mask=mask, **kwargs).sequences)
    return [row[width - len(ids):].tolist() for row, ids in zip(sequences, prompt_ids)]


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def _chat_ids(tokenizer, chat, **kwargs):
    return tokenizer.apply_chat_template(chat, return_dict=True, **kwargs)["input_ids"]


def _new_text(tokenizer, sequence, prompt_ids):
    """transformers' rule: the decoded sequence after the decoded prompt."""
    return tokenizer.decode(sequence, skip_special_tokens=True)[len(tokenizer.decode(prompt_ids,
                                                                                       skip_special_tokens=True)):]


@pytest.fixture(scope="module")
def refs(model, tokenizer):
    """Greedy model.generate of PROMPTS (one left-padded batch): full sequences (prompt + NEW tokens) as lists."""
    prompt_ids = [_ids(tokenizer, p) for p in PROMPTS]
    assert len(prompt_ids[0]) != len(prompt_ids[1])  # the batch really is padded
    return _generate(model, tokenizer, prompt_ids)


def test_registered_and_idempotent():
    from transformers.pipelines import PIPELINE_REGISTRY

    import modeling_xlstm_flax

    modeling_xlstm_flax.register_auto_classes()
    modeling_xlstm_flax.register_auto_classes()
    assert TASK in PIPELINE_REGISTRY.get_supported_tasks()
    assert PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is FlaxTextGenerationPipeline


def test_defaults_follow_transformers_text_generation(generator, model, tokenizer):
    config = generator.generation_config
    assert isinstance(generator, FlaxTextGenerationPipeline) and generator.framework == "flax"
    assert (config.max_new_tokens, config.do_sample, config.temperature) == (256, True, 0.7)
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (2, 1, 0)
    assert not model.generation_config.do_sample  # the model's own config untouched
    # what a call sets wins; a set max_length drops the max_new_tokens default; greedy gets no sampling default
    config = generator._generation_config({"max_length": 30, "do_sample": False})
    assert (config.max_length, config.max_new_tokens, config.do_sample) == (30, None, False)
    assert config.temperature in (None, 1.0)  # the model's (unset: transformers 4 says 1.0, transformers 5 None)
    config = generator._generation_config(SAMPLING)
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 1.3, 20, 0.9)
    # so does what the model's generation config sets
    saved = model.generation_config.max_length
    try:
        model.generation_config.max_length = 40
        assert text_generation_pipeline(model, tokenizer).generation_config.max_new_tokens is None
    finally:
        model.generation_config.max_length = saved


def test_stop_sequence_of_one_token_stops_there(generator, tokenizer, refs):
    """stop_sequence becomes the eos id (transformers' rule): the greedy run stops at the first new token that is
    its token, the rest is padding; a stop sequence of several tokens is refused by name (transformers would stop at
    its first token without a word)."""
    prompt, ref = PROMPTS[1], refs[1]
    start = len(_ids(tokenizer, prompt))
    stop = next(t for t in ref[start + 1:]
                     if tokenizer.encode(tokenizer.decode([t]), add_special_tokens=False) == [t])
    got = generator(prompt, max_new_tokens=NEW, do_sample=False, return_tensors=True,
                    stop_sequence=tokenizer.decode([stop]))[0]["generated_token_ids"]
    first = ref.index(stop, start)
    assert got[:first + 1] == ref[:first + 1] and set(got[first + 1:]) <= {tokenizer.pad_token_id}
    assert first < len(ref) - 1 and len(got) == len(ref)  # it did stop early
    with pytest.raises(ValueError, match=r"stop_sequence='The object' is \d+ tokens .*only a stop sequence of one"):
        generator(prompt, max_new_tokens=NEW, do_sample=False, stop_sequence="The object")


def test_greedy_single_equals_generate(generator, tokenizer, refs):
    prompt, ref = PROMPTS[1], refs[1]
    assert generator(prompt, max_new_tokens=NEW, do_sample=False, return_tensors=True) == [
        {"generated_token_ids": ref}]
    text = tokenizer.decode(ref, skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert generator(prompt, max_new_tokens=NEW, do_sample=False) == [{"generated_text": text}]
    assert generator(prompt, max_new_tokens=NEW, do_sample=False, return_full_text=False) == [
        {"generated_text": text[len(prompt):]}]
    # a prefix is generated from but cut from the output
    prefix, short = "The list ", PROMPTS[0]
    ids = _ids(tokenizer, prefix + short)
    assert len(ids) <= BUCKET
    ref = _generate(generator.model, tokenizer, [ids, _ids(tokenizer, prompt)])[0]
    assert generator(short, prefix=prefix, max_new_tokens=NEW, do_sample=False) == [
        {"generated_text": short + _new_text(tokenizer, ref, ids)}]
    # handle_long_generation="hole": only the last model_max_length - max_new_tokens prompt tokens are kept
    ids = _ids(tokenizer, prompt)
    saved, tokenizer.model_max_length = tokenizer.model_max_length, NEW + 3
    try:
        out = generator(prompt, handle_long_generation="hole", max_new_tokens=NEW, do_sample=False)
    finally:
        tokenizer.model_max_length = saved
    ref = _generate(generator.model, tokenizer, [ids[-3:], ids])[0]
    assert out == [{"generated_text": prompt + _new_text(tokenizer, ref, ids[-3:])}]
    # an empty prompt starts from the BOS token
    ref = _generate(generator.model, tokenizer, [[tokenizer.bos_token_id], ids])[0]
    assert generator("", max_new_tokens=NEW, do_sample=False, return_tensors=True) == [{"generated_token_ids": ref}]


def test_greedy_batched_equals_generate(generator, refs):
    outs = generator(PROMPTS, max_new_tokens=NEW, do_sample=False, return_tensors=True, batch_size=2)
    assert outs == [[{"generated_token_ids": ref}] for ref in refs]
    # a list with the default batch_size (1), a tuple, and an iterator give the same
    assert generator(PROMPTS, max_new_tokens=NEW, do_sample=False, return_tensors=True) == outs
    assert generator(tuple(PROMPTS), max_new_tokens=NEW, do_sample=False, return_tensors=True, batch_size=2) == outs
    assert list(generator(iter(PROMPTS), max_new_tokens=NEW, do_sample=False, return_tensors=True)) == outs


def test_batched_text_outputs(generator, tokenizer, refs):
    full = generator(PROMPTS, max_new_tokens=NEW, do_sample=False, batch_size=2)
    new = generator(PROMPTS, max_new_tokens=NEW, do_sample=False, batch_size=2, return_full_text=False)
    for prompt, ref, f, n in zip(PROMPTS, refs, full, new):
        text = tokenizer.decode(ref, skip_special_tokens=True)
        assert f == [{"generated_text": text}]
        assert n == [{"generated_text": text[len(prompt):]}]


def test_sampling_with_seed_equals_generate(generator, model, tokenizer):
    """Samples of one prompt (num_return_sequences=2: the prompt repeated, sampled in one batch with the call's key)
    == model.generate with that key; reproducible with `seed`, fresh draws without."""
    call = {"max_new_tokens": NEW, "num_return_sequences": 2, "return_tensors": True, **DEFAULT_SAMPLING}
    a = generator(PROMPTS[0], seed=7, **call)
    assert a == generator(PROMPTS[0], seed=7, **call) and a != generator(PROMPTS[0], seed=8, **call)
    ids = _ids(tokenizer, PROMPTS[0])
    ref = _generate(model, tokenizer, [ids, ids], prng_key=jax.random.PRNGKey(7), **DEFAULT_SAMPLING)
    assert [s["generated_token_ids"] for s in a] == ref and ref[0] != ref[1]
    assert generator(PROMPTS[0], prng_key=jax.random.PRNGKey(7), **call) == a
    assert generator(PROMPTS[0], seed=7, **{**call, "return_tensors": None}, return_full_text=False) == [
        {"generated_text": _new_text(tokenizer, r, ids)} for r in ref]
    # without a seed, calls draw fresh keys from the pipeline's stream (seeded at construction)
    assert generator(PROMPTS[0], **call) != generator(PROMPTS[0], **call)


def test_default_sampling_is_transformers_default(generator, model, tokenizer):
    """A call without sampling arguments samples with DEFAULT_SAMPLING: temperature 0.7 (the pipeline's default),
    top_k 50 and top_p 1.0 (transformers' defaults)."""
    out = generator(PROMPTS[0], seed=7, max_new_tokens=NEW, num_return_sequences=2, return_tensors=True)
    ids = _ids(tokenizer, PROMPTS[0])
    ref = _generate(model, tokenizer, [ids, ids], prng_key=jax.random.PRNGKey(7), **DEFAULT_SAMPLING)
    assert [s["generated_token_ids"] for s in out] == ref


def test_beams_equal_generate(generator, model, tokenizer):
    beams = generator(PROMPTS[0], max_new_tokens=NEW, do_sample=False, num_beams=3, num_return_sequences=2,
                      return_tensors=True)
    ids = np.asarray([_ids(tokenizer, PROMPTS[0])])
    ref = model.generate(ids, attention_mask=np.ones_like(ids), max_new_tokens=NEW, num_beams=3,
                         num_return_sequences=2, pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=BUCKET)
    assert [b["generated_token_ids"] for b in beams] == np.asarray(ref.sequences).tolist()
    with pytest.raises(ValueError, match="num_return_sequences"):
        generator(PROMPTS[0], max_new_tokens=NEW, do_sample=False, num_return_sequences=2)


def test_chat_input(generator, model, tokenizer):
    chat = [{"role": "user", "content": "the object"}]
    prefill = chat + [{"role": "assistant", "content": "A"}]  # ends with the assistant: continued
    ids = [_chat_ids(tokenizer, chat, add_generation_prompt=True), _chat_ids(tokenizer, prefill,
                                                                              continue_final_message=True)]
    assert max(map(len, ids)) <= BUCKET
    reply, more = (_new_text(tokenizer, seq, i) for seq, i in zip(_generate(model, tokenizer, ids), ids))
    assert reply and more
    out = generator(chat, max_new_tokens=NEW, do_sample=False)
    assert out == [{"generated_text": chat + [{"role": "assistant", "content": reply}]}]
    assert generator(chat, max_new_tokens=NEW, do_sample=False, return_full_text=False) == [
        {"generated_text": reply}]
    assert generator([chat, prefill], max_new_tokens=NEW, do_sample=False, batch_size=2) == [
        out, [{"generated_text": chat + [{"role": "assistant", "content": "A" + more}]}]]


def test_registered_task_and_stock_task_build_ours(model, tokenizer, refs):
    """pipeline(TASK) and pipeline("text-generation", model=<Flax model>) alone: transformers' own class would fail
    on a Flax model; registration points the stock task at a dispatcher, so it builds FlaxTextGenerationPipeline."""
    for task in (TASK, "text-generation"):
        pipe = hf_pipeline(task, model=model, tokenizer=tokenizer, pad_to_multiple_of=BUCKET)
        assert type(pipe) is FlaxTextGenerationPipeline and pipe.task == task
        out = pipe(PROMPTS[0], max_new_tokens=NEW, do_sample=False, return_tensors=True)
        assert out[0]["generated_token_ids"] == refs[0]


def test_stock_task_with_pipeline_class_and_model_dir(model, tokenizer, refs, tmp_path):
    stock = hf_pipeline("text-generation", model=model, tokenizer=tokenizer,
                        pipeline_class=FlaxTextGenerationPipeline, pad_to_multiple_of=BUCKET)
    assert isinstance(stock, FlaxTextGenerationPipeline) and stock.task == "text-generation"
    out = stock(PROMPTS[0], max_new_tokens=NEW, do_sample=False, return_tensors=True)
    assert out[0]["generated_token_ids"] == refs[0]
    stock.save_pretrained(tmp_path)  # model + tokenizer (sets config.architectures: later calls compile again)
    # reloaded: the same weights, config and tokenizer, so the same tokens (generating from a directory runs in
    # test_works_without_torch, here that would cost one more compile for the new model object)
    from_dir = text_generation_pipeline(str(tmp_path), pad_to_multiple_of=BUCKET)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, from_dir.model.params, model.params))
    assert from_dir.model.config.to_dict() == model.config.to_dict()
    assert from_dir.generation_config.to_dict() == stock.generation_config.to_dict()
    assert from_dir.tokenizer(PROMPTS)["input_ids"] == tokenizer(PROMPTS)["input_ids"]


def test_rejects_non_flax_models(tokenizer):
    with pytest.raises(ValueError, match="not a Flax model"):
        FlaxTextGenerationPipeline(model=object(), tokenizer=tokenizer)


def test_works_without_torch(tmp_path, model, tokenizer, refs):
    """With torch installed, check a process where transformers sees none (USE_TORCH=0): text_generation_pipeline
    and pipeline(TASK, framework="flax", dtype=None) work there."""
    if not torch_installed():
        pytest.skip("torch is not installed: every test of this file already runs without it")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import json
        import modeling_xlstm_flax
        from transformers import pipeline
        from transformers.utils import is_torch_available
        from modeling_xlstm_flax.auto import TASK, FlaxTextGenerationPipeline, text_generation_pipeline
        assert not is_torch_available()
        gen = text_generation_pipeline({str(tmp_path)!r}, pad_to_multiple_of={BUCKET})
        out = gen({PROMPTS[0]!r}, max_new_tokens={NEW}, do_sample=False, return_tensors=True)
        plain = pipeline(TASK, model=gen.model, tokenizer=gen.tokenizer, framework="flax", dtype=None)
        assert isinstance(plain, FlaxTextGenerationPipeline)
        print(json.dumps(out[0]["generated_token_ids"]))
    """)
    env = {**os.environ, "USE_TORCH": "0", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == refs[0]


# ---------------------------------------------------------------------------------------------- bad input (issue 13)
@pytest.mark.parametrize(
    "call,message",
    [
        (lambda gen: gen([]), r"no prompts given \(an empty list\)"),
        (lambda gen: gen(PROMPTS, batch_size=0), r"batch_size=0 is invalid: must be a positive int"),
        (lambda gen: gen(PROMPTS, batch_size=-2), r"batch_size=-2 is invalid"),
        (lambda gen: gen(PROMPTS[0], max_new_tokens=2, do_sample=True, top_p=1.5), r"top_p=1.5 is invalid"),
        (lambda gen: gen(PROMPTS[0], max_new_tokens=2, num_beams=0), r"num_beams=0 is invalid"),
        (lambda gen: gen(PROMPTS[0], pad_to_multiple_of=0), r"pad_to_multiple_of=0 is invalid"),
        (lambda gen: gen(PROMPTS[0], seed="7"), r"seed='7' is invalid: must be an int"),
        (lambda gen: gen(PROMPTS[0], return_full_text=False, return_tensors=True), r"mutually exclusive"),
        (lambda gen: gen(PROMPTS[0], handle_long_generation="cut"), r"handle_long_generation"),
        (lambda gen: gen(42), r"text_inputs must be a str, a chat"),
        (lambda gen: gen([PROMPTS[0], 42]), r"each prompt must be a str or a chat"),
        (lambda gen: gen([{"role": "user"}]), r"must have a 'role' and 'content' key"),
    ],
)
def test_bad_calls_rejected(generator, call, message):
    with pytest.raises(ValueError, match=message):
        call(generator)


def test_unknown_generation_argument_rejected(generator):
    with pytest.raises(TypeError, match="unknown generation arguments for a Flax model: \\['not_a_field'\\]"):
        generator(PROMPTS[0], not_a_field=1)


def test_bad_batch_size_at_construction(model, tokenizer):
    with pytest.raises(ValueError, match=r"batch_size=0 is invalid"):
        text_generation_pipeline(model, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=0 is invalid"):
        hf_pipeline(TASK, model=model, tokenizer=tokenizer, batch_size=0)
