#!/usr/bin/env bash
# test_convert.sh -- scripts/from_fla.py: a flash-linear-attention model folder (config.json +
# safetensors with the reference's names; F32, BF16 and F16 tensors; a hybrid with sliding-window
# and global layers) converts into a checkpoint that ./infer loads strictly and scores; tensors are
# copied exactly; the output is written atomically (no temporary left behind, on success or on
# failure); configs deltanet.c does not compute are refused. The same for a Gated DeltaNet hybrid
# (model_type gated_deltanet, N S N G), and a round trip: the fla_config that deltanet.c writes into a
# GDN hybrid checkpoint (trained one step by $DN_TRAINER, when make test has built it), given back to
# from_fla.py as config.json, reproduces the config and every tensor. Run from the repo root.
set -u
source "$(dirname "$0")/lib.sh"
test_tmp dn_convert
# expect_refusal DIR KEY WHAT: scripts/from_fla.py refuses the checkpoint folder DIR in one line naming KEY
expect_refusal() {
    local log="$1.log"
    if python3 scripts/from_fla.py "$1" "$1.safetensors" >"$log" 2>&1; then
        bad "$3 accepted"
    elif grep -q "$2" "$log" && [ "$(wc -l <"$log")" -eq 1 ]; then
        ok "$3 refused: $(cat "$log")"
    else
        bad "$3: unclear refusal: $(cat "$log")"
    fi
}
mkdir -p "$tmp/fla"

python3 - "$tmp" <<'PY'
import json, random, struct, sys
tmp = sys.argv[1]
D, H, L, V, I = 64, 2, 4, 300, 256
cfg = {"model_type": "delta_net", "hidden_size": D, "num_hidden_layers": L, "num_heads": H,
       "expand_k": 1, "expand_v": 1, "use_short_conv": True, "conv_size": 4, "use_beta": True,
       "use_gate": False, "use_output_norm": True, "qk_norm": "l2", "qk_activation": "silu",
       "norm_eps": 1e-6, "hidden_ratio": 4, "intermediate_size": None, "vocab_size": V,
       "tie_word_embeddings": False,
       "attn": [{"layers": [1], "num_heads": 4, "num_kv_heads": 2, "window_size": 8, "rope_theta": 10000.0},
                {"layers": [3], "num_heads": 4, "num_kv_heads": 2, "window_size": None, "rope_theta": 10000.0}]}
