"""The mask and border rule, for every layer type and every form of the mLSTM.

Rule: a masked position (attention_mask == 0) changes no state - neither the mLSTM memory (C, n, m) nor the conv
window of the `mlstm` layer (a masked token never enters it, later tokens convolve over the unmasked ones); a
document border (document_borders True, with `reset_at_document_boundaries`) resets both, so the next document runs
as a fresh sequence.

Property tests of the model against itself: (i) a zero in the middle of the mask == the sequence with those tokens
removed; (ii) a left-padded chunk continuing from a non-empty cache == the unpadded chunk; (iii) borders == a fresh
run of each document (also from a non-empty cache). Forms: the three sequence kernels (no cache), the one-token step
form with a cache, and the segmented prefill (`prefill_segment_size`). Tolerance: 1e-5 max abs on float32 logits
(the perturbed tiny models' logits reach ~10, and float32 reassociation between programs of other batch sizes or
lengths alone moves them by up to ~3e-5 - measured: the same chunk in a batch of 1 and of 2). The kernels are also
checked on their own against the independent float64 loop `mlstm_reference` with large input gates before a border.
"""

import jax
import numpy as np
import pytest

from conftest import max_abs_diff, tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM, mlstm_kernels
from modeling_xlstm_flax.masking import mask_gate_preacts
from modeling_xlstm_flax.mlstm_reference import reference_float64

LAYER_TYPES = ["mlstm_v1", "mlstm"]
FORMS = ["parallel_stabilized", "chunkwise", "recurrent", "step", "segmented"]
TOL = 1e-4  # logits up to ~10: 1e-5 relative
_MODELS = {}


def _model(layer_type: str, form: str, reset: bool = True) -> FlaxXLSTMForCausalLM:
    """A tiny float32 model whose params are perturbed so that gates vary per token (the presets' gate kernels start
    at zero) and input gates reach large values (a stabiliser m far from 0)."""
    key = (layer_type, form, reset)
    if key not in _MODELS:
        kernel = form if form in ("parallel_stabilized", "chunkwise", "recurrent") else "chunkwise"
        config = tiny_config(layer_type, sequence_kernel=kernel, chunk_size=4, reset_at_document_boundaries=reset,
                             prefill_segment_size=5 if form == "segmented" else None)
        model = FlaxXLSTMForCausalLM(config, seed=0)
        leaves, tree = jax.tree_util.tree_flatten(model.params)
        rng = np.random.RandomState(0)
        model.params = jax.tree_util.tree_unflatten(
            tree, [np.asarray(p) + rng.normal(0, 0.3, np.shape(p)).astype(np.float32) for p in leaves])
        _MODELS[key] = model
    return _MODELS[key]


def _run(model, form, ids, mask=None, borders=None, cache=None):
    """(logits (B, S, V), final cache) of `ids` through `form`; `cache` None: a fresh sequence."""
    ids = np.asarray(ids)
    if form == "step":
        cache = model.init_cache(ids.shape[0]) if cache is None else cache
        logits = []
        for t in range(ids.shape[1]):
            extra = {}
            if mask is not None:
                extra["attention_mask"] = mask[:, t:t + 1]
            if borders is not None:
                extra["document_borders"] = borders[:, t:t + 1]
            out = model(ids[:, t:t + 1], past_key_values=cache, **extra)
            cache = out.past_key_values
            logits.append(np.asarray(out.logits))
        return np.concatenate(logits, axis=1), cache
    use_cache = form == "segmented" or cache is not None
    out = model(ids, attention_mask=mask, document_borders=borders, past_key_values=cache, use_cache=use_cache)
    return np.asarray(out.logits), (out.past_key_values if use_cache else None)


