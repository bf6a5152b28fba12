"""Command line text generation: `python -m modeling_xlstm_flax.generate --prompt "..."`.

Loads a model directory or Hub id with `FlaxAutoModelForCausalLM.from_pretrained` (and its tokenizer with
`AutoTokenizer`), or, with `--preset NAME`, builds a randomly initialised model from a bundled config and uses raw
UTF-8 bytes as token ids (a smoke run of the generation path; the output is noise). Reports tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlstm-flax-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory or Hub id loadable by FlaxAutoModelForCausalLM")
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
    args = build_parser().parse_args(argv)
    from transformers import AutoTokenizer, FlaxAutoModelForCausalLM

    import modeling_xlstm_flax as xf

    if args.max_new_tokens <= 0:
        raise SystemExit(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    dtype = None if args.dtype is None else getattr(jax.numpy, args.dtype)
    if args.model:
        model = FlaxAutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        encode = lambda text: np.asarray(tokenizer(text)["input_ids"])[None]
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
    else:
        preset = args.preset or "tiny-mlstm-v1"
        config = xf.load_preset(preset, vocab_size=256 + 3, compute_dtype="float32")
        print(f"[random-init smoke model from preset {preset!r}: byte-level ids, the text is noise]", file=sys.stderr)
        model = xf.FlaxXLSTMForCausalLM(config, seed=args.seed, dtype=dtype)
        encode = lambda text: (np.frombuffer(text.encode("utf-8"), np.uint8).astype("i4") + 3)[None]
        decode = lambda ids: bytes(int(i) - 3 for i in ids if int(i) >= 3).decode("utf-8", errors="replace")
        pad_id = config.pad_token_id
    input_ids = encode(args.prompt)
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams,
                  pad_token_id=pad_id)
    if args.do_sample:
        kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    generate = jax.jit(lambda params, ids, key: model.generate(ids, params=params, prng_key=key, **kwargs).sequences)
    key = jax.random.PRNGKey(args.seed)
    start = time.perf_counter()
    sequences = np.asarray(generate(model.params, input_ids, key))
    first = time.perf_counter() - start
    start = time.perf_counter()
    sequences = np.asarray(generate(model.params, input_ids, key))
    elapsed = time.perf_counter() - start
    new = sequences[0, input_ids.shape[1]:]
    print(args.prompt + decode(new))
    print(f"[{len(new)} new tokens: {len(new) / elapsed:.1f} tokens/s compiled; first call incl. compile "
          f"{first:.1f} s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