json.dump(cfg, open(f"{tmp}/fla/config.json", "w"))
kv = 2 * (D // 4)
shapes = {"model.embeddings.weight": [V, D], "model.norm.weight": [D], "lm_head.weight": [V, D]}
for l in range(L):
    p = f"model.layers.{l}."
    shapes[p + "attn_norm.weight"] = [D]; shapes[p + "mlp_norm.weight"] = [D]
    shapes[p + "mlp.gate_proj.weight"] = [I, D]; shapes[p + "mlp.up_proj.weight"] = [I, D]
    shapes[p + "mlp.down_proj.weight"] = [D, I]
    shapes[p + "attn.q_proj.weight"] = [D, D]; shapes[p + "attn.o_proj.weight"] = [D, D]
    if l in (1, 3):
        shapes[p + "attn.k_proj.weight"] = [kv, D]; shapes[p + "attn.v_proj.weight"] = [kv, D]
    else:
        for n in "kv":
            shapes[p + f"attn.{n}_proj.weight"] = [D, D]
        for n in "qkv":
            shapes[p + f"attn.{n}_conv1d.weight"] = [D, 1, 4]
        shapes[p + "attn.b_proj.weight"] = [H, D]
        shapes[p + "attn.o_norm.weight"] = [D // H]
rng = random.Random(0)
hdr, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
for i, (name, shape) in enumerate(sorted(shapes.items())):
    n = 1
    for s in shape: n *= s
    vals = [1.0 + 0.1 * rng.gauss(0, 1) if name.endswith("norm.weight") else 0.05 * rng.gauss(0, 1) for _ in range(n)]
    dtype = ["F32", "BF16", "F16"][i % 3]
    if dtype == "F32": data = struct.pack(f"<{n}f", *vals)
    elif dtype == "F16": data = struct.pack(f"<{n}e", *vals)
    else: data = b"".join(struct.pack("<f", v)[2:] for v in vals)  # truncate to bf16
    hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
    blobs.append(data); off += len(data)
js = json.dumps(hdr).encode()
with open(f"{tmp}/fla/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(js)) + js + b"".join(blobs))
toks = [rng.randrange(V) for _ in range(200)]
with open(f"{tmp}/val.bin", "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, len(toks), *([0] * 253)) + struct.pack(f"<{len(toks)}H", *toks))
PY

if python3 scripts/from_fla.py "$tmp/fla" "$tmp/model.safetensors" >"$tmp/conv.log" 2>&1; then
    ok "converted: $(cat "$tmp/conv.log")"
else
    bad "conversion failed: $(cat "$tmp/conv.log")"
fi
if out=$(./infer "$tmp/model.safetensors" --eval "$tmp/val.bin" -b 64 2>&1) && echo "$out" | grep -qE "loss [0-9]+\.[0-9]+"; then
    ok "./infer loads the converted hybrid (layers DSDG) and scores it: $(echo "$out" | grep -oE 'loss [0-9.]+ perplexity [0-9.]+')"
else
    bad "./infer on the converted checkpoint: $out"
fi
left=$(find "$tmp" -maxdepth 1 -name 'model.safetensors?*' | wc -l)
if [ "$left" -eq 0 ] && [ "$(stat -c %a "$tmp/model.safetensors")" = "$(printf '%o' $((0666 & ~$(umask))))" ]; then
    ok "no temporary left beside the output, which has a normal file's mode ($(stat -c %a "$tmp/model.safetensors"))"
else
    bad "after converting: $left temporaries beside the output, mode $(stat -c %a "$tmp/model.safetensors")"
fi
# a failure after the temporary exists (the output is a directory: the rename fails) removes it
mkdir "$tmp/outdir.safetensors"
if python3 scripts/from_fla.py "$tmp/fla" "$tmp/outdir.safetensors" >"$tmp/d.log" 2>&1; then
    bad "converting onto a directory succeeded"
elif [ "$(wc -l <"$tmp/d.log")" -eq 1 ] && [ "$(find "$tmp" -maxdepth 1 -name 'outdir.safetensors?*' | wc -l)" -eq 0 ] && [ -d "$tmp/outdir.safetensors" ]; then
    ok "a failed write leaves no temporary and one line: $(cat "$tmp/d.log")"
else
    bad "failed write: $(cat "$tmp/d.log"); left: $(ls "$tmp")"
fi
if python3 - "$tmp" <<'PY'
import json, struct, sys
tmp = sys.argv[1]
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    m = h.pop("__metadata__", {}); return h, b[8 + n:], m
a, da, _ = load(f"{tmp}/fla/model.safetensors")
b, db, meta = load(f"{tmp}/model.safetensors")
assert meta["layers"] == "DSDG" and meta["window"] == "8" and meta["attn_kv_heads"] == "2", meta
for name, t in a.items():
    u = b[name]; x = da[t["data_offsets"][0]:t["data_offsets"][1]]; y = db[u["data_offsets"][0]:u["data_offsets"][1]]
    if t["dtype"] == "F16":
        n = len(x) // 2
        assert u["dtype"] == "F32" and struct.unpack(f"<{n}e", x) == struct.unpack(f"<{n}f", y), name
    else:
        assert u["dtype"] == t["dtype"] and x == y, name
PY
then ok "every tensor copied exactly (F32, BF16 as they are; F16 widened to F32); metadata layers DSDG, window 8, 2 KV heads"
else bad "tensor or metadata mismatch after conversion"; fi

sed 's/"use_gate": false/"use_gate": true/' "$tmp/fla/config.json" >"$tmp/cfg" && mkdir -p "$tmp/gate" && mv "$tmp/cfg" "$tmp/gate/config.json" && cp "$tmp/fla/model.safetensors" "$tmp/gate/"
expect_refusal "$tmp/gate" use_gate "a DeltaNet (delta_net) config with an output gate"
# Gated DeltaNet hybrid N S N G: 3 heads of key size 8, expand_v 2, fla's names and shapes
mkdir -p "$tmp/gdn"
python3 - "$tmp" <<'PY'
import json, random, struct, sys
tmp = sys.argv[1]
D, Hg, Kg, ev, L, V, I = 32, 3, 8, 2, 4, 300, 128
cfg = {"model_type": "gated_deltanet", "hidden_size": D, "num_hidden_layers": L, "num_heads": Hg,
       "head_dim": Kg, "expand_v": float(ev), "num_v_heads": None, "use_gate": True, "use_short_conv": True,
       "allow_neg_eigval": False, "conv_size": 4, "norm_eps": 1e-6, "hidden_ratio": 4,
       "intermediate_size": I, "vocab_size": V, "tie_word_embeddings": True,
       "attn": [{"layers": [1], "num_heads": 4, "num_kv_heads": 2, "window_size": 8, "rope_theta": 10000.0},
                {"layers": [3], "num_heads": 4, "num_kv_heads": 2, "window_size": None, "rope_theta": 10000.0}]}
json.dump(cfg, open(f"{tmp}/gdn/config.json", "w"))
HK, HV, kv = Hg * Kg, Hg * Kg * ev, 2 * (D // 4)
shapes = {"model.embeddings.weight": [V, D], "model.norm.weight": [D]}
for l in range(L):
    p = f"model.layers.{l}."
    shapes[p + "attn_norm.weight"] = [D]; shapes[p + "mlp_norm.weight"] = [D]
    shapes[p + "mlp.gate_proj.weight"] = [I, D]; shapes[p + "mlp.up_proj.weight"] = [I, D]
    shapes[p + "mlp.down_proj.weight"] = [D, I]
    if l in (1, 3):
        shapes[p + "attn.q_proj.weight"] = [D, D]; shapes[p + "attn.o_proj.weight"] = [D, D]
        shapes[p + "attn.k_proj.weight"] = [kv, D]; shapes[p + "attn.v_proj.weight"] = [kv, D]
    else:
        a = p + "attn."
        shapes.update({a + "q_proj.weight": [HK, D], a + "k_proj.weight": [HK, D], a + "v_proj.weight": [HV, D],
                       a + "a_proj.weight": [Hg, D], a + "b_proj.weight": [Hg, D], a + "A_log": [Hg],
                       a + "dt_bias": [Hg], a + "q_conv1d.weight": [HK, 1, 4], a + "k_conv1d.weight": [HK, 1, 4],
                       a + "v_conv1d.weight": [HV, 1, 4], a + "g_proj.weight": [HV, D],
                       a + "o_norm.weight": [HV // Hg], a + "o_proj.weight": [D, HV]})
rng = random.Random(1)
hdr, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
for i, (name, shape) in enumerate(sorted(shapes.items())):
    n = 1
    for s in shape: n *= s
    vals = [1.0 + 0.1 * rng.gauss(0, 1) if name.endswith("norm.weight") else 0.5 * rng.gauss(0, 1) if name.endswith(("A_log", "dt_bias")) else 0.05 * rng.gauss(0, 1) for _ in range(n)]
    dtype = ["F32", "BF16"][i % 2]
    data = struct.pack(f"<{n}f", *vals) if dtype == "F32" else b"".join(struct.pack("<f", v)[2:] for v in vals)
    hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
    blobs.append(data); off += len(data)
js = json.dumps(hdr).encode()
with open(f"{tmp}/gdn/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(js)) + js + b"".join(blobs))
PY
if python3 scripts/from_fla.py "$tmp/gdn" "$tmp/gdn.safetensors" >"$tmp/gc.log" 2>&1 &&
   out=$(./infer "$tmp/gdn.safetensors" --eval "$tmp/val.bin" -b 64 2>&1) && echo "$out" | grep -qE "loss [0-9]+\.[0-9]+"; then
    ok "a Gated DeltaNet hybrid converts and ./infer scores it: $(cat "$tmp/gc.log"); $(echo "$out" | grep -oE 'loss [0-9.]+')"
else
    bad "Gated DeltaNet conversion: $(cat "$tmp/gc.log") $out"
fi
if python3 - "$tmp" <<'PY'
import json, struct, sys
tmp = sys.argv[1]
b = open(f"{tmp}/gdn.safetensors", "rb").read(); n = struct.unpack("<Q", b[:8])[0]; meta = json.loads(b[8:8 + n])["__metadata__"]
want = {"layers": "NSNG", "gdn_heads": "3", "gdn_head_dim": "8", "gdn_expand_v": "2", "window": "8", "tie_embeddings": "1"}
assert all(meta[k] == v for k, v in want.items()), meta
PY
then ok "Gated DeltaNet metadata: layers NSNG, 3 heads, head_dim 8, expand_v 2, window 8, tied"
else bad "Gated DeltaNet metadata after conversion"; fi
for bad_cfg in '"num_v_heads": null/"num_v_heads": 6' '"expand_v": 2.0/"expand_v": 1.5' '"use_gate": true/"use_gate": false' '"allow_neg_eigval": false/"allow_neg_eigval": true'; do
    mkdir -p "$tmp/gbad" && cp "$tmp/gdn/model.safetensors" "$tmp/gbad/" && sed "s/$bad_cfg/" "$tmp/gdn/config.json" >"$tmp/gbad/config.json"
    key=${bad_cfg%%\":*}; key=${key#\"}
    expect_refusal "$tmp/gbad" "$key" "gated_deltanet with $bad_cfg"
done

# the round trip through deltanet.c's own fla_config (needs the CPU trainer that make test builds)
TR=${DN_TRAINER:-build/train_deltanet_cpu}
if [ -x "$TR" ]; then
    python3 - "$tmp" <<'PY'
import struct, sys
tmp = sys.argv[1]
toks = list(range(1, 200)) * 3
with open(f"{tmp}/tr.bin", "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, len(toks), *([0] * 253)) + struct.pack(f"<{len(toks)}H", *toks))
PY
    if "$TR" -i "$tmp/tr.bin" -j "$tmp/tr.bin" --vocab 300 --layers NSNG --window 8 -b 1 -t 16 -x 1 -v 0 --sample-every 0 -o "$tmp/rt" >"$tmp/rt.log" 2>&1 &&
       mkdir -p "$tmp/rtfla" && python3 - "$tmp" <<'PY'
import json, struct, sys
tmp = sys.argv[1]
b = open(f"{tmp}/rt/model.safetensors", "rb").read(); n = struct.unpack("<Q", b[:8])[0]
meta = json.loads(b[8:8 + n])["__metadata__"]
json.dump(json.loads(meta["fla_config"]), open(f"{tmp}/rtfla/config.json", "w"))
json.dump(meta, open(f"{tmp}/rt_meta.json", "w"))
PY
    then
        cp "$tmp/rt/model.safetensors" "$tmp/rtfla/model.safetensors"
        if python3 scripts/from_fla.py "$tmp/rtfla" "$tmp/rt2.safetensors" >"$tmp/rt2.log" 2>&1 && python3 - "$tmp" <<'PY'
import json, struct, sys
tmp = sys.argv[1]
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); m = h.pop("__metadata__")
    return h, b[8 + n:], m
a, da, ma = load(f"{tmp}/rt/model.safetensors")
b, db, mb = load(f"{tmp}/rt2.safetensors")
keys = ["vocab_size", "padded_vocab", "d_model", "n_layer", "n_head", "head_dim", "conv_size", "hidden_size",
        "tie_embeddings", "attn_heads", "attn_kv_heads", "window", "gdn_heads", "gdn_head_dim", "gdn_expand_v", "layers"]
diff = [(k, ma[k], mb[k]) for k in keys if str(ma[k]) != str(mb[k])]
assert not diff, diff
f32 = lambda x: struct.unpack("<f", struct.pack("<f", float(x)))[0]  # the config holds float32s
assert f32(ma["norm_eps"]) == f32(mb["norm_eps"]) and f32(ma["rope_base"]) == f32(mb["rope_base"])
assert set(a) == set(b)
for k in a:
    assert a[k]["shape"] == b[k]["shape"] and da[slice(*a[k]["data_offsets"])] == db[slice(*b[k]["data_offsets"])], k
PY
        then ok "round trip: deltanet.c's fla_config of an NSNG checkpoint, through from_fla.py, gives back its config and every tensor"
        else bad "round trip through from_fla.py: $(cat "$tmp/rt2.log")"; fi
    else
        bad "round trip: training one NSNG step failed: $(tail -2 "$tmp/rt.log")"
    fi
else
    echo "  --  round trip through deltanet.c's fla_config skipped: no $TR (make test builds it)"
fi
test_summary test_convert
