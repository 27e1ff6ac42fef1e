"""Writes the PyTorch zip checkpoints the tests read (tests/test_torch_zip.c).

torch is not needed: Python's own pickle and zipfile write the format torch.save
uses (since torch 1.6): a zip of stored members, `<dir>/data.pkl` pickling the
state dict with each storage as the persistent id ('storage', torch.<T>Storage,
key, 'cpu', numel) and each tensor as torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, requires_grad, OrderedDict()), and `<dir>/data/<key>`
holding a storage's little-endian bytes. Stand-in modules named torch and
torch._utils exist only while this script runs, so that pickle writes those
global names. The values are fixed, so the files are reproducible.

    python3 -I tests/data/ckpt/make_ckpt.py     (from the repository root)
"""
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..")

torch = types.ModuleType("torch")
tu = types.ModuleType("torch._utils")


def _stand_in(name):
    def f(*args):
        raise RuntimeError("stand-in: only its name is pickled")
    f.__module__, f.__name__, f.__qualname__ = "torch._utils", name, name
    setattr(tu, name, f)


_stand_in("_rebuild_tensor_v2")
_stand_in("_rebuild_parameter")
STYPE = {}
for dt, name in [("F32", "FloatStorage"), ("F16", "HalfStorage"), ("BF16", "BFloat16Storage"), ("I64", "LongStorage"),
                 ("C64", "ComplexFloatStorage")]:
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    STYPE[dt] = cls
torch._utils = tu


class Size(tuple):  # torch.Size pickles as torch.Size(tuple)
    def __reduce_ex__(self, protocol):
        return (Size, (tuple(self),))


Size.__module__ = "torch"
torch.Size = Size
sys.modules["torch"], sys.modules["torch._utils"] = torch, tu
ESIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "C64": 8}


class Storage:
    def __init__(self, key, dt, data):
        self.key, self.dt, self.data = str(key), dt, bytes(data)
        self.numel = len(self.data) // ESIZE[dt]


class Tensor:
    def __init__(self, storage, offset, size, stride, param=False):
        self.storage, self.offset, self.stride, self.param = storage, offset, tuple(stride), param
        self.size = size if isinstance(size, Size) else tuple(size)

    def __reduce_ex__(self, protocol):
        if isinstance(self.size, Size):
            return (tu._rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, OrderedDict()))
        if self.param:
            inner = Tensor(self.storage, self.offset, self.size, self.stride)
            return (tu._rebuild_parameter, (inner, False, OrderedDict()))
        return (tu._rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STYPE[obj.dt], obj.key, "cpu", obj.numel)
        return None


def storages_of(obj, out):
    if isinstance(obj, Tensor):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            storages_of(v, out)
    return out


def save(path, obj, protocol=2, archive="archive"):
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        def put(name, data):  # a fixed date, so the bytes do not depend on the day
            z.writestr(zipfile.ZipInfo(archive + "/" + name, date_time=(2026, 1, 1, 0, 0, 0)), data)
        put("data.pkl", buf.getvalue())
        put("byteorder", "little")
        for s in storages_of(obj, {}).values():
            put("data/" + s.key, s.data)
        put("version", "3\n")


