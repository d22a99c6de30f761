#!/usr/bin/env python3
"""Convert a flash-linear-attention DeltaNet or Gated DeltaNet checkpoint (a Hugging Face model
folder: config.json plus model.safetensors, or several *.safetensors shards) into a deltanet.c
checkpoint that ./infer and ./train_deltanet --resume read.

usage: python3 scripts/from_fla.py FLA_MODEL_DIR OUT.safetensors

deltanet.c checkpoints already use the reference's tensor names and layouts, so this only checks
that the config is one deltanet.c computes (model_type delta_net: DeltaNet with short convolutions,
beta, L2-normalised silu q/k, output RMSNorm, no gate; model_type gated_deltanet: GatedDeltaNet with
short convolutions, the swish output gate, no negative eigenvalues, as many value heads as heads,
an integer expand_v; attention layers sharing one set of heads / KV heads / RoPE base),
copies the tensors (F32 and BF16 as they are, F16 widened to F32), and writes the config into
__metadata__. Pure Python: no torch or numpy needed.
"""
import glob
import json
import os
import struct
import sys
import tempfile

FORMAT_VERSION = "1"


def die(msg):
    sys.exit(f"from_fla.py: {msg}")


def read_safetensors(path):
    """-> (header dict without __metadata__, data offset, file size)"""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            die(f"{path}: too short to be safetensors")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            die(f"{path}: header length {n} runs past the end of the file")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            die(f"{path}: header is not JSON ({e})")
    header.pop("__metadata__", None)
    return header, 8 + n, size


