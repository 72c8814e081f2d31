#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/{target}/ (committed; rerun only to regenerate).

Seeds are small real files (fuzzers spend their executions on structure, not on decoding
megapixels) plus one regression case for every finding of issue 15 (files named
`regress-*`). Needs Pillow (`pip install pillow`) for the image seeds.

    python3 fuzz/make_seeds.py
"""
import base64
import hashlib
import hmac
import io
import json
import os
import struct
import zlib

from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def card(w, h, mode="RGB"):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), (x * y) % 256)
                 for y in range(h) for x in range(w)])
    return img.convert(mode)


def save(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w, h):
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"\x78\x9c\x03\x00") + chunk(b"IEND", b""))


def palette_png(plte_len):
    raw = b"".join(b"\x00\x00\x01\x02\x00" for _ in range(4))
    plte = bytes((i * 37) % 256 for i in range(plte_len))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", plte) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def images():
    small = card(24, 16)
    out = {
        "baseline.jpg": save(small, "JPEG", quality=80),
        "progressive.jpg": save(small, "JPEG", quality=80, progressive=True),
        "gray.jpg": save(small.convert("L"), "JPEG"),
        "cmyk.jpg": save(small.convert("CMYK"), "JPEG"),
        "rgb.png": save(small, "PNG"),
        "rgba.png": save(card(24, 16, "RGBA"), "PNG"),
        "palette.png": save(small.convert("P"), "PNG"),
        "gray16.png": save(small.convert("I;16"), "PNG"),
        "optimized.png": save(small, "PNG", optimize=True),
        "lossy.webp": save(small, "WEBP", quality=70),
        "lossless.webp": save(card(24, 16, "RGBA"), "WEBP", lossless=True),
        "still.gif": save(small.convert("P"), "GIF"),
        "animated.gif": save(small.convert("P"), "GIF", save_all=True,
                             append_images=[card(24, 16).rotate(90).convert("P")], duration=50, loop=0),
        "exif-orient6.jpg": save(small, "JPEG", exif=exif_orientation(6)),
        # Regression cases (issue 15).
        "regress-extreme-shape-40000x1.png": png_header_only(40000, 1),
        "regress-extreme-shape-1x40000.png": png_header_only(1, 40000),
        "regress-plte-10-bytes.png": palette_png(10),
        "regress-plte-800-bytes.png": palette_png(800),
    }
    with open(os.path.join(FIXTURES, "bomb_30000x30000.png"), "rb") as f:
        out["regress-bomb-30000x30000.png"] = f.read()
    with open(os.path.join(FIXTURES, "truncated.jpg"), "rb") as f:
        out["truncated.jpg"] = f.read()
    # libjpeg-turbo refuses junk before EOI that zune-jpeg accepts: must render anyway.
    jpeg = bytearray(out["baseline.jpg"])
    jpeg[-2:-2] = b"\x12\x34\x56"
    out["regress-extraneous-before-eoi.jpg"] = bytes(jpeg)
    # Issue 19's sources: BMP, ICO (two RGBA entries), a two-page TIFF, an animated WebP.
    small = Image.open(os.path.join(FIXTURES, "photo_320x240.jpg")).convert("RGB").resize((12, 9))
    for name, kwargs in [
        ("small.bmp", {}),
        ("small.ico", {"sizes": [(8, 8), (12, 12)]}),
        ("pages.tif", {"compression": "tiff_lzw", "save_all": True,
                       "append_images": [small.convert("L").resize((4, 3))]}),
    ]:
        buf = io.BytesIO()
        (small.convert("RGBA") if name.endswith(".ico") else small).save(buf, format=name.split(".")[1].replace("tif", "tiff"), **kwargs)
        out[name] = buf.getvalue()
    for fixture, name in [("anim_3x64x48.webp", "animated.webp"), ("anim_3x64x48.gif", "animated.gif"),
                          ("photo_160x120.jxl", "photo.jxl"), ("photo_160x120.avif", "photo.avif"),
                          ("photo_160x120.heic", "photo.heic"),
                          # rav1d panics (aborts) on it: contained by the decoder child.
                          ("crash_rav1d_panic.avif", "regress-rav1d-panic.avif")]:
        with open(os.path.join(FIXTURES, fixture), "rb") as f:
            out[name] = f.read()
    # SVG: shapes, text, an entity, an inline PNG, a <use> and a filter (the parser's paths).
    png = io.BytesIO()
    small.save(png, format="png")
    out["drawing.svg"] = (
        '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY c "#3070c0">]>'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'viewBox="0 0 32 24" width="32" height="24"><defs><filter id="b"><feGaussianBlur '
        'stdDeviation="1"/></filter><circle id="d" r="3" fill="&c;"/></defs>'
        '<rect width="16" height="24" fill="red" opacity="0.5" filter="url(#b)"/>'
        '<use xlink:href="#d" x="20" y="8"/><text x="1" y="20" font-size="6">Ab</text>'
        '<image href="data:image/png;base64,' + base64.b64encode(png.getvalue()).decode()
        + '" x="20" y="14" width="8" height="8"/></svg>'
    ).encode()
    # Regression: a viewBox of three numbers made the SVG probe index a fourth (panic).
    out["regress-svg-viewbox-3-numbers.svg"] = b'<svg viewBox="0 0 10"/>'
    return out


def exif_orientation(o):
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, o) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd


def main():
    imgs = images()
    for name, data in imgs.items():
        put("decode", name, data)
        put("probe", name, data)

    # exif_icc: TIFF-structured EXIF, containers carrying ICC profiles, a bare profile.
    put("exif_icc", "exif-le-6", exif_orientation(6)[6:])
    put("exif_icc", "exif-be-8", b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x08\x00\x00\x00\x00\x00\x00")
    srgb = Image.new("RGB", (8, 8))
    try:
        from PIL import ImageCms
        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        put("exif_icc", "srgb.icc", profile)
        put("exif_icc", "icc.jpg", save(srgb, "JPEG", icc_profile=profile))
        put("exif_icc", "icc.png", save(srgb, "PNG", icc_profile=profile))
        put("exif_icc", "icc.webp", save(srgb, "WEBP", icc_profile=profile))
    except ImportError:
        pass

    # options: paths after the signature segment.
    ids = ["img_0123456789abcdef", "aW1nXzAxMjM0NTY3ODlhYmNkZWY"]
    for i, p in enumerate([
        "/rs:fill:300:200/g:sm/plain/{0}@webp",
        "/w:100/h:100/rt:fit/q:80/f:png/plain/{0}",
        "/pr:thumb/pr:gray/{1}.jpg",
        "/c:200:100:nowe/rot:90/fl:1:0/bg:ff00aa/pd:1:2:3:4/ex:1:so/plain/{0}",
        "/bl:2.5/sh:0.7/fi:sepia/dpr:2.5/el:1/cb:abc/exp:4102444800/plain/{0}.avif",
        "/wm:0.5:soea:10:5:0.25/ar:0/plain/{0}",
        "/resize:force:10:20:1:1/gravity:fp:0.3:0.7/{1}",
        "/rs:fill:99999:1/plain/{0}",
        "/" + "/".join(["w:1"] * 40) + "/plain/{0}",
    ]):
        put("options", f"path-{i}", p.format(*ids))

    # signature: `{signature}/{path}`; the canonical one and the padded aliases (regression).
    key, salt = bytes.fromhex("736563726574"), bytes.fromhex("68656c6c6f")
    path = "/rs:fill:300:400:0/g:sm/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png"
    sig = base64.urlsafe_b64encode(hmac.new(key, salt + path.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    put("signature", "canonical", sig + path)
    put("signature", "regress-padded-1", sig + "=" + path)
    put("signature", "regress-padded-2", sig + "==" + path)
    put("signature", "regress-padded-100", sig + "=" * 100 + path)
    put("signature", "regress-trailing-bits", sig[:-1] + chr(ord(sig[-1]) ^ 1) + path)

    # multipart: first byte is the chunk size; boundary XyZ.
    def form(*parts):
        body = b""
        for headers, content in parts:
            body += b"--XyZ\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
        return body + b"--XyZ--\r\n"
    png = imgs["rgb.png"]
    put("multipart", "file-and-fields", b"\x07" + form(
        (b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png', png),
        (b'Content-Disposition: form-data; name="title"', b"A title"),
        (b'Content-Disposition: form-data; name="tags"', b"a,b,c"),
        (b'Content-Disposition: form-data; name="alt_text"', b"alt")))
    put("multipart", "regress-invalid-utf8-title", b"\x40" + form(
        (b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png', png),
        (b'Content-Disposition: form-data; name="title"', b"\xff\xfe bad")))
    put("multipart", "two-files", b"\x01" + form(
        (b'Content-Disposition: form-data; name="file"\r\nContent-Type: image/png', png),
        (b'Content-Disposition: form-data; name="file"\r\nContent-Type: image/png', png)))
    put("multipart", "unknown-field", b"\xff" + form(
        (b'Content-Disposition: form-data; name="owner"', b"someone-else")))

    # jwt: even first byte = raw token; odd = header 0xFF claims, signed by the target.
    now = "$NOW"
    good = '{"sub":"u1","exp":' + now + '0,"iat":' + now + ',"iss":"https://idp.test","aud":"pixgate","role":"editor","plan":"pro"}'
    put("jwt", "signed-good", b"\x01" + b'{"alg":"HS256","typ":"JWT"}' + b"\xff" + good.encode())
    put("jwt", "signed-control-sub", b"\x01" + b'{"alg":"HS256"}' + b"\xff" + good.replace('"u1"', '"u\\u0000"').encode())
    put("jwt", "signed-alg-none", b"\x01" + b'{"alg":"none"}' + b"\xff" + good.encode())
    put("jwt", "signed-crit", b"\x01" + b'{"alg":"HS256","crit":["exp"]}' + b"\xff" + good.encode())
    put("jwt", "raw-garbage", b"\x00eyJhbGciOiJIUzI1NiJ9.e30.AAAA")
    put("jwt", "raw-empty-parts", b"\x00..")

    # jwks: the test fixtures plus odd shapes.
    for name in ("jwks.json", "jwks_rotated.json"):
        with open(os.path.join(FIXTURES, name), "rb") as f:
            put("jwks", name, f.read())
    put("jwks", "octet", json.dumps({"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]}))
    put("jwks", "empty", '{"keys":[]}')

    # audit_chain: a sealed batch, and event lines for the round trip.
    events = [{"event": "image.upload", "actor": {"type": "user", "id": "u1"}},
              {"event": "image.delete", "n": 2}]
    prev = "0" * 64
    lines = []
    for e in events:
        line = '{"prev":"' + prev + '",' + json.dumps(e, separators=(",", ":"))[1:]
        prev = hashlib.sha256(line.encode()).hexdigest()
        lines.append(line)
    header = {"batch": {"schema": "pixgate.audit-batch/1", "instance": "fz", "seq": 1,
                        "prev_head": "0" * 64, "head": prev, "count": 2}}
    put("audit_chain", "sealed-batch", json.dumps(header, separators=(",", ":")) + "\n" + "\n".join(lines) + "\n")
    put("audit_chain", "events", "\n".join(json.dumps(e) for e in events))
    put("audit_chain", "key", "audit/2026/12/04/fz-0000000001.ndjson")

    # zip: [mode, name_len, len_hi, len_lo, name, content]*
    def entry(mode, name, content):
        return bytes([mode, len(name), len(content) >> 8, len(content) & 255]) + name + content
    put("zip", "two-entries", entry(0x06, b"manifest.json", b'{"a":1}') + entry(1, b"images/a.png", png[:200]))
    put("zip", "bad-names", entry(0, b"../x", b"1") + entry(0, b"/abs", b"2") + entry(1, b"a\\b", b"3") + entry(0, b"ok", b""))


if __name__ == "__main__":
    main()
