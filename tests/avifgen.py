"""AVIF files of the shapes libavif refuses and other viewers show (issue 25), built in code: the AV1 data
comes from Pillow's own AVIF encoder (benign generated pixels), the HEIF item structure around it is
written by hand (ftyp, meta with hdlr/pitm/iinf/iloc/iprp/iref/grpl, mdat). Shapes: grids (shared tiles
too), no `ispe`, non-essential `irot`/`imir`/`clap`, a tone-map (gain map) primary, an overlay primary, a
`pymd` pyramid, an unknown essential property. Made with the help of a research pass over libavif 1.4.2
(src/read.c) and Chromium's CrabbyAvif (what they accept and refuse)."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from mirror_scan.scan.decoders.heif import parse


def box(typ: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), typ) + payload


def fullbox(typ: bytes, version: int, flags: int, payload: bytes = b"") -> bytes:
    return box(typ, struct.pack(">I", (version << 24) | flags) + payload)


def ispe(w, h):
    return fullbox(b"ispe", 0, 0, struct.pack(">II", w, h))


def pixi(channels=3, depth=8):
    return fullbox(b"pixi", 0, 0, bytes([channels] + [depth] * channels))


def irot(angle_ccw_quarters):  # 0..3 : anti-clockwise rotation by 90*n degrees
    return box(b"irot", bytes([angle_ccw_quarters & 3]))


def imir(axis):  # 0: vertical axis (left-right flip), 1: horizontal axis (top-bottom flip)
    return box(b"imir", bytes([axis & 1]))


def clap(w_n, w_d, h_n, h_d, ho_n, ho_d, vo_n, vo_d):
    return box(b"clap", struct.pack(">IIIIiIiI", w_n, w_d, h_n, h_d, ho_n, ho_d, vo_n, vo_d))


def clap_crop(full_w, full_h, x, y, w, h):
    """clap for a crop rect (x,y,w,h) of a full_w x full_h image (offsets relative to centre)."""
    # horizOff = x + (w - full_w)/2  expressed as fraction with denominator 2
    return clap(w, 1, h, 1, 2 * x + w - full_w, 2, 2 * y + h - full_h, 2)


def grid_payload(rows, cols, out_w, out_h):
    big = out_w > 0xFFFF or out_h > 0xFFFF
    flags = 1 if big else 0
    fmt = ">II" if big else ">HH"
    return bytes([0, flags, rows - 1, cols - 1]) + struct.pack(fmt, out_w, out_h)


def build_heif(
    items,
    props,
    ipma,
    primary,
    iref=(),
    grpl=(),
    ftyp=None,
    raw_grpl=b"",
    major=b"avif",
    brands=(b"avif", b"mif1", b"miaf"),
) -> bytes:
    """items: list of dict(id, type, data, name=b'', hidden=False).
    props: list of raw property boxes; ipma: {item_id: [(prop_index_1based, essential)]}.
    iref: [(type, from, [to...])]; grpl: [(type, group_id, [entity ids])]."""
    if ftyp is None:
        ftyp = box(b"ftyp", major + b"\0\0\0\0" + b"".join(brands))
    else:
        ftyp = box(b"ftyp", ftyp)
    hdlr = fullbox(b"hdlr", 0, 0, b"\0" * 4 + b"pict" + b"\0" * 12 + b"\0")
    pitm = fullbox(b"pitm", 0, 0, struct.pack(">H", primary))
    infes = b"".join(
        fullbox(
            b"infe",
            2,
            1 if it.get("hidden") else 0,
            struct.pack(">HH", it["id"], 0) + it["type"] + it.get("name", b"") + b"\0",
        )
        for it in items
    )
    iinf = fullbox(b"iinf", 0, 0, struct.pack(">H", len(items)) + infes)
    ipco = box(b"ipco", b"".join(props))
    large = len(props) > 127
    ent = b""
    for iid in sorted(ipma):
        lst = ipma[iid]
        ent += struct.pack(">HB", iid, len(lst))
        for idx, ess in lst:
            if large:
                ent += struct.pack(">H", idx | (0x8000 if ess else 0))
            else:
                ent += bytes([idx | (0x80 if ess else 0)])
    ipma_b = fullbox(b"ipma", 0, 1 if large else 0, struct.pack(">I", len(ipma)) + ent)
    iprp = box(b"iprp", ipco + ipma_b)
    iref_b = b""
    if iref:
        iref_b = fullbox(
            b"iref",
            0,
            0,
            b"".join(
                box(t, struct.pack(">HH", frm, len(to)) + b"".join(struct.pack(">H", x) for x in to))
                for t, frm, to in iref
            ),
        )
    grpl_b = b""
    if raw_grpl:
        grpl_b = raw_grpl
    elif grpl:
        grpl_b = box(
            b"grpl",
            b"".join(
                fullbox(t, 0, 0, struct.pack(">II", gid, len(ids)) + b"".join(struct.pack(">I", x) for x in ids))
                for t, gid, ids in grpl
            ),
        )

    def iloc_for(base):
        ent = b""
        off = base
        for it in items:
            d = it["data"]
            ent += struct.pack(">HHHII", it["id"], 0, 1, off, len(d))  # v0: id, dref, extent_count, off, len
            off += len(d)
        return fullbox(b"iloc", 0, 0, bytes([0x44, 0x00]) + struct.pack(">H", len(items)) + ent)

    # two passes: iloc size does not depend on offsets (fixed 4-byte fields)
    iloc = iloc_for(0)
    meta = fullbox(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref_b + iprp + grpl_b)
    mdat_start = len(ftyp) + len(meta) + 8
    iloc = iloc_for(mdat_start)
    meta = fullbox(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref_b + iprp + grpl_b)
    mdat = box(b"mdat", b"".join(it["data"] for it in items))
    return ftyp + meta + mdat


def pattern(w, h, seed=0):
    """Gradient and two solid shapes, so a tile put in the wrong place or turned shows."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), ((x + y + seed * 40) * 2) % 256], -1)
    a = a.astype(np.uint8)
    a[h // 8 : h // 8 + h // 6, w // 8 : w // 8 + w // 6] = (255, 255, 255)
    a[-h // 5 : -h // 10, -w // 4 : -w // 10] = (0, 0, 0)
    return a


def encode(arr, quality=90, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "AVIF", quality=quality, speed=8, **kw)
    return b.getvalue()


def av1_parts(avif: bytes):
    """-> (payload, av1C box, colr box or None, alpha (payload, av1C, auxC) or None) of a Pillow AVIF."""
    p = parse(avif)

    def props_of(iid):
        return {p.props[i - 1][4:8]: p.props[i - 1] for i, _ in p.ipma[iid]}

    pr = props_of(p.primary)
    alpha = None
    for t, frm, _to in p.iref:
        if t == b"auxl":
            ap = props_of(frm)
            alpha = (p.payloads[frm], ap[b"av1C"], ap[b"auxC"])
    return p.payloads[p.primary], pr[b"av1C"], pr.get(b"colr"), alpha


FTYP_BRANDS = (b"avif", b"mif1", b"miaf")


class Props:
    """Collects property boxes; returns 1-based indices for ipma."""

    def __init__(self):
        self.boxes = []

    def add(self, b):
        if b in self.boxes:
            return self.boxes.index(b) + 1
        self.boxes.append(b)
        return len(self.boxes)


def single(arr, extra=(), drop_ispe=False, quality=90):
    """Single av01 primary item; extra = [(property box, essential)] appended after ispe/pixi/av1C/colr."""
    data, av1c, colr, _ = av1_parts(encode(arr, quality))
    h, w = arr.shape[:2]
    P = Props()
    assoc = []
    if not drop_ispe:
        assoc.append((P.add(ispe(w, h)), False))
    assoc += [(P.add(pixi()), False), (P.add(av1c), True), (P.add(colr), False)]
    for b, ess in extra:
        assoc.append((P.add(b), ess))
    items = [dict(id=1, type=b"av01", data=data)]
    return build_heif(items, P.boxes, {1: assoc}, primary=1, brands=FTYP_BRANDS)


def grid(arr, rows=2, cols=2, out_size=None, share=None, tile_extra=()):
    """Grid primary item (id 100) over rows x cols av01 tiles cut from arr.
    share: list of tile indices for each grid cell (e.g. [0,1,1,0]) -> same tile item referenced twice."""
    h, w = arr.shape[:2]
    th, tw = h // rows, w // cols
    ow, oh = out_size or (w, h)
    P = Props()
    items, ipma = [], {}
    tiles = [arr[r * th : (r + 1) * th, c * tw : (c + 1) * tw] for r in range(rows) for c in range(cols)]
    cell_to_tile = share if share is not None else list(range(rows * cols))
    used = sorted(set(cell_to_tile))
    colr = None
    for t in used:
        data, av1c, colr, _ = av1_parts(encode(np.ascontiguousarray(tiles[t])))
        iid = 1 + t
        items.append(dict(id=iid, type=b"av01", data=data, hidden=True))
        ipma[iid] = [
            (P.add(ispe(tw, th)), False),
            (P.add(pixi()), False),
            (P.add(av1c), True),
            (P.add(colr), False),
        ] + [(P.add(b), e) for b, e in tile_extra]
    gid = 100
    items.append(dict(id=gid, type=b"grid", data=grid_payload(rows, cols, ow, oh)))
    ipma[gid] = [(P.add(ispe(ow, oh)), False), (P.add(pixi()), False), (P.add(colr), False)]
    iref = [(b"dimg", gid, [1 + t for t in cell_to_tile])]
    return build_heif(items, P.boxes, ipma, primary=gid, iref=iref, brands=FTYP_BRANDS)


def with_alpha(arr, alpha_ispe=True):
    rgba = np.dstack([arr, np.tile(np.linspace(255, 64, arr.shape[1]).astype(np.uint8), (arr.shape[0], 1))])
    data, av1c, colr, (adata, aav1c, auxc) = av1_parts(encode(rgba))
    h, w = arr.shape[:2]
    P = Props()
    ipma = {
        1: [(P.add(ispe(w, h)), False), (P.add(pixi()), False), (P.add(av1c), True), (P.add(colr), False)],
        2: ([(P.add(ispe(w, h)), False)] if alpha_ispe else [])
        + [(P.add(pixi(1)), False), (P.add(aav1c), True), (P.add(auxc), False)],
    }
    items = [dict(id=1, type=b"av01", data=data), dict(id=2, type=b"av01", data=adata)]
    return build_heif(items, P.boxes, ipma, primary=1, iref=[(b"auxl", 2, [1])], brands=FTYP_BRANDS)


def tmap_payload(headroom_alt=(2, 1)):
    """ToneMapImage v0 (ISO 23008-12 amd) wrapping ISO 21496-1 GainMapMetadata, single channel."""
    s = bytes([0])  # tmap version
    s += struct.pack(">HH", 0, 0)  # minimum_version, writer_version
    s += bytes([0b01000000])  # is_multichannel=0, use_base_colour_space=1
    s += struct.pack(">IIII", 0, 1, headroom_alt[0], headroom_alt[1])  # base / alternate hdr headroom
    # gain_map_min, gain_map_max, gamma, base_offset, alternate_offset (n: int32 / uint32, d: uint32)
    s += struct.pack(">iIiIIIiIiI", 0, 1, 2, 1, 1, 1, 1, 64, 1, 64)
    return s


def gainmap(arr, primary_is_tmap=False):
    h, w = arr.shape[:2]
    base, av1c, colr, _ = av1_parts(encode(arr))
    gm_arr = np.repeat(pattern(w // 2, h // 2, 3)[..., :1], 3, -1)  # grey gain map, half size
    gm, gav1c, gcolr, _ = av1_parts(encode(gm_arr))
    P = Props()
    ipma = {
        1: [(P.add(ispe(w, h)), False), (P.add(pixi()), False), (P.add(av1c), True), (P.add(colr), False)],
        2: [(P.add(ispe(w, h)), False), (P.add(colr), False)],  # tmap: ispe must equal base, colr = alternate
        3: [(P.add(ispe(w // 2, h // 2)), False), (P.add(pixi()), False), (P.add(gav1c), True), (P.add(gcolr), False)],
    }
    items = [
        dict(id=1, type=b"av01", data=base),
        dict(id=2, type=b"tmap", data=tmap_payload()),
        dict(id=3, type=b"av01", data=gm, hidden=True),
    ]
    return build_heif(
        items,
        P.boxes,
        ipma,
        primary=2 if primary_is_tmap else 1,
        iref=[(b"dimg", 2, [1, 3])],
        grpl=[(b"altr", 10, [2, 1])],
        brands=(*FTYP_BRANDS, b"tmap"),
    )


def a1lx(sizes):
    large = any(s > 0xFFFF for s in sizes)
    return box(b"a1lx", bytes([1 if large else 0]) + b"".join(struct.pack(">I" if large else ">H", s) for s in sizes))


def lsel(layer_id):
    return box(b"lsel", struct.pack(">H", layer_id))


def progressive(arr, with_lsel=True):
    """'Progressive' item: two independently coded key frames (low then high quality) concatenated,
    a1lx = [len(layer0), 0, 0], lsel=0xFFFF (v1.1 spec: 'no layer selected' => progressive).
    Hand-made approximation of libavif's progressive mode (which uses AV1 spatial layers via aom)."""
    l0, av1c, colr, _ = av1_parts(encode(arr, quality=5))
    l1, av1c1, _, _ = av1_parts(encode(arr, quality=95))
    assert av1c == av1c1, (av1c, av1c1)
    h, w = arr.shape[:2]
    P = Props()
    assoc = [
        (P.add(ispe(w, h)), False),
        (P.add(pixi()), False),
        (P.add(av1c), True),
        (P.add(colr), False),
        (P.add(a1lx([len(l0), 0, 0])), False),
    ]
    if with_lsel:
        assoc.append((P.add(lsel(0xFFFF)), True))
    return build_heif([dict(id=1, type=b"av01", data=l0 + l1)], P.boxes, {1: assoc}, primary=1, brands=FTYP_BRANDS)


def pymd(arr):
    """Primary full-res item + half-res item grouped in a 'pymd' (image pyramid) entity group."""
    h, w = arr.shape[:2]
    d1, av1c, colr, _ = av1_parts(encode(arr))
    small = np.asarray(Image.fromarray(arr).resize((w // 2, h // 2)))
    d2, av1c2, _, _ = av1_parts(encode(small))
    P = Props()
    ipma = {
        1: [(P.add(ispe(w, h)), False), (P.add(pixi()), False), (P.add(av1c), True), (P.add(colr), False)],
        2: [(P.add(ispe(w // 2, h // 2)), False), (P.add(pixi()), False), (P.add(av1c2), True), (P.add(colr), False)],
    }
    items = [dict(id=1, type=b"av01", data=d1), dict(id=2, type=b"av01", data=d2)]
    # pymd: EntityToGroupBox(group_id, entities low->high res) + tile_size_x/y
    #       + per entity (layer_binning, tiles_in_layer_row_minus1, tiles_in_layer_column_minus1)
    pymd_b = fullbox(
        b"pymd",
        0,
        0,
        struct.pack(">III", 20, 2, 2)
        + struct.pack(">I", 1)
        + struct.pack(">HH", w, h)
        + struct.pack(">HHH", 2, 0, 0)
        + struct.pack(">HHH", 1, 0, 0),
    )
    return build_heif(items, P.boxes, ipma, primary=1, brands=FTYP_BRANDS, raw_grpl=box(b"grpl", pymd_b))


def iovl(arr, small):
    """'iovl' overlay primary: arr at (0,0) and small at (W-sw, H-sh) on a grey 160x96 canvas."""
    W, H = 160, 96
    d1, av1c1, colr, _ = av1_parts(encode(arr))
    d2, av1c2, _, _ = av1_parts(encode(small))
    P = Props()
    ipma = {
        1: [
            (P.add(ispe(arr.shape[1], arr.shape[0])), False),
            (P.add(pixi()), False),
            (P.add(av1c1), True),
            (P.add(colr), False),
        ],
        2: [
            (P.add(ispe(small.shape[1], small.shape[0])), False),
            (P.add(pixi()), False),
            (P.add(av1c2), True),
            (P.add(colr), False),
        ],
        3: [(P.add(ispe(W, H)), False), (P.add(pixi()), False), (P.add(colr), False)],
    }
    payload = (
        bytes([0, 0])
        + struct.pack(">4H", 0x8000, 0x8000, 0x8000, 0xFFFF)
        + struct.pack(">HH", W, H)
        + struct.pack(">hh", 0, 0)
        + struct.pack(">hh", W - small.shape[1], H - small.shape[0])
    )
    items = [
        dict(id=1, type=b"av01", data=d1, hidden=True),
        dict(id=2, type=b"av01", data=d2, hidden=True),
        dict(id=3, type=b"iovl", data=payload),
    ]
    return build_heif(items, P.boxes, ipma, primary=3, iref=[(b"dimg", 3, [1, 2])], brands=FTYP_BRANDS)


def unknown_essential(arr):
    return single(arr, extra=[(box(b"xtra", b"\0\0\0\0"), True)])


def corpus() -> dict[str, bytes]:
    """name -> bytes: every shape."""
    a, g = pattern(96, 64), pattern(128, 128, 1)
    return {
        "avif-grid.avif": grid(g),
        "avif-grid-shared-tiles.avif": grid(g, share=[0, 1, 1, 0]),
        "avif-no-ispe.avif": single(a, drop_ispe=True),
        "avif-irot-nonessential.avif": single(a, [(irot(1), False)]),
        "avif-imir-nonessential.avif": single(a, [(imir(0), False)]),
        "avif-clap-nonessential.avif": single(a, [(clap_crop(96, 64, 0, 0, 80, 48), False)]),
        "avif-gain-map-primary.avif": gainmap(a, primary_is_tmap=True),
        "avif-gain-map.avif": gainmap(a),
        "avif-overlay.avif": iovl(a, pattern(64, 64, 2)),
        "avif-pyramid.avif": pymd(g),
        "avif-unknown-essential.avif": unknown_essential(a),
    }
