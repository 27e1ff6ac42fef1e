#!/usr/bin/env python3
"""Seed inputs for the fuzz harnesses, built from the test fixtures.

Writes build-fuzz/seeds/<harness>/ (not kept in the repo; ZL_SEEDS_DIR overrides): small valid files in every
shape the readers accept, the safetensors reference vectors, and truncated or
corrupted variants. scripts/fuzz.sh seed merges them into fuzz/corpus/<harness>
with libFuzzer's -merge=1, which keeps only inputs that add coverage.
Standard library only, so it runs on a fresh machine."""
import json
import os
import re
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.environ.get("ZL_SEEDS_DIR", os.path.join(ROOT, "build-fuzz", "seeds"))
BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
        "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64}


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def st_bytes(tensors, meta=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes). Builds a valid file."""
    hdr, pos = {}, 0
    if meta is not None:
        hdr["__metadata__"] = meta
    blobs = []
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        pos += len(raw)
        blobs.append(raw)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", None)
    data = b[8 + n:]
    ts = [(k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in sorted(h.items())]
    return ts, meta


def safetensors_seeds():
    H = "safetensors"
    # The Rust reference's vectors (spec/formats.md §1).
    put(H, "ref_valid_i32", st_bytes([("test", "I32", [2, 2], bytes(16))], pad=False))
    put(H, "ref_empty", struct.pack("<Q", 8) + b"{}      ")
    h = json.dumps({"weight_%d" % i: {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]} for i in range(10)}).encode()
    put(H, "ref_bad_offsets", struct.pack("<Q", len(h)) + h + bytes(16))
    h = b'{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,4]}}'
    put(H, "ref_bad_info", struct.pack("<Q", len(h)) + h + bytes(4))
    # Every dtype, a scalar, a zero-size tensor, metadata.
    ts = []
    for dt, bits in sorted(BITS.items()):
        n = 6
        ts.append(("t_" + dt.lower(), dt, [2, 3], bytes((i * 37 + 11) & 0xFF for i in range(n * bits // 8))))
    ts.append(("scalar", "F32", [], struct.pack("<f", 1.5)))
    ts.append(("empty", "F16", [0, 4], b""))
    ts.append(("nd", "BF16", [1, 2, 1, 2, 1, 1, 1, 1], bytes(8)))
    put(H, "all_dtypes", st_bytes(ts, meta={"format": "pt", "k": "v"}))
    put(H, "special_floats", st_bytes([("f16", "F16", [4], struct.pack("<4H", 0x7C00, 0xFC00, 0x7E01, 0x0001)),
                                      ("bf16", "BF16", [4], struct.pack("<4H", 0x7F80, 0xFF80, 0x7FC1, 0x0001)),
                                      ("f64", "F64", [2], struct.pack("<2d", float("nan"), 1e300))]))
    # Small slices of the fixture LoRA files: the first tensors of each, with metadata.
    for rel in ["tiny-sdxl/loras/content.kohya.safetensors", "mini-sdxl/loras/style.kohya_sgm.safetensors",
                "tiny-sd15/loras/content.peft.safetensors", "mini-sdxl/loras/text_encoders.kohya.safetensors"]:
        ts, meta = read_st(os.path.join(DATA, rel))
        small = [t for t in ts if len(t[3]) <= 1024][:6]
        b = st_bytes(small, meta)
        tag = rel.replace("/", "_").replace(".safetensors", "")
        put(H, tag, b)
        put(H, tag + "_trunc", b[:len(b) - 3])
        put(H, tag + "_hdrcut", b[:8 + 40])
        big = bytearray(b)
        big[0:8] = struct.pack("<Q", len(b))
        put(H, tag + "_badlen", bytes(big))
    # Invalid headers the parser must reject cleanly.
    for i, h in enumerate([b'{"__metadata__":{"a":1}}', b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                           b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b'{"x":{"dtype":"F4","shape":[3],'
                           b'"data_offsets":[0,1]}}', b'[1,2]', b'{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}',
                           b'{"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}', b'\xff\xfe{}']):
        put(H, "bad_%d" % i, struct.pack("<Q", len(h)) + h + bytes(4))
    # PyTorch zip checkpoints (tests/data/ckpt, written by make_ckpt.py there): views, protocols 2 and 4,
    # zip64 records, refused views; the small ones only.
    for name in ["views.pt", "views_p4.pt", "views_zip64.pt", "bad_past_end.pt", "bad_broadcast.pt", "bad_dtype.pt",
                 "bad_huge_empty.pt", "catdog.pt"]:
        put(H, "torch_" + name.replace(".", "_"), open(os.path.join(DATA, "ckpt", name), "rb").read())


def unet_config_seeds():
    H = "unet_config"
    for fam in ["tiny-sdxl", "mini-sdxl", "tiny-sd15"]:
        txt = open(os.path.join(DATA, fam, "unet", "config.json")).read()
        put(H, fam, txt)
        put(H, fam + "_min", json.dumps(json.loads(txt), separators=(",", ":")))
        put(H, fam + "_trunc", txt[: len(txt) // 2])
    # The real SDXL base and SD 1.5 configs (values from their diffusers unet/config.json).
    sdxl = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
            "center_input_sample": False, "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "flip_sin_to_cos": True,
            "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_type": "UNetMidBlock2DCrossAttn",
            "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "out_channels": 4,
            "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True}
    put(H, "sdxl_base", json.dumps(sdxl, indent=1))
    sd15 = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
            "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
    put(H, "sd15", json.dumps(sd15))
    v = dict(sd15, layers_per_block=[2, 2, 2, 2], attention_head_dim=[8, 8, 8, 8], transformer_layers_per_block=1,
             time_embedding_dim=1024, num_attention_heads=[5, 10, 20, 20])
    put(H, "sd15_lists", json.dumps(v))
    put(H, "unsupported", json.dumps(dict(sd15, class_embed_type="timestep", resnet_time_scale_shift="scale_shift")))
    put(H, "empty_obj", "{}")
    put(H, "not_obj", "[1, 2, 3]")


SUFFIX = re.compile(r"^(.*?)(\.lora_down\.weight|\.lora_up\.weight|\.alpha|\.lora_A\.weight|\.lora_B\.weight|"
                    r"\.lora\.down\.weight|\.lora\.up\.weight|\.down\.weight|\.up\.weight|\.lora_mid\.weight|"
                    r"\.dora_scale)$")


def pick_groups(keys, n):
    """Keys of n modules spread over the file (all of each module's tensors)."""
    groups = {}
    for k in keys:
        m = SUFFIX.match(k)
        groups.setdefault(m.group(1) if m else k, []).append(k)
    names = sorted(groups)
    step = max(1, len(names) // n)
    out = []
    for g in names[::step][:n]:
        out += sorted(groups[g])
    return out


def spec(lines, tensors, meta=None, fills=None):
    """The fuzz_lora text format (see fuzz/fuzz_lora.c)."""
    out = list(lines)
    for k, v in sorted((meta or {}).items()):
        out.append("meta %s %s" % (k, v))
    for name, dt, shape in tensors:
        dims = ",".join(str(d) for d in shape) if shape else "-"
        f = (fills or {}).get(name)
        out.append("t %s %s %s%s" % (name, dt, dims, "" if f is None else " " + f))
    return "\n".join(out) + "\n"


def lora_seeds():
    H = "lora"
    # Fixture LoRAs: a few modules of every file, against the matching fixture UNet and without one.
    for fam in ["tiny-sdxl", "mini-sdxl", "tiny-sd15"]:
        d = os.path.join(DATA, fam, "loras")
        for fn in sorted(os.listdir(d)):
            if not fn.endswith(".safetensors"):
                continue
            ts, meta = read_st(os.path.join(d, fn))
            by = {t[0]: t for t in ts}
            keys = pick_groups(list(by), 4)
            tensors = [(k, by[k][1], by[k][2]) for k in keys]
            stem = fn.split(".")[0]
            lines = ["unet " + fam]
            if fn.startswith("text_encoders"):
                lines.append("te 1")
            cfg = os.path.join(d, stem + ".adapter_config.json")
            if ".peft." in fn and os.path.exists(cfg):
                lines.append("cfg " + json.dumps(json.load(open(cfg)), separators=(",", ":")))
            tag = fam + "_" + fn.replace(".safetensors", "")
            put(H, tag, spec(lines, tensors, meta))
            put(H, tag + "_nocfg", spec([], tensors, meta))
            # and the raw file bytes of a smaller slice
            small = [by[k] for k in keys if len(by[k][3]) <= 4096][:6]
            put(H, tag + "_raw", st_bytes(small, meta))
    # Real layouts at real shapes (rank 4), against the standard configs.
    for rel, lines in [("sdxl.kohya_lora", ["unet sdxl", "te 2"]), ("sdxl.kohya_locon", ["unet sdxl"]),
                       ("sd15.kohya_lora", ["unet sd15", "te 2"]), ("sd15.kohya_locon", []),
                       ("sdxl.diffusers_lora", ["unet sdxl"]), ("sdxl.diffusers_lora_old", []),
                       ("sdxl.kohya_from_diffusers", ["unet sdxl"])]:
        t = json.load(open(os.path.join(DATA, "real-keys", rel + ".keys.json")))["tensors"]
        keys = pick_groups(sorted(t), 5)
        tensors = [(k, t[k]["dtype"], t[k]["shape"]) for k in keys]
        meta = {"ss_base_model_version": "sdxl_base_v1-0"} if rel.startswith("sdxl.kohya") else None
        put(H, "real_" + rel, spec(lines, tensors, meta))
    # Other layouts and the kinds that must be refused, on a tiny-sdxl module.
    mod = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    kmod = "lora_unet_" + mod.replace(".", "_")
    lin = lambda pre, a, b: [(pre + a, "F32", [4, 64]), (pre + b, "F32", [64, 4])]
    put(H, "peft_base_model", spec(["unet tiny-sdxl"], lin("base_model.model." + mod, ".lora_A.weight", ".lora_B.weight")))
    put(H, "peft_adapter_meta", spec(["unet tiny-sdxl"], lin("unet." + mod, ".lora_A.weight", ".lora_B.weight"),
                                     {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2, "alpha_pattern": {mod: 8}})}))
    put(H, "peft_rslora", spec(["unet tiny-sdxl", 'cfg {"r":4,"lora_alpha":8,"use_rslora":true}'],
                               lin("unet." + mod, ".lora_A.weight", ".lora_B.weight")))
    put(H, "diffusers_lora_down", spec(["unet tiny-sdxl"], lin("unet." + mod, ".lora.down.weight", ".lora.up.weight")))
    put(H, "diffusers_processor", spec([], lin("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora",
                                              ".down.weight", ".up.weight")))
    te = "text_model.encoder.layers.0.self_attn.q_proj"
    put(H, "peft_text_encoders", spec(["unet mini-sdxl", "te 1"], lin("text_encoder." + te, ".lora_A.weight", ".lora_B.weight")[:1] +
                                      [("text_encoder." + te + ".lora_B.weight", "F32", [32, 4]),
                                       ("text_encoder_2." + te + ".lora_A.weight", "F32", [4, 32]),
                                       ("text_encoder_2." + te + ".lora_B.weight", "F32", [32, 4])]))
    # ComfyUI's generic keys: the module's own ldm path, text encoders under text_encoders.clip_l/clip_g.transformer.
    cmod = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    put(H, "comfy_ldm", spec(["unet tiny-sdxl"], lin(cmod, ".lora_down.weight", ".lora_up.weight") + [(cmod + ".alpha", "F16", [])],
                             fills={cmod + ".alpha": "2"}))
    put(H, "comfy_ldm_nomodel", spec([], lin(cmod, ".lora_down.weight", ".lora_up.weight")))
    put(H, "comfy_text_encoders", spec(["unet mini-sdxl", "te 1"],
                                       [("text_encoders.clip_l.transformer." + te + ".lora_down.weight", "F32", [4, 32]),
                                        ("text_encoders.clip_l.transformer." + te + ".lora_up.weight", "F32", [32, 4]),
                                        ("text_encoders.clip_g.transformer." + te + ".lora_down.weight", "F32", [4, 32]),
                                        ("text_encoders.clip_g.transformer." + te + ".lora_up.weight", "F32", [32, 4])]))
    kl = [(kmod + ".lora_down.weight", "F16", [4, 64]), (kmod + ".lora_up.weight", "F16", [64, 4]), (kmod + ".alpha", "I64", [])]
    put(H, "kohya_alpha_i64", spec(["unet tiny-sdxl"], kl, fills={kmod + ".alpha": "2"}))
    put(H, "kohya_alpha_zero", spec([], kl, fills={kmod + ".alpha": "0"}))
    put(H, "kohya_alpha_nan", spec([], kl, fills={kmod + ".alpha": "nan"}))
    put(H, "kohya_rank_mismatch", spec([], [(kmod + ".lora_down.weight", "F16", [4, 64]), (kmod + ".lora_up.weight", "F16", [64, 3])]))
    put(H, "kohya_missing_up", spec([], [(kmod + ".lora_down.weight", "F16", [4, 64])]))
    put(H, "kohya_unknown_module", spec([], [("lora_unet_no_such_block.lora_down.weight", "F16", [4, 64]),
                                             ("lora_unet_no_such_block.lora_up.weight", "F16", [64, 4])]))
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    put(H, "locon_tucker", spec(["unet tiny-sdxl"], [(conv + ".lora_down.weight", "F16", [4, 32, 1, 1]),
                                                     (conv + ".lora_mid.weight", "F16", [4, 4, 3, 3]),
                                                     (conv + ".lora_up.weight", "F16", [32, 4, 1, 1])]))
    put(H, "dora", spec([], kl + [(kmod + ".dora_scale", "F16", [1, 64])]))
    # DoRA read (generate's allow_dora): input-axis magnitudes on a LoRA, a LoCon, a LoHa; output-axis refused
    put(H, "dora_allowed", spec(["unet tiny-sdxl", "dora 1"], kl + [(kmod + ".dora_scale", "F16", [1, 64])]))
    put(H, "dora_out_axis", spec(["dora 1"], kl + [(kmod + ".dora_scale", "F32", [64, 1])]))
    put(H, "dora_locon", spec(["unet tiny-sdxl", "dora 1"], [(conv + ".lora_down.weight", "F16", [4, 32, 3, 3]),
                                                            (conv + ".lora_up.weight", "F16", [32, 4, 1, 1]),
                                                            (conv + ".dora_scale", "F16", [1, 32, 1, 1])]))
    put(H, "dora_peft", spec(["unet tiny-sdxl", "dora 1"], lin("unet." + mod, ".lora_A.weight", ".lora_B.weight") +
                             [("unet." + mod + ".lora_magnitude_vector", "F32", [64])]))
    # PEFT with the adapter name kept in every key (model.state_dict()), the magnitude too
    put(H, "dora_peft_named", spec(["unet tiny-sdxl", "dora 1"],
                                   lin("unet." + mod, ".lora_A.default.weight", ".lora_B.default.weight") +
                                   [("unet." + mod + ".lora_magnitude_vector.default.weight", "F32", [64])]))
    put(H, "dora_loha", spec(["dora 1"], [(kmod + ".hada_w1_a", "F16", [64, 4]), (kmod + ".hada_w1_b", "F16", [4, 64]),
                                          (kmod + ".hada_w2_a", "F16", [64, 4]), (kmod + ".hada_w2_b", "F16", [4, 64]),
                                          (kmod + ".dora_scale", "F16", [1, 64])]))
    put(H, "loha", spec([], [(kmod + ".hada_w1_a", "F16", [64, 4]), (kmod + ".hada_w1_b", "F16", [4, 64]),
                             (kmod + ".hada_w2_a", "F16", [64, 4]), (kmod + ".hada_w2_b", "F16", [4, 64])]))
    put(H, "lokr", spec([], [(kmod + ".lokr_w1", "F16", [8, 8]), (kmod + ".lokr_w2", "F16", [8, 8])]))
    put(H, "lokr_decomposed", spec([], [(kmod + ".lokr_w1_a", "F16", [8, 2]), (kmod + ".lokr_w1_b", "F16", [2, 8]),
                                        (kmod + ".lokr_w2_a", "F16", [8, 3]), (kmod + ".lokr_w2_b", "F16", [3, 8]),
                                        (kmod + ".alpha", "F16", [])]))
    put(H, "lokr_conv", spec([], [(conv + ".lokr_w1", "F16", [4, 4]), (conv + ".lokr_w2_a", "F16", [8, 2]),
                                  (conv + ".lokr_w2_b", "F16", [2, 8, 3, 3]), (conv + ".alpha", "F16", [])]))
    put(H, "loha_conv", spec([], [(conv + ".hada_w1_a", "F16", [32, 2]), (conv + ".hada_w1_b", "F16", [2, 288]),
                                  (conv + ".hada_w2_a", "F16", [32, 3]), (conv + ".hada_w2_b", "F16", [3, 288]),
                                  (conv + ".alpha", "F16", [])]))
    put(H, "loha_tucker", spec([], [(conv + ".hada_w1_a", "F16", [2, 32]), (conv + ".hada_t1", "F16", [2, 2, 3, 3])]))
    put(H, "loha_tucker_full", spec(["unet tiny-sdxl"],
                                    [(conv + ".hada_w1_a", "F16", [2, 32]), (conv + ".hada_w1_b", "F16", [2, 32]),
                                     (conv + ".hada_t1", "F16", [2, 2, 3, 3]), (conv + ".hada_w2_a", "F16", [3, 32]),
                                     (conv + ".hada_w2_b", "F16", [3, 32]), (conv + ".hada_t2", "F16", [3, 3, 3, 3]),
                                     (conv + ".alpha", "F16", [])]))
    put(H, "lokr_tucker", spec(["unet tiny-sdxl"],
                               [(conv + ".lokr_w1", "F16", [4, 4]), (conv + ".lokr_w2_a", "F16", [2, 8]),
                                (conv + ".lokr_w2_b", "F16", [2, 8]), (conv + ".lokr_t2", "F16", [2, 2, 3, 3]),
                                (conv + ".alpha", "F16", [])]))
    put(H, "family_conflict", spec(["unet tiny-sd15", "family 1"], kl, {"ss_base_model_version": "sdxl_base_v1-0"}))
    put(H, "empty", spec([], []))



