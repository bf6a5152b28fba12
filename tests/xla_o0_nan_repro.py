"""Reproducer (not a test): XLA:CPU of jaxlib 0.10.2 at `--xla_backend_optimization_level=0` (LLVM -O0) compiles the
gradient of the parallel / chunkwise mLSTM forms into NaN after one AdamW step; the same gradient is finite

- compiled at the default level, or at levels 1-3, or with --xla_llvm_disable_expensive_passes=true;
- evaluated op by op (jax.grad without jit) at level 0, equal to the default-level gradient to 1.2e-5;
- compiled at level 0 with jaxlib 0.12.0.1.

So the fault is XLA:CPU 0.10's code generation at -O0, not the model (checkify places the NaN in the reduce_sum that
transposes `log_d + igate[..., None, :]` in mlstm_kernels.parallel_stabilized; its inputs are finite op by op).

    XLA_FLAGS=--xla_backend_optimization_level=0 python tests/xla_o0_nan_repro.py   # jaxlib 0.10: NaN after step 1
    python tests/xla_o0_nan_repro.py                                                # finite
"""

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_xlstm_flax import FlaxXLSTMForCausalLM, load_preset  # noqa: E402

model = FlaxXLSTMForCausalLM(load_preset("tiny-mlstm-v1", sequence_kernel="parallel_stabilized"), seed=0)
ids = np.random.RandomState(0).randint(3, 97, (2, 17))


def loss_fn(params):
    logits = model(ids[:, :-1], params=params, jit=False).logits
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1))


optimizer = optax.adamw(1e-2)
params = jax.tree_util.tree_map(jnp.asarray, model.params)
state = optimizer.init(params)
for step in range(2):
    compiled = jax.jit(jax.grad(loss_fn))(params)
    eager = jax.grad(loss_fn)(params)
    nonfinite = lambda g: int(sum(np.sum(~np.isfinite(x)) for x in jax.tree_util.tree_leaves(g)))  # noqa: E731
    print(f"jaxlib {jax.__version__} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} step {step}: non-finite "
          f"gradient entries compiled {nonfinite(compiled)}, op by op {nonfinite(eager)}")
    updates, state = optimizer.update(eager, state, params)
    params = optax.apply_updates(params, updates)
