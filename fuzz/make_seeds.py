#!/usr/bin/env python3
"""Seed inputs for the fuzz harnesses, built from the test fixtures.

Writes build-fuzz/seeds/<harness>/ (not kept in the repo; ZL_SEEDS_DIR overrides): small valid files in every
shape the readers accept, the safetensors reference vectors, and truncated or
corrupted variants. scripts/fuzz.sh seed merges them into fuzz/corpus/<harness>
with libFuzzer's -merge=1, which keeps only inputs that add coverage.
Standard library only, so it runs on a fresh machine."""
import json
import os
import struct
import sys

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


if __name__ == "__main__":
    which = sys.argv[1:] or ["safetensors", "unet_config"]
    for w in which:
        globals()[w + "_seeds"]()
        print("seeds:", w, len(os.listdir(os.path.join(OUT, w))), "files in", os.path.join(OUT, w))
