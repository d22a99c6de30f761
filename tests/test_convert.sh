#!/usr/bin/env bash
# test_convert.sh -- scripts/from_fla.py: a flash-linear-attention model folder (config.json +
# safetensors with the reference's names; F32, BF16 and F16 tensors; a hybrid with sliding-window
# and global layers) converts into a checkpoint that ./infer loads strictly and scores; tensors are
# copied exactly; the output is written atomically (no temporary left behind, on success or on
# failure); configs deltanet.c does not compute are refused. Run from the repo root.
set -u
pass=0; fail=0
ok()  { echo "  ok  $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
tmp=$(mktemp -d /tmp/dn_convert_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
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
if python3 scripts/from_fla.py "$tmp/gate" "$tmp/g.safetensors" >"$tmp/g.log" 2>&1; then
    bad "a gated DeltaNet config was accepted"
elif grep -q "use_gate" "$tmp/g.log" && [ "$(wc -l <"$tmp/g.log")" -eq 1 ]; then
    ok "gated DeltaNet refused: $(cat "$tmp/g.log")"
else
    bad "unclear refusal: $(cat "$tmp/g.log")"
fi
echo "[test_convert] $pass passed, $fail failed"
[ "$fail" -eq 0 ]
