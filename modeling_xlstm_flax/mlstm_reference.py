"""The mLSTM recurrence as a plain float64 NumPy loop over time: the independent oracle the kernel tests and the GPU
device check compare every kernel form against (NumPy only, so it also loads without jax or the package).

Per step t, with log f = log sigmoid(fgate), k scaled by 1/sqrt(DK):
    m_t = max(log f + m_{t-1}, igate);  C_t = e^(log f + m_{t-1} - m_t) C_{t-1} + e^(igate - m_t) k v^T
    n_t likewise with k;  h_t = q C_t / (max(|q . n_t|, e^(-m_t)) + eps)
"""

import numpy as np


def reference_float64(q, k, v, igate, fgate, state=None, eps=1e-6):
    """Plain float64 loop over time of the mLSTM recurrence (B, NH, S, D) -> h, (C, n, m)."""
    q, k, v, igate, fgate = (np.asarray(x, np.float64) for x in (q, k, v, igate, fgate))
    B, NH, S, DK = q.shape
    k = k / np.sqrt(DK)
    if state is None:
        C, n, m = np.zeros((B, NH, DK, v.shape[-1])), np.zeros((B, NH, DK)), np.zeros((B, NH))
    else:
        C, n, m = (np.asarray(x, np.float64) for x in state)
    out = np.zeros(v.shape)
    for t in range(S):
        log_f = -np.logaddexp(0.0, -fgate[:, :, t])
        m_new = np.maximum(log_f + m, igate[:, :, t])
        f_act, i_act = np.exp(log_f + m - m_new), np.exp(igate[:, :, t] - m_new)
        C = f_act[..., None, None] * C + i_act[..., None, None] * np.einsum("bhd,bhe->bhde", k[:, :, t], v[:, :, t])
        n = f_act[..., None] * n + i_act[..., None] * k[:, :, t]
        m = m_new
        den = np.maximum(np.abs(np.einsum("bhd,bhd->bh", q[:, :, t], n)), np.exp(-m)) + eps
        out[:, :, t] = np.einsum("bhd,bhde->bhe", q[:, :, t], C) / den[..., None]
    return out, (C, n, m)
