"""Where the recurrent cache lives inside `sharded_generate`, run in a subprocess with 8 host CPU devices by
tests/test_generation_options.py:

    python tests/sharded_generate_cache.py OUT.json

pytest's own process has one device. The model call is wrapped so that, while the jitted generate is compiled,
`jax.debug.inspect_array_sharding` reports the sharding XLA gave every cache leaf the model receives: the fresh cache
of the prefill, and the cache each step starts from (the one the prefill left, then the one each step left: the
loop's carry). OUT.json: for greedy search and beam search on a (data 2, fsdp 2, tensor 2) mesh, each leaf's
sharding compared with the pinned one (`sharding.cache_shardings`), and whether the tokens equal the single-device
ones.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import tiny_config  # noqa: E402
from modeling_xlstm_flax import FlaxXLSTMForCausalLM  # noqa: E402
from modeling_xlstm_flax import sharded_steps as steps, sharding as sh  # noqa: E402

B, PROMPT, NEW = 8, 5, 3
SEEN: list = []  # (call kind, leaf path, sharding) reported while compiling


def spy_on_cache():
    call = FlaxXLSTMForCausalLM.__call__

    def spied(self, input_ids, *args, past_key_values=None, **kwargs):
        if past_key_values is not None and isinstance(input_ids, jax.core.Tracer):
            kind = "prefill input" if input_ids.shape[1] > 1 else "step input"
            for path, leaf in jax.tree_util.tree_flatten_with_path(past_key_values)[0]:
                jax.debug.inspect_array_sharding(
                    leaf, callback=lambda s, k=kind, p=jax.tree_util.keystr(path): SEEN.append((k, p, s)))
        return call(self, input_ids, *args, past_key_values=past_key_values, **kwargs)

    FlaxXLSTMForCausalLM.__call__ = spied


def main(out_path: str) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    config = tiny_config("mlstm", num_heads=8, chunk_size=4)
    config.eos_token_id = None  # no eos: every row runs to max_new_tokens
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    params = jax.device_get(jax.jit(lambda r: model.init_weights(r, (1, 1)))(jax.random.PRNGKey(0)))
    ids = np.random.RandomState(0).randint(3, config.vocab_size, (B, PROMPT)).astype(np.int32)
    mesh = sh.make_mesh(2, 2, 2)
    want = sh.cache_shardings(jax.eval_shape(lambda: model.init_cache(B)), config, mesh)
    want_leaves = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        want, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))[0]}
    results = {}
    spy_on_cache()
    for name, kwargs in (("greedy", {}), ("beams", {"num_beams": 2})):
        reference = np.asarray(model.generate(ids, params=params, max_new_tokens=NEW, **kwargs).sequences)
        SEEN.clear()
        tokens = steps.sharded_generate(model, mesh, 0, max_new_tokens=NEW, **kwargs)(
            sh.shard_params(params, config, mesh, 0), ids)
        rows = []
        for kind, path, got in SEEN:
            got_ok = bool(got.is_equivalent_to(want_leaves[path], _ndim(model, B, path)))
            rows.append({"kind": kind, "leaf": path, "pinned": got_ok, "got": str(got),
                         "want": str(want_leaves[path].spec)})
        results[name] = {"seen": rows, "tokens_equal": bool(np.array_equal(np.asarray(tokens), reference))}
    Path(out_path).write_text(json.dumps(results, indent=1))


def _ndim(model, batch, path) -> int:
    shapes = {jax.tree_util.keystr(p): len(s.shape) for p, s in jax.tree_util.tree_flatten_with_path(
        jax.eval_shape(lambda: model.init_cache(batch)))[0]}
    return shapes[path]


if __name__ == "__main__":
    main(sys.argv[1])