def to_zip64(src, dst):
    """The same archive with zip64 records: the central directory's sizes and
    offsets moved into zip64 extra fields, and a zip64 end record + locator."""
    b = open(src, "rb").read()
    e = b.rindex(b"PK\x05\x06")
    count, cd_size, cd_off = struct.unpack("<HII", b[e + 10:e + 20])
    cd, p = b"", cd_off
    for _ in range(count):
        fixed = bytearray(b[p:p + 46])
        nl, xl, cl = struct.unpack("<HHH", fixed[28:34])
        csize, usize = struct.unpack("<II", fixed[20:28])
        loff = struct.unpack("<I", fixed[42:46])[0]
        name, extra, comment = b[p + 46:p + 46 + nl], b[p + 46 + nl:p + 46 + nl + xl], b[p + 46 + nl + xl:p + 46 + nl + xl + cl]
        z64 = struct.pack("<HHQQQ", 1, 24, usize, csize, loff)
        fixed[20:28] = struct.pack("<II", 0xFFFFFFFF, 0xFFFFFFFF)
        fixed[42:46] = struct.pack("<I", 0xFFFFFFFF)
        fixed[4:6] = struct.pack("<H", 45)
        fixed[6:8] = struct.pack("<H", 45)
        fixed[30:32] = struct.pack("<H", xl + len(z64))
        cd += bytes(fixed) + name + extra + z64 + comment
        p += 46 + nl + xl + cl
    body = b[:cd_off]
    z64_off = len(body) + len(cd)
    rec = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(cd), len(body))
    loc = struct.pack("<IIQI", 0x07064B50, 0, z64_off, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    open(dst, "wb").write(body + cd + rec + loc + end)
    with zipfile.ZipFile(dst) as z:  # Python's reader takes it
        assert z.testzip() is None


def f32(vals):
    return b"".join(struct.pack("<f", v) for v in vals)


def f16(vals):
    return b"".join(struct.pack("<e", v) for v in vals)


def bf16(vals):
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


def views():
    """Every kind of view and dtype the reader handles, with values the test knows."""
    s0 = Storage(0, "F32", f32([i * 0.25 - 1.0 for i in range(6)]))
    return OrderedDict([
        ("f32", Tensor(s0, 0, [2, 3], [3, 1])),
        ("f32_t", Tensor(s0, 0, [3, 2], [1, 3])),          # the transpose: copied
        ("f32_off", Tensor(s0, 2, [4], [1])),              # an offset into the same storage
        ("f16", Tensor(Storage(1, "F16", f16([1.0, -2.0, 0.5, 65504.0])), 0, [2, 2], [2, 1])),
        ("bf16", Tensor(Storage(2, "BF16", bf16([1.0, -1.5, 3.0])), 0, [3], [1])),
        ("i64", Tensor(Storage(3, "I64", struct.pack("<qq", 7, -9)), 0, [2], [1])),
        ("param", Tensor(Storage(4, "F32", f32([3.0, 4.0])), 0, [2], [1], param=True)),
        ("scalar", Tensor(Storage(5, "F32", f32([2.5])), 0, [], [])),
        ("sized", Tensor(Storage(6, "F32", f32([5.0, 6.0])), 0, Size((2,)), [1])),  # size as a torch.Size
        ("step", 5),
        ("hparams", {"lr": 1e-4, "name": "x", "ids": [1, 2, (3, None, True)]}),
    ])


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    head.pop("__metadata__", None)
    out = OrderedDict()
    for i, (k, v) in enumerate(sorted(head.items(), key=lambda kv: kv[1]["data_offsets"][0])):
        a, e = v["data_offsets"]
        st = Storage(i, v["dtype"], b[8 + n + a:8 + n + e])
        shape = v["shape"]
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        out[k] = Tensor(st, 0, shape, stride)
    return out


def main():
    save(os.path.join(HERE, "views.pt"), views(), protocol=2, archive="views")
    save(os.path.join(HERE, "views_p4.pt"), views(), protocol=4)
    to_zip64(os.path.join(HERE, "views_p4.pt"), os.path.join(HERE, "views_zip64.pt"))
    # an SD 1.x checkpoint as training scripts save it: the UNet of tiny-sd15's single file under
    # "state_dict", with the step counters beside it
    sd = read_safetensors(os.path.join(DATA, "tiny-sd15", "single_file.safetensors"))
    unet = OrderedDict((k, v) for k, v in sd.items() if k.startswith("model.diffusion_model."))
    # and what SD's training checkpoints carry beside the weights: the EMA state (names without dots)
    unet["model_ema.decay"] = Tensor(Storage("ema0", "F32", f32([0.9999])), 0, [], [])
    unet["model_ema.num_updates"] = Tensor(Storage("ema1", "I64", struct.pack("<q", 1000)), 0, [], [])
    ema = sd["model.diffusion_model.out.2.bias"]
    unet["model_ema.diffusion_modelout2bias"] = Tensor(Storage("ema2", ema.storage.dt, ema.storage.data), 0, ema.size,
                                                      ema.stride)
    save(os.path.join(HERE, "tiny-sd15-unet.ckpt"),
         {"state_dict": unet, "global_step": 1000, "epoch": 2}, protocol=2, archive="tiny-sd15-unet")
    # refused: a view past the end of its storage, a broadcast (stride 0) view, a dtype not read
    s = Storage(0, "F32", f32([1, 2, 3, 4, 5, 6]))
    save(os.path.join(HERE, "bad_past_end.pt"), OrderedDict([("w", Tensor(s, 5, [4], [1]))]))
    s = Storage(0, "F32", f32([1]))
    save(os.path.join(HERE, "bad_broadcast.pt"), OrderedDict([("w", Tensor(s, 0, [100], [0]))]))
    s = Storage(0, "F32", b"")
    save(os.path.join(HERE, "bad_huge_empty.pt"), OrderedDict([("w", Tensor(s, 0, [1 << 41, 1 << 41, 0], [0, 0, 1]))]))
    s = Storage(0, "C64", f32([1, 2]))
    save(os.path.join(HERE, "bad_dtype.pt"), OrderedDict([("w", Tensor(s, 0, [1], [1]))]))
    # an older diffusers folder's VAE weights: diffusion_pytorch_model.bin
    vae = read_safetensors(os.path.join(DATA, "tiny-sd15", "vae", "diffusion_pytorch_model.safetensors"))
    save(os.path.join(HERE, "tiny-sd15-vae.bin"), vae, protocol=2)
    # an A1111 textual-inversion embedding (.pt): its vectors are tiny-sd15's token-embedding rows of
    # "cat dog" (CLIP ids 2368 and 1929), so "catdog" in a prompt must encode as "cat dog"
    te = read_safetensors(os.path.join(DATA, "tiny-sd15", "text_encoder", "model.safetensors"))
    tok = te["text_model.embeddings.token_embedding.weight"]
    C = tok.size[1]
    es = ESIZE[tok.storage.dt]
    rows = b"".join(tok.storage.data[i * C * es:(i + 1) * C * es] for i in (2368, 1929))
    vec = Tensor(Storage(0, tok.storage.dt, rows), 0, [2, C], [C, 1])
    save(os.path.join(HERE, "catdog.pt"),
         {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "catdog", "step": 500,
          "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny-sd15"})
    lora = read_safetensors(os.path.join(DATA, "tiny-sd15", "loras", "content.kohya.safetensors"))
    save(os.path.join(HERE, "content.kohya.pt"), lora, protocol=2)


main()
