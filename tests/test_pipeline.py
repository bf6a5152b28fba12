"""The Flax text-generation pipeline (modeling_xlstm_flax.pipeline) against model.generate."""

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
from modeling_xlstm_flax.pipeline import TASK, FlaxTextGenerationPipeline, text_generation_pipeline

PROMPTS = ["The object", "A list of things is made"]  # different token lengths: left padding
NEW = 8


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
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return FlaxXLSTMForCausalLM(tiny_config(vocab_size=len(tokenizer), chunk_size=8), seed=0)


@pytest.fixture(scope="module")
def generator(model, tokenizer):
    from transformers import pipeline

    return pipeline(TASK, model=model, tokenizer=tokenizer)


def _ids(tokenizer, text):
    return np.asarray(tokenizer(text, return_tensors="np")["input_ids"])


@pytest.fixture(scope="module")
def refs(model, tokenizer):
    """Greedy model.generate of each prompt alone: full sequences (prompt + NEW tokens) as lists."""
    return [np.asarray(model.generate(_ids(tokenizer, p), max_new_tokens=NEW,
                                      pad_token_id=tokenizer.pad_token_id).sequences)[0].tolist() for p in PROMPTS]


def test_registered_and_idempotent():
    from transformers.pipelines import PIPELINE_REGISTRY

    import modeling_xlstm_flax

    modeling_xlstm_flax.register_auto_classes()
    modeling_xlstm_flax.register_auto_classes()
    assert TASK in PIPELINE_REGISTRY.get_supported_tasks()
    assert PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is FlaxTextGenerationPipeline


def test_defaults_follow_transformers_text_generation(generator, model):
    config = generator.generation_config
    assert isinstance(generator, FlaxTextGenerationPipeline) and generator.framework == "flax"
    assert (config.max_new_tokens, config.do_sample, config.temperature) == (256, True, 0.7)
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (2, 1, 0)
    assert model.generation_config.do_sample is False  # the model's own config untouched


def test_greedy_single_equals_generate(generator, tokenizer, refs):
    prompt, ref = PROMPTS[1], refs[1]
    assert generator(prompt, max_new_tokens=NEW, do_sample=False, return_tensors=True) == [
        {"generated_token_ids": ref}]
    text = tokenizer.decode(ref, skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert generator(prompt, max_new_tokens=NEW, do_sample=False) == [{"generated_text": text}]
    assert generator(prompt, max_new_tokens=NEW, do_sample=False, return_full_text=False) == [
        {"generated_text": text[len(prompt):]}]


def test_greedy_batched_equals_generate(generator, model, tokenizer, refs):
    outs = generator(PROMPTS, max_new_tokens=NEW, do_sample=False, return_tensors=True, batch_size=2)
    assert len(outs) == len(PROMPTS) and all(len(o) == 1 for o in outs)
    # == model.generate on the same left-padded batch (pads stripped) ...
    enc = tokenizer(PROMPTS, padding=True, return_tensors="np")
    assert enc["attention_mask"].min() == 0  # the batch really is padded
    batch = np.asarray(model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=NEW,
                                      pad_token_id=tokenizer.pad_token_id).sequences)
    width = enc["input_ids"].shape[1]
    for row, (prompt, out) in enumerate(zip(PROMPTS, outs)):
        n = _ids(tokenizer, prompt).shape[1]
        assert out[0]["generated_token_ids"] == batch[row, width - n :].tolist()
        assert out[0]["generated_token_ids"] == refs[row]  # ... and == each prompt generated alone
    # a list with the default batch_size (1), and length bucketing, give the same
    assert generator(PROMPTS, max_new_tokens=NEW, do_sample=False, return_tensors=True) == outs
    assert generator(PROMPTS[0], max_new_tokens=NEW, do_sample=False, return_tensors=True,
                     pad_to_multiple_of=16) == outs[0]


def test_batched_text_outputs(generator, tokenizer, refs):
    full = generator(PROMPTS, max_new_tokens=NEW, do_sample=False, batch_size=2)
    new = generator(PROMPTS, max_new_tokens=NEW, do_sample=False, batch_size=2, return_full_text=False)
    for prompt, ref, f, n in zip(PROMPTS, refs, full, new):
        text = tokenizer.decode(ref, skip_special_tokens=True)
        assert f == [{"generated_text": text}]
        assert n == [{"generated_text": text[len(prompt):]}]


