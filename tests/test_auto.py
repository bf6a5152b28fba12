"""The first-hour entry points under both transformers majors: `from modeling_xlstm_flax import
FlaxAutoModelForCausalLM, FlaxAutoModel` resolves our config folders and transformers' `xLSTMConfig` (PyTorch layout)
folders to our classes (the xlstm folder's config without transformers' model-type warning; another model_type
refused by name); transformers' stock `pipeline("text-generation", ...)` builds ours without torch, and only for our
models."""

import json
import logging

import numpy as np
import pytest
import transformers

from modeling_xlstm_flax import FlaxAutoModel, FlaxAutoModelForCausalLM, FlaxXLSTMForCausalLM, FlaxXLSTMModel
from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config
from modeling_xlstm_flax.convert_common import convert_flax_to_pytorch
from modeling_xlstm_flax import bundled_model_path

IS_V4 = int(transformers.__version__.split(".")[0]) < 5


def test_is_transformers_class_under_4x():
    if IS_V4:
        assert FlaxAutoModelForCausalLM is transformers.FlaxAutoModelForCausalLM
        assert FlaxAutoModel is transformers.FlaxAutoModel
    else:
        assert not hasattr(transformers, "FlaxAutoModelForCausalLM")


def test_bundled_model_resolves_to_our_classes():
    lm = FlaxAutoModelForCausalLM.from_pretrained(bundled_model_path())
    backbone = FlaxAutoModel.from_pretrained(bundled_model_path())
    assert type(lm) is FlaxXLSTMForCausalLM and type(backbone) is FlaxXLSTMModel
    direct = FlaxXLSTMForCausalLM.from_pretrained(bundled_model_path())
    ids = np.array([[5, 9, 12, 40]], dtype="i4")
    np.testing.assert_array_equal(np.asarray(lm(ids).logits), np.asarray(direct(ids).logits))


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_pytorch_layout_folder_loads_without_type_warning(tmp_path):
    pt_config = transformers.xLSTMConfig(vocab_size=97, hidden_size=64, num_heads=2, num_hidden_layers=2,
                                         dtype="float32")
    model = FlaxXLSTMForCausalLM(from_transformers_config(pt_config), seed=1)
    model.save_pretrained(tmp_path / "flax")
    convert_flax_to_pytorch(tmp_path / "flax", tmp_path / "pt", progress=False)
    assert json.loads((tmp_path / "pt" / "config.json").read_text())["model_type"] == "xlstm"
    handler = _Messages()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        loaded = FlaxAutoModelForCausalLM.from_pretrained(tmp_path / "pt")
    finally:
        logger.removeHandler(handler)
    assert not [m for m in handler.messages if "to instantiate a model of type" in m], handler.messages
    ids = np.array([[3, 1, 4, 1, 5]], dtype="i4")
    # fp32 round trip through the PyTorch layout: same weights, same logits (~1e-6)
    np.testing.assert_allclose(np.asarray(loaded(ids).logits), np.asarray(model(ids).logits), atol=1e-5)


@pytest.mark.skipif(IS_V4, reason="under 4.x the class is transformers' own (its error text)")
def test_other_model_type_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        FlaxAutoModelForCausalLM.from_pretrained(tmp_path)


_STOCK_PIPELINE_SCRIPT = """
import json, sys
from modeling_xlstm_flax import FlaxAutoModelForCausalLM
from modeling_xlstm_flax import bundled_model_path
from modeling_xlstm_flax.auto import FlaxTextGenerationPipeline
from transformers import AutoTokenizer, pipeline
from transformers.utils import is_torch_available
assert not is_torch_available()
path = bundled_model_path()
model = FlaxAutoModelForCausalLM.from_pretrained(path)
extra = json.loads(sys.argv[1])
pipe = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(path), **extra)
assert type(pipe) is FlaxTextGenerationPipeline, type(pipe)
out = pipe("The with statement", max_new_tokens=6, do_sample=False, return_tensors=True)
print(json.dumps(out[0]["generated_token_ids"]))
"""


def test_stock_pipeline_without_torch():
    """transformers' `pipeline("text-generation", model=<our model>, tokenizer=tok)` in a process without torch
    (USE_TORCH=0 where torch is installed): under 5.x exactly as written (it raised NameError: torch), under 4.x
    with `framework="flax"` (4.x infers the framework with torch). Greedy tokens equal `model.generate`'s."""
    import os
    import subprocess
    import sys

    from transformers import AutoTokenizer

    extra = {"framework": "flax"} if IS_V4 else {}
    env = {**os.environ, "USE_TORCH": "0", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _STOCK_PIPELINE_SCRIPT, json.dumps(extra)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    ids = np.array([tokenizer("The with statement")["input_ids"]], dtype="i4")
    model = FlaxXLSTMForCausalLM.from_pretrained(bundled_model_path())
    expected = np.asarray(model.generate(ids, max_new_tokens=6, do_sample=False).sequences)[0].tolist()
    assert tokens == expected


@pytest.mark.skipif(not IS_V4, reason="transformers 5 has no Flax models other than ours")
def test_stock_task_keeps_transformers_pipeline_for_other_models():
    """Importing the package changes the stock "text-generation" task for our models only: another Flax model
    gets transformers' own TextGenerationPipeline (it got ours before)."""
    from transformers import AutoTokenizer, FlaxGPT2LMHeadModel, GPT2Config, pipeline
    from transformers.pipelines.text_generation import TextGenerationPipeline

    other = FlaxGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=800))
    pipe = pipeline("text-generation", model=other, tokenizer=AutoTokenizer.from_pretrained(bundled_model_path()),
                    framework="flax")
    assert type(pipe) is TextGenerationPipeline
