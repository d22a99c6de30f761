"""fla_sdpa.py -- shared by scripts/fla_check.py and scripts/fla_train.py: fla's attention layers
call the flash-attn package; where it is not installed, use_sdpa_if_needed() puts the same math in
its place through PyTorch's SDPA (causal, window (w-1, 0) = keys t-w+1..t, grouped KV heads)."""
import torch


def sdpa_attn(q, k, v, causal=True, window_size=(-1, -1), **_):
    T, H, Hkv = q.shape[1], q.shape[2], k.shape[2]
    k = k.repeat_interleave(H // Hkv, dim=2)
    v = v.repeat_interleave(H // Hkv, dim=2)
    i = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    mask = j <= i
    if window_size[0] >= 0:
        mask &= j >= i - window_size[0]
    o = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2)


def use_sdpa_if_needed():
    """Install sdpa_attn as fla's flash_attn_func if flash-attn is missing; True if it did."""
    import fla.layers.attn as fla_attn
    if fla_attn.flash_attn_func is not None:
        return False
    fla_attn.flash_attn_func = sdpa_attn
    return True