def test_sampling_reproducible_with_seed(generator, model, tokenizer):
    kwargs = dict(do_sample=True, temperature=1.3, top_k=20, top_p=0.9)
    a = generator(PROMPTS[0], seed=7, max_new_tokens=NEW, return_tensors=True, **kwargs)
    b = generator(PROMPTS[0], seed=7, max_new_tokens=NEW, return_tensors=True, **kwargs)
    c = generator(PROMPTS[0], seed=8, max_new_tokens=NEW, return_tensors=True, **kwargs)
    assert a == b and a != c
    ref = model.generate(_ids(tokenizer, PROMPTS[0]), prng_key=jax.random.PRNGKey(7), max_new_tokens=NEW,
                         pad_token_id=tokenizer.pad_token_id, **kwargs).sequences
    assert a[0]["generated_token_ids"] == np.asarray(ref)[0].tolist()
    # without a seed, calls draw fresh keys from the pipeline's stream (seeded at construction)
    d = generator(PROMPTS[0], max_new_tokens=NEW, return_tensors=True, **kwargs)
    e = generator(PROMPTS[0], max_new_tokens=NEW, return_tensors=True, **kwargs)
    assert d != e


def test_num_return_sequences_and_beams(generator, model, tokenizer):
    samples = generator(PROMPTS[0], max_new_tokens=NEW, do_sample=True, seed=3, num_return_sequences=3,
                        return_tensors=True)
    assert len(samples) == 3 and len({tuple(s["generated_token_ids"]) for s in samples}) > 1
    beams = generator(PROMPTS[0], max_new_tokens=NEW, do_sample=False, num_beams=3, num_return_sequences=2,
                      return_tensors=True)
    ids = _ids(tokenizer, PROMPTS[0])
    ref = np.asarray(model.generate(ids, attention_mask=np.ones_like(ids), max_new_tokens=NEW, num_beams=3,
                                    num_return_sequences=2, pad_token_id=tokenizer.pad_token_id).sequences)
    assert [b["generated_token_ids"] for b in beams] == ref.tolist()
    with pytest.raises(ValueError, match="num_return_sequences"):
        generator(PROMPTS[0], max_new_tokens=NEW, do_sample=False, num_return_sequences=2)


def test_stock_task_with_pipeline_class_and_model_dir(model, tokenizer, refs, tmp_path):
    from transformers import pipeline

    stock = pipeline("text-generation", model=model, tokenizer=tokenizer, pipeline_class=FlaxTextGenerationPipeline)
    assert isinstance(stock, FlaxTextGenerationPipeline) and stock.task == "text-generation"
    out = stock(PROMPTS[0], max_new_tokens=NEW, do_sample=False, return_tensors=True)
    assert out[0]["generated_token_ids"] == refs[0]
    stock.save_pretrained(tmp_path)  # model + tokenizer
    from_dir = text_generation_pipeline(str(tmp_path))
    out = from_dir(PROMPTS[0], max_new_tokens=NEW, do_sample=False, return_tensors=True)
    assert out[0]["generated_token_ids"] == refs[0]


def test_rejects_non_flax_models(tokenizer):
    with pytest.raises(ValueError, match="not a Flax model"):
        FlaxTextGenerationPipeline(model=object(), tokenizer=tokenizer)


def test_works_without_torch(tmp_path, model, tokenizer, refs):
    """transformers' pipeline() needs torch to infer the framework and to read its dtype argument;
    text_generation_pipeline (pipeline() with framework="flax", dtype=None) works without it. USE_TORCH=0 makes
    transformers see no torch."""
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import json
        import modeling_xlstm_flax
        from transformers import pipeline
        from transformers.utils import is_torch_available
        from modeling_xlstm_flax.pipeline import TASK, FlaxTextGenerationPipeline, text_generation_pipeline
        assert not is_torch_available()
        gen = text_generation_pipeline({str(tmp_path)!r})
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
    ],
)
def test_bad_calls_rejected(generator, call, message):
    with pytest.raises(ValueError, match=message):
        call(generator)


def test_bad_batch_size_at_construction(model, tokenizer):
    from transformers import pipeline

    with pytest.raises(ValueError, match=r"batch_size=0 is invalid"):
        pipeline(TASK, model=model, tokenizer=tokenizer, batch_size=0)


def test_stock_task_without_pipeline_class_builds_ours(model, tokenizer, refs):
    """pipeline("text-generation", model=<Flax model>) alone: transformers' own class would fail on a Flax model;
    registration points the stock task at a dispatcher, so it builds FlaxTextGenerationPipeline."""
    pytest.importorskip("torch")  # transformers' pipeline() needs it to read its dtype argument
    from transformers import pipeline

    stock = pipeline("text-generation", model=model, tokenizer=tokenizer)
    assert type(stock) is FlaxTextGenerationPipeline
    out = stock(PROMPTS[0], max_new_tokens=NEW, do_sample=False, return_tensors=True)
    assert out[0]["generated_token_ids"] == refs[0]
