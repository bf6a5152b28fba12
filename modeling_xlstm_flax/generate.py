"""Command line text generation: `xlstm-flax generate --prompt "..."`.

By default loads the bundled model (a small xLSTM trained on CPython's pydoc topics, shipped in the package) with
`FlaxAutoModelForCausalLM.from_pretrained`; `--model` takes any other model directory or Hub id (its tokenizer is
loaded with `AutoTokenizer`). `--preset NAME` instead builds a randomly initialised model from a bundled config and
uses raw UTF-8 bytes as token ids (a smoke run of the generation path; the output is noise). Generation runs
through the text-generation pipeline when available, else `model.generate`; reports tokens/s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


def bundled_model_path() -> Path:
    """Folder of the bundled model (config, safetensors, tokenizer, card) inside the installed package."""
    return Path(__file__).parent / "bundled_model"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlstm-flax generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory or Hub id loadable by FlaxAutoModelForCausalLM "
                        "(default: the bundled pydoc model)")
    source.add_argument("--preset", default=None,
                        help="bundled config name for a random-init smoke model (see configuration/presets)")
    parser.add_argument("--prompt", default="The xLSTM", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="number of tokens to generate")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (1: no beam search)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling and random init")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="compute dtype (default: the config's compute_dtype)")
    return parser


def main(argv=None) -> int:
    """The command: bad input (a missing model folder, an invalid option value) is one line on stderr, exit 1."""
    from .cli import run_command

    return run_command("xlstm-flax generate", _main, argv)


def _check_options(args) -> None:
    from .cli import UsageError

    if args.max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.preset and not args.prompt:  # (a model's tokenizer starts an empty prompt from its bos token)
        raise UsageError("--prompt is empty: the random-init --preset model has no bos token to start from; give "
                         "some text to continue")
    if args.num_beams < 1:
        raise UsageError(f"--num-beams must be >= 1 (1: no beam search), got {args.num_beams}")
    if args.do_sample:
        if not math.isfinite(args.temperature) or args.temperature <= 0:
            raise UsageError(f"--temperature must be a positive finite number, got {args.temperature}")
        if args.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0: no top-k filter), got {args.top_k}")
        if not 0 < args.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")


def _text_and_count(tokenizer, prompt: str, sequence: list, config) -> tuple[str, int]:
    """(the prompt and its continuation, the number of generated tokens) from the generated ids (the prompt's ids
    first): the count is of the ids the model produced, up to and including an end-of-sequence token (what follows
    it is padding), not of the decoded text re-tokenized (which merges and splits tokens differently)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    new = list(sequence[len(prompt_ids):])
    eos = config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    count = next((i + 1 for i, token in enumerate(new) if token in eos), len(new))
    start = len(tokenizer.decode(prompt_ids, skip_special_tokens=True))
    return prompt + tokenizer.decode(list(sequence), skip_special_tokens=True)[start:], count


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _check_options(args)
    import jax  # here, not at the top: `xlstm-flax generate --help` needs no jax
    import numpy as np

    import modeling_xlstm_flax as xf

    dtype = None if args.dtype is None else getattr(jax.numpy, args.dtype)
    sample = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) if args.do_sample else {}
    if not args.preset:
        from .cli import resolve_model_source
        from .pipeline import text_generation_pipeline

        source = resolve_model_source(args.model) if args.model else str(bundled_model_path())
        generator = text_generation_pipeline(source, model_kwargs={"dtype": dtype})
        call = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams,
                    seed=args.seed, return_tensors=True, **sample)
        start = time.perf_counter()
        generator(args.prompt, **call)
        first = time.perf_counter() - start
        start = time.perf_counter()
        sequence = generator(args.prompt, **call)[0]["generated_token_ids"]  # prompt ids + new ids
        elapsed = time.perf_counter() - start
        text, new_tokens = _text_and_count(generator.tokenizer, args.prompt, sequence, generator.model.config)
    else:
        config = xf.load_preset(args.preset, vocab_size=256 + 3, compute_dtype="float32")
        print(f"[random-init smoke model from preset {args.preset!r}: byte-level ids, the text is noise]",
              file=sys.stderr)
        model = xf.FlaxXLSTMForCausalLM(config, seed=args.seed, dtype=dtype)
        input_ids = (np.frombuffer(args.prompt.encode("utf-8"), np.uint8).astype("i4") + 3)[None]
        kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams,
                      pad_token_id=config.pad_token_id, **sample)
        generate = jax.jit(lambda p, ids, key: model.generate(ids, params=p, prng_key=key, **kwargs).sequences)
        key = jax.random.PRNGKey(args.seed)
        start = time.perf_counter()
        np.asarray(generate(model.params, input_ids, key))
        first = time.perf_counter() - start
        start = time.perf_counter()
        sequences = np.asarray(generate(model.params, input_ids, key))
        elapsed = time.perf_counter() - start
        new = sequences[0, input_ids.shape[1]:]
        text = args.prompt + bytes(int(i) - 3 for i in new if int(i) >= 3).decode("utf-8", errors="replace")
        new_tokens = len(new)
    print(text, flush=True)
    print(f"[{new_tokens} new tokens: {new_tokens / elapsed:.1f} tokens/s after compilation; first call incl. "
          f"compile {first:.1f} s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