def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(w, h, color, depth, rows, extra=(), palette=None, level=9):
    """rows: raw scanline bytes without filter bytes; each row gets filter type (y % 5)."""
    raw = b""
    bpp = max(1, {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color] * depth // 8)
    prev = bytes(len(rows[0]))
    for y, r in enumerate(rows):
        ft = y % 5
        out = bytearray()
        for i, c in enumerate(r):
            a = r[i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            if ft == 0:
                pred = 0
            elif ft == 1:
                pred = a
            elif ft == 2:
                pred = b
            elif ft == 3:
                pred = (a + b) // 2
            else:
                pa, pb, pc = abs(b - cc), abs(a - cc), abs(a + b - 2 * cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            out.append((c - pred) & 0xFF)
        raw += bytes([ft]) + bytes(out)
        prev = r
    b = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
    if palette:
        b += png_chunk(b"PLTE", palette)
    for k, body in extra:
        b += png_chunk(k, body)
    b += png_chunk(b"IDAT", zlib.compress(raw, level))
    return b + png_chunk(b"IEND", b"")


def image_seeds():
    H = "image"
    w, h = 7, 5
    rgb = [bytes((x * 40 + y * 7 + k * 90) & 0xFF for x in range(w) for k in range(3)) for y in range(h)]
    text = [(b"tEXt", b"parameters\x00a photo, Steps: 20, Seed: 1"),
            (b"zTXt", b"Comment\x00\x00" + zlib.compress(b"compressed text")),
            (b"iTXt", b"Title\x00\x00\x00en\x00Titel\x00" + "caf\u00e9".encode())]
    put(H, "rgb8_text.png", png(w, h, 2, 8, rgb, text))
    put(H, "rgb8.png", png(w, h, 2, 8, rgb))
    # generate --from-png reads the parameters text (A1111's form: prompt, "Negative prompt:", a settings line)
    params = (b'a "quoted" photo, sks dog\nsecond line\nNegative prompt: blurry, low quality\n'
              b'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 1024x1024, '
              b'Model hash: 31e35c80fc, Lora hashes: "dog: 0123456789ab, style: ba9876543210", '
              b'Prompt: "a, b\\"c\\nd", Denoising strength: 0.5, Version: v1.10.1')
    put(H, "params.txt", params)
    put(H, "params_bare.txt", b"Steps: 20, Sampler: Euler, CFG scale: 5")
    put(H, "params_two_pairs.txt", b"a prompt\nSteps: 20, Sampler: Euler")
    put(H, "params_open_quote.txt", b'x\nSteps: 20, Sampler: "Euler, CFG scale: 5')
    put(H, "rgb8_params.png", png(w, h, 2, 8, rgb, [(b"tEXt", b"parameters\x00" + params)]))
    put(H, "gray8.png", png(w, h, 0, 8, [bytes((x * 30 + y) & 0xFF for x in range(w)) for y in range(h)]))
    put(H, "gray1.png", png(9, 3, 0, 1, [bytes([0b10110011, 0b10000000]) for _ in range(3)]))
    put(H, "rgba8.png", png(w, h, 6, 8, [bytes((x * 13 + k * 60 + y) & 0xFF for x in range(w) for k in range(4)) for y in range(h)]))
    put(H, "graya8.png", png(w, h, 4, 8, [bytes((x * 13 + k * 60 + y) & 0xFF for x in range(w) for k in range(2)) for y in range(h)]))
    put(H, "rgb16.png", png(3, 2, 2, 16, [bytes((x * 51 + y) & 0xFF for x in range(18)) for y in range(2)]))
    put(H, "pal4_trns.png", png(5, 3, 3, 4, [bytes([0x01, 0x23, 0x40]) for _ in range(3)],
                                extra=[(b"tRNS", b"\x00\x80")], palette=bytes(range(48))))
    put(H, "rgb8_gamma.png", png(w, h, 2, 8, rgb, [(b"gAMA", struct.pack(">I", 45455)), (b"sRGB", b"\x00")]))
    b = png(w, h, 2, 8, rgb, text)
    put(H, "rgb8_trunc.png", b[: len(b) // 2])
    put(H, "rgb8_badcrc.png", b[:40] + bytes([b[40] ^ 1]) + b[41:])
    put(H, "huge_header.png", png(1, 1, 2, 8, [b"\x00\x00\x00"])[:16] + struct.pack(">II", 16384, 16384) + b"\x08\x02\x00\x00\x00" + b"\x00" * 4)
    ppm = b"P6\n%d %d\n255\n" % (w, h) + b"".join(rgb)
    put(H, "rgb.ppm", ppm)
    put(H, "gray.pgm", b"P5\n4 2\n255\n" + bytes(range(0, 256, 32)))
    # 24-bit BMP, bottom-up, rows padded to 4 bytes.
    row = 3 * w + (-3 * w) % 4
    pix = b"".join(rgb[y][::-1] + bytes((-3 * w) % 4) for y in reversed(range(h)))
    put(H, "rgb.bmp", b"BM" + struct.pack("<IHHI", 54 + len(pix), 0, 0, 54) +
        struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, row * h, 2835, 2835, 0, 0) + pix)
    put(H, "rgb.tga", struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, w, h, 24, 0) + b"".join(rgb))
    # JPEGs need an encoder; use cjpeg (libjpeg-turbo-progs) when this machine has one.
    import shutil, subprocess, tempfile
    if shutil.which("cjpeg"):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "in.ppm")
            big = b"P6\n16 12\n255\n" + bytes((i * 37 + (i // 48) * 11) & 0xFF for i in range(16 * 12 * 3))
            open(src, "wb").write(big)
            for tag, args in [("baseline", []), ("progressive", ["-progressive"]), ("q20_420", ["-quality", "20"]),
                              ("gray", ["-grayscale"]), ("optimize_444", ["-optimize", "-sample", "1x1"]),
                              ("restart", ["-restart", "1"])]:
                out = subprocess.run(["cjpeg"] + args + [src], capture_output=True, check=True).stdout
                put(H, tag + ".jpg", out)
    else:
        print("seeds: image: no cjpeg here, no JPEG seeds")


def prompt_seeds():
    H = "prompt"
    # A1111's parse_prompt_attention doctest prompts, and what users paste
    for i, t in enumerate(["normal text", "an (important) word", "(unbalanced", "\\(literal\\]", "(unnecessary)(parens)",
                           "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "a BREAK b", "cat (BREAK) dog",
                           "masterpiece, best quality, (sks dog:1.2), [blurry], <lora:style:0.8>, " * 4,
                           "(word: 1.5 ), a:b, x:2), \\ c, caf\u00e9 &amp; co", "", "BREAK BREAK", "((((((((((a))))))))))"]):
        put(H, "p%02d.txt" % i, t.encode())
    put(H, "not_utf8.txt", b"a (cat:1.1) \xff\xfe")
    put(H, "embeddings.txt", ("x " * 73 + "catdog, (embx:1.2) catdog BREAK catdogcatdog embx").encode())


if __name__ == "__main__":
    which = sys.argv[1:] or ["safetensors", "unet_config", "lora", "image", "prompt"]
    for w in which:
        globals()[w + "_seeds"]()
        print("seeds:", w, len(os.listdir(os.path.join(OUT, w))), "files in", os.path.join(OUT, w))