def config_from_fla(cfg):
    def need(key, want, default=None):
        got = cfg.get(key, want if default is None else default)
        if got != want:
            die(f"config.json: {key} = {got!r}; deltanet.c computes {key} = {want!r}")

    model_type = cfg.get("model_type", "delta_net")
    if model_type not in ("delta_net", "gated_deltanet"):
        die(f"config.json: model_type {model_type!r}; deltanet.c reads delta_net and gated_deltanet")
    gated = model_type == "gated_deltanet"
    if gated:
        # GatedDeltaNetConfig's defaults where a key is absent
        for key, want, default in [("use_short_conv", True, True), ("use_gate", True, True),
                                   ("allow_neg_eigval", False, False)]:
            need(key, want, default)
        if cfg.get("output_gate_activation", "swish") not in ("swish", "silu"):
            die(f"config.json: output_gate_activation {cfg['output_gate_activation']!r}; deltanet.c's gate is swish")
        Hg, Kg, ev = cfg.get("num_heads", 6), cfg.get("head_dim", 256), cfg.get("expand_v", 2.0)
        if cfg.get("num_v_heads") not in (None, Hg):
            die(f"config.json: num_v_heads {cfg['num_v_heads']!r} != num_heads {Hg}; deltanet.c has no grouped value heads")
        if float(ev) != int(ev) or int(ev) < 1:
            die(f"config.json: expand_v {ev!r}; deltanet.c takes a positive integer")
    else:
        for key, want in [("use_short_conv", True), ("use_beta", True), ("use_gate", False),
                          ("use_output_norm", True), ("qk_norm", "l2"), ("qk_activation", "silu"),
                          ("expand_k", 1), ("expand_v", 1), ("allow_neg_eigval", False)]:
            need(key, want)
    if cfg.get("hidden_act", "swish") not in ("swish", "silu"):
        die(f"config.json: hidden_act {cfg['hidden_act']!r}; deltanet.c's MLP is SwiGLU")
    D, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_heads"]
    if gated:
        # no 'D' layer: its heads only have to tile d_model (the presets' rule gives the geometry back)
        H = H if D % H == 0 else 1
    elif D % H:
        die(f"config.json: hidden_size {D} is not a multiple of num_heads {H}")
    inter = cfg.get("intermediate_size")
    if inter is None:
        ratio = cfg.get("hidden_ratio") or 4
        inter = int(D * ratio * 2 / 3)
        inter = 256 * ((inter + 255) // 256)
    vocab = cfg["vocab_size"]
    layers = ["N" if gated else "D"] * L
    attn = cfg.get("attn")
    heads = kv = window = None
    rope = 10000.0
    specs = [] if attn is None else ([attn] if isinstance(attn, dict) else attn)
    for spec in specs:
        if spec.get("qkv_bias") or spec.get("qk_norm"):
            die("config.json: attention with qkv_bias or qk_norm is not what deltanet.c computes")
        h, k = spec["num_heads"], spec.get("num_kv_heads") or spec["num_heads"]
        r = float(spec.get("rope_theta", 10000.0))
        if heads is not None and (h, k, r) != (heads, kv, rope):
            die("config.json: attention specs with different heads / KV heads / rope_theta; deltanet.c has one set")
        heads, kv, rope = h, k, r
        w = spec.get("window_size")
        if w is not None:
            if window is not None and w != window:
                die("config.json: two different window sizes; deltanet.c has one")
            window = w
        for l in spec["layers"]:
            layers[l] = "S" if w is not None else "G"
    return {
        "format": "deltanet.c", "format_version": FORMAT_VERSION,
        "vocab_size": vocab, "padded_vocab": (vocab + 127) // 128 * 128, "d_model": D, "n_layer": L,
        "n_head": H, "head_dim": D // H, "conv_size": cfg.get("conv_size", 4), "hidden_size": inter,
        "norm_eps": cfg.get("norm_eps", 1e-6), "tie_embeddings": int(bool(cfg.get("tie_word_embeddings", False))),
        "attn_heads": heads or H, "attn_kv_heads": kv or heads or H, "window": window or 512,
        "rope_base": rope, "gdn_heads": Hg if gated else H, "gdn_head_dim": Kg if gated else max(1, D // H // 2),
        "gdn_expand_v": int(ev) if gated else 2, "layers": "".join(layers), "fla_config": json.dumps(cfg),
    }


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    src, out = sys.argv[1], sys.argv[2]
    cfg_path = os.path.join(src, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        die(f"{cfg_path}: {e}")
    meta = {k: str(v) for k, v in config_from_fla(cfg).items()}
    files = sorted(glob.glob(os.path.join(src, "*.safetensors")))
    if not files:
        die(f"{src}: no *.safetensors file")
    tensors = []  # (name, dtype, shape, path, begin, end)
    for path in files:
        header, start, size = read_safetensors(path)
        for name, t in header.items():
            b, e = t["data_offsets"]
            if start + e > size:
                die(f"{path}: tensor {name} runs past the end of the file")
            if t["dtype"] not in ("F32", "BF16", "F16"):
                die(f"{path}: tensor {name} has dtype {t['dtype']}")
            if name == "lm_head.weight" and meta["tie_embeddings"] == "1":
                continue  # tied: the embedding is the head
            tensors.append((name, t["dtype"], t["shape"], path, start + b, start + e))
    tensors.sort(key=lambda x: x[0])
    hdr, off = {"__metadata__": meta}, 0
    for name, dtype, shape, _, b, e in tensors:
        n = (e - b) * (2 if dtype == "F16" else 1)
        hdr[name] = {"dtype": "F32" if dtype == "F16" else dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    try:
        write_atomic(out, js, tensors)
    except OSError as e:
        die(f"{out}: {e}")
    print(f"wrote {out}: {len(tensors)} tensors, layers {meta['layers']}, d_model {meta['d_model']}")


def write_atomic(out, js, tensors):
    """Write the file under a unique temporary name beside out (never a fixed name another run
    could share), fsync it, rename it over out and fsync the directory; on any error, including
    a die() on a short read, the temporary is removed and out is untouched."""
    d = os.path.dirname(out) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(out) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)  # mkstemp makes it 0600; give it a normal file's mode
            f.write(struct.pack("<Q", len(js)) + js)
            for name, dtype, _, path, b, e in tensors:
                with open(path, "rb") as g:
                    g.seek(b)
                    data = g.read(e - b)
                if len(data) != e - b:
                    die(f"{path}: tensor {name} is cut short")
                if dtype == "F16":
                    vals = [v for (v,) in struct.iter_unpack("<e", data)]
                    data = struct.pack(f"<{len(vals)}f", *vals)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    try:  # the rename reaches the disk with the directory; some filesystems cannot fsync one
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


if __name__ == "__main__":
    main()