def _ids(n, seed):
    return np.random.RandomState(seed).randint(3, 97, (2, n))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_masked_tokens_equal_removed_tokens(layer_type, form):
    """(i) Zeros inside the mask (rows masked at different places, one of them at the sequence start) give the
    logits of the sequence with those tokens removed, at every unmasked position."""
    model = _model(layer_type, form)
    ids = _ids(13, 1)
    mask = np.ones(ids.shape, "i4")
    mask[0, [4, 5, 9]] = 0
    mask[1, [0, 7, 8]] = 0
    logits, _ = _run(model, form, ids, mask)
    for row in range(2):
        kept = mask[row].astype(bool)
        want, _ = _run(model, form, ids[row:row + 1, kept])
        assert max_abs_diff(logits[row, kept], want[0]) <= TOL, row


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_left_padding_after_a_cache_equals_unpadded(layer_type, form):
    """(ii) A left-padded chunk continuing from a non-empty cache == the unpadded chunk from that cache: same
    logits at the real tokens, same next-token logits from the final cache."""
    model = _model(layer_type, form)
    # the prefix as long as the chunk: its call is the same compiled program as the unpadded chunk's
    prefix, chunk, probe = _ids(9, 2), _ids(9, 3), _ids(1, 4)
    _, cache = _run(model, form, prefix, cache=model.init_cache(2))
    pad = 3
    padded = np.concatenate([np.full((2, pad), 1), chunk], axis=1)
    mask = np.concatenate([np.zeros((2, pad), "i4"), np.ones(chunk.shape, "i4")], axis=1)
    got, got_cache = _run(model, form, padded, mask, cache=cache)
    want, want_cache = _run(model, form, chunk, cache=cache)
    assert max_abs_diff(got[:, pad:], want) <= TOL
    assert max_abs_diff(_run(model, "step", probe, cache=got_cache)[0],
                        _run(model, "step", probe, cache=want_cache)[0]) <= TOL


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_document_borders_equal_fresh_documents(layer_type, form):
    """(iii) Documents separated by borders == each document run alone from a fresh state; a border on the first
    token of a call with a non-empty cache also starts afresh. Masked tokens inside a document are still skipped."""
    model = _model(layer_type, form)
    lengths = [5, 5, 5]
    docs = [_ids(n, 10 + i) for i, n in enumerate(lengths)]
    ids = np.concatenate(docs, axis=1)
    borders = np.zeros(ids.shape, bool)
    borders[:, np.cumsum([0] + lengths[:-1])] = True
    _, cache = _run(model, form, _ids(9, 20), cache=model.init_cache(2))  # the program of test (ii)'s prefix
    for start in (None, cache):
        logits, _ = _run(model, form, ids, borders=borders, cache=start)
        at = 0
        for doc in docs:
            want, _ = _run(model, form, doc)
            assert max_abs_diff(logits[:, at:at + doc.shape[1]], want) <= TOL, (at, start is None)
            at += doc.shape[1]


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_borders_with_masks_inside_documents(layer_type):
    """A border and masked tokens in one call: the second document, with a masked token in it, equals that document
    run alone with the token removed (chunkwise form, chunk 4, so the border falls inside a chunk)."""
    model = _model(layer_type, "chunkwise")
    a, b = _ids(6, 30), _ids(7, 31)
    ids = np.concatenate([a, b], axis=1)
    borders = np.zeros(ids.shape, bool)
    borders[:, 6] = True
    mask = np.ones(ids.shape, "i4")
    mask[:, 8] = 0
    logits, _ = _run(model, "chunkwise", ids, mask, borders)
    kept = np.ones(7, bool)
    kept[2] = False
    want, _ = _run(model, "chunkwise", b[:, kept])
    assert max_abs_diff(logits[:, 6:][:, kept], want) <= TOL


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_borders_need_reset_at_document_boundaries(layer_type):
    """document_borders given to a model built with reset_at_document_boundaries=False is an error naming the
    field (it would otherwise be silently ignored); without borders the model runs."""
    model = _model(layer_type, "chunkwise", reset=False)
    ids = _ids(4, 0)
    with pytest.raises(ValueError, match="reset_at_document_boundaries"):
        model(ids, document_borders=np.zeros(ids.shape, bool))
    assert np.all(np.isfinite(model(ids).logits))


def _kernel(form, q, k, v, igate, fgate):
    """h (B, NH, S, DHV) of one kernel form from a zero state; gates (B, NH, S)."""
    if form == "parallel_stabilized":
        return mlstm_kernels.parallel_stabilized(q, k, v, igate, fgate)
    if form == "chunkwise":
        return mlstm_kernels.chunkwise(q, k, v, igate, fgate, chunk_size=4)[0]
    if form == "recurrent":
        return mlstm_kernels.recurrent_sequence(q, k, v, igate, fgate)[0]
    state = mlstm_kernels.zero_state(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    hs = []
    for t in range(q.shape[2]):
        h, state = mlstm_kernels.recurrent_step(state, q[:, :, t], k[:, :, t], v[:, :, t], igate[..., t],
                                                fgate[..., t])
        hs.append(h)
    return np.stack(hs, axis=2)


@pytest.mark.parametrize("form", ["parallel_stabilized", "chunkwise", "recurrent", "step"])
def test_kernels_follow_the_rule_against_float64_reference(form):
    """Each kernel form, gates through `mask_gate_preacts`: after a border that follows input gates of ~40 (a
    stabiliser m ~40, where upstream's forget gate -25 leaves the old memory visible), the next document equals the
    float64 reference loop run on that document alone, with its masked tokens removed. Tolerance 1e-5 (h ~ 1)."""
    rng = np.random.RandomState(0)
    B, NH, S, D, border = 2, 2, 14, 8, 6
    q, k, v = (rng.normal(size=(B, NH, S, D)).astype(np.float32) for _ in range(3))
    igate = rng.normal(size=(B, S, NH)).astype(np.float32)
    igate[:, :border] += 40.0
    fgate = (rng.normal(size=(B, S, NH)) + 3.0).astype(np.float32)
    mask = np.ones((B, S), "i4")
    mask[:, [2, 9]] = 0
    mask[1, border] = 0  # a border on a masked token still resets
    borders = np.zeros((B, S), bool)
    borders[:, border] = True
    ig, fg = (np.swapaxes(np.asarray(g), 1, 2) for g in mask_gate_preacts(igate, fgate, mask, borders))
    h = np.asarray(_kernel(form, q, k, v, ig, fg))
    for row in range(B):
        kept = np.flatnonzero(mask[row, border:]) + border
        pick = lambda a: a[row:row + 1][:, :, kept]  # noqa: E731
        want, _ = reference_float64(pick(q), pick(k), pick(v), np.swapaxes(igate, 1, 2)[row:row + 1][..., kept],
                                    np.swapaxes(fgate, 1, 2)[row:row + 1][..., kept])
        assert max_abs_diff(h[row:row + 1][:, :, kept], want) <= 1e-5, row
    # the same border as upstream's forget gate of -25 (not a reset at m ~ 40): the first document leaks through
    fg_upstream = np.where(borders[..., None], -25.0, fgate).astype(np.float32)
    h_up = np.asarray(_kernel(form, q, k, v, np.swapaxes(igate, 1, 2), np.swapaxes(fg_upstream, 1, 2)))
    want, _ = reference_float64(q[:1, :, border:], k[:1, :, border:], v[:1, :, border:],
                                np.swapaxes(igate, 1, 2)[:1, :, border:], np.swapaxes(fgate, 1, 2)[:1, :, border:])
    assert max_abs_diff(h_up[:1, :, border:], want) > 1e-2
