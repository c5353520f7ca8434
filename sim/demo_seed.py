"""Draw a small, deterministic synthetic seed set of coloured shapes with Pillow."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (22, 163, 74),
    "blue": (37, 99, 235),
    "yellow": (234, 179, 8),
    "orange": (249, 115, 22),
    "purple": (147, 51, 234),
    "black": (30, 30, 30),
}
KINDS = ("circle", "square", "triangle", "star")
# Pale backgrounds only, so no background pixel can be mistaken for a saturated shape colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light grey": (226, 226, 226),
    "cream": (250, 243, 224),
    "pale blue": (224, 236, 250),
}
WORDS = ("SALE", "STOP", "CAT", "GO", "42", "A7", "OPEN", "MMEVOL", "EXIT", "HI")
CAPTION_PROMPT = "<image>\nDescribe the image."
MANY_ITEMS_INDEX = 1
MANY_ITEMS = 25
BAD_CASES = ("missing_image", "escaping_path", "malformed", "not_an_image")


@dataclass(frozen=True)
class Shape:
    """One filled shape inside the square of side `size` whose top-left pixel is (x, y)."""

    kind: str
    colour: str
    x: int
    y: int
    size: int
    text: str = ""

    @property
    def label(self) -> str:
        """Return the name used in boxes and questions, e.g. "red circle"."""
        return f"{self.colour} {self.kind}"

    def points(self) -> list[tuple[int, int]]:
        """Return the integer polygon vertices of a triangle or star."""
        x, y, s = self.x, self.y, self.size
        if self.kind == "triangle":
            return [(x + (s - 1) // 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)]
        cx, cy, r = x + (s - 1) / 2, y + (s - 1) / 2, (s - 1) / 2
        pts = []
        for k in range(10):  # alternate outer tips and inner corners, first tip pointing up
            rr = r if k % 2 == 0 else 0.45 * r
            a = k * math.pi / 5
            pts.append((round(cx + rr * math.sin(a)), round(cy - rr * math.cos(a))))
        return pts

    def box(self) -> tuple[int, int, int, int]:
        """Return the pixel box (x0, y0, x1, y1) of the drawn pixels, end exclusive."""
        if self.kind in ("circle", "square"):
            return self.x, self.y, self.x + self.size, self.y + self.size
        xs, ys = zip(*self.points(), strict=True)
        return min(xs), min(ys), max(xs) + 1, max(ys) + 1

    def draw(self, draw: ImageDraw.ImageDraw) -> None:
        """Fill the shape; polygons also get a 1 px outline so their tips reach the box edge."""
        rgb = COLOURS[self.colour]
        x0, y0, x1, y1 = self.x, self.y, self.x + self.size - 1, self.y + self.size - 1
        if self.kind == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=rgb)
        elif self.kind == "square":
            draw.rectangle([x0, y0, x1, y1], fill=rgb)
        else:
            pts = self.points()
            draw.polygon(pts, fill=rgb)
            draw.line([*pts, pts[0]], fill=rgb, width=1)


def bad_indices(n: int) -> dict[str, int]:
    """Return the row index of each bad case that `make_demo_seed(..., bad=True)` appends."""
    return {name: n + k for k, name in enumerate(BAD_CASES)}


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _region(shape: Shape, w: int, h: int) -> str:
    """Return where the shape's centre falls on a 3x3 grid, e.g. "in the top left"."""
    x0, y0, x1, y1 = shape.box()
    col = ("left", "", "right")[min(2, int(3 * (x0 + x1) / 2 / w))]
    row = ("top", "", "bottom")[min(2, int(3 * (y0 + y1) / 2 / h))]
    if row and col:
        return f"in the {row} {col}"
    return f"at the {row}" if row else f"on the {col}" if col else "in the centre"


def _listing(names: list[str]) -> str:
    items = [_a(n) for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _place(rng: random.Random, w: int, h: int) -> list[Shape]:
    """Place 1-5 non-overlapping shapes of distinct colours, dropping any that find no room."""
    shapes: list[Shape] = []
    colours = rng.sample(list(COLOURS), rng.randint(1, 5))
    gap = 12  # keeps boxes apart so "left of" questions and pixel checks stay unambiguous
    for colour in colours:
        kind = rng.choice(KINDS)
        for _ in range(200):
            s = rng.randint(w // 9, w // 4)
            x, y = rng.randint(gap, w - s - gap), rng.randint(gap, h - s - gap)
            if all(
                x + s + gap <= o.x
                or o.x + o.size + gap <= x
                or y + s + gap <= o.y
                or o.y + o.size + gap <= y
                for o in shapes
            ):
                shapes.append(Shape(kind, colour, x, y, s))
                break
    return shapes


def _draw_text(draw: ImageDraw.ImageDraw, shape: Shape) -> bool:
    """Write `shape.text` in the lower middle of the shape, leaving its centre pixel untouched."""
    s, cx = shape.size, shape.x + shape.size / 2
    # The band cx +- 0.33 s, cy + 0.08 s .. cy + 0.33 s lies inside both the square and the circle.
    top, bottom, half = shape.y + 0.58 * s, shape.y + 0.83 * s, 0.33 * s
    for fs in range(int(0.25 * s), 7, -1):
        font = ImageFont.load_default(size=fs)
        x0, y0, x1, y1 = draw.textbbox((0, 0), shape.text, font=font)
        if x1 - x0 <= 2 * half and y1 - y0 <= bottom - top:
            ink = (255, 255, 255) if sum(COLOURS[shape.colour]) < 450 else (0, 0, 0)
            xy = (cx - (x1 - x0) / 2 - x0, (top + bottom) / 2 - (y1 - y0) / 2 - y0)
            draw.text(xy, shape.text, fill=ink, font=font)
            return True
    return False


def _background(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    a, b = rng.sample(list(BACKGROUNDS), 2)
    if rng.random() < 0.5:
        return Image.new("RGB", (w, h), BACKGROUNDS[a]), f"plain {a} background"
    vertical = rng.random() < 0.5
    ramp = Image.linear_gradient("L").resize((w, h) if vertical else (h, w))
    if not vertical:
        ramp = ramp.transpose(Image.Transpose.ROTATE_90)
    img = Image.composite(
        Image.new("RGB", (w, h), BACKGROUNDS[b]), Image.new("RGB", (w, h), BACKGROUNDS[a]), ramp
    )
    side = ("top", "bottom") if vertical else ("right", "left")
    return img, f"gradient background from {a} at the {side[0]} to {b} at the {side[1]}"


def _qa_pool(
    shapes: list[Shape], bg: str, w: int, h: int, rng: random.Random
) -> list[tuple[str, str]]:
    """Return every question this picture answers truthfully, the most telling ones first."""
    names = [s.label for s in shapes]
    kinds = [s.kind for s in shapes]
    pool = [
        (
            "How many shapes are there in the image?",
            f"There {'is one shape' if len(shapes) == 1 else f'are {len(shapes)} shapes'}: "
            f"{_listing(names)}.",
        ),
        ("What does the background of the image look like?", f"It is a {bg}."),
    ]
    for kind in KINDS:
        c = kinds.count(kind)
        if c:
            pool.append(
                (
                    f"How many {kind}s are in the image?",
                    f"There {'is 1 ' + kind if c == 1 else f'are {c} {kind}s'}.",
                )
            )
    for s in shapes:
        if kinds.count(s.kind) == 1:
            pool.append((f"What colour is the {s.kind}?", f"The {s.kind} is {s.colour}."))
        pool.append(
            (f"What shape is the {s.colour} object?", f"The {s.colour} object is {_a(s.kind)}.")
        )
        pool.append(
            (
                f"Where in the image is the {s.label}?",
                f"The {s.label} is {_region(s, w, h)} of the image.",
            )
        )
        if s.text:
            pool.append(
                (
                    f"What is written on the {s.label}?",
                    f'The {s.label} has the text "{s.text}" written on it.',
                )
            )
    for a in shapes:
        for b in shapes:
            if a.colour >= b.colour:  # each unordered pair once
                continue
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box(), b.box()
            # Only ask when the boxes do not overlap along that axis, so the answer is clear-cut.
            if ax1 < bx0 or bx1 < ax0:
                left, right = (a, b) if ax1 < bx0 else (b, a)
                pool.append(
                    (
                        f"Which is further to the left, the {a.label} or the {b.label}?",
                        f"The {left.label} is to the left of the {right.label}.",
                    )
                )
            if ay1 < by0 or by1 < ay0:
                where = "above" if ay1 < by0 else "below"
                pool.append(
                    (
                        f"Is the {a.label} above or below the {b.label}?",
                        f"The {a.label} is {where} the {b.label}.",
                    )
                )
    yes, no = [], []
    for colour in COLOURS:
        for kind in KINDS:
            label = f"{colour} {kind}"
            q = f"Is there {_a(label)} in the image?"
            if label in names:
                where = _region(shapes[names.index(label)], w, h)
                yes.append((q, f"Yes, there is {_a(label)} {where}."))
            else:
                no.append((q, f"No, there is no {label} in the image."))
    # Existence questions would swamp small samples: mix in one yes and one no, keep the rest last.
    rng.shuffle(yes)
    rng.shuffle(no)
    pool += yes[:1] + no[:1]
    rng.shuffle(pool)
    rest = yes[1:] + no[1:]
    rng.shuffle(rest)
    return pool + rest


def _item(q: str, a: str) -> dict:
    return {
        "image_position": "single",
        "objects": [],
        "skills": [],
        "format": "Norm",
        "question": q,
        "steps": [],
        "answer": a,
    }


def _caption(shapes: list[Shape], bg: str, w: int, h: int) -> str:
    where = [f"{s.label} {_region(s, w, h)}" for s in shapes]
    text = f"A synthetic image with a {bg} showing {_listing(where)}."
    for s in shapes:
        if s.text:
            text += f' The {s.label} has the text "{s.text}" written on it.'
    return text


def _sample(i: int, n: int, rng: random.Random, images_root: Path) -> dict:
    """Draw image `i`, write it and return its seed row."""
    w, h = (800, 600) if rng.random() < 0.25 else (640, 480)
    ext = "png" if rng.random() < 0.35 else "jpg"
    img, bg = _background(rng, w, h)
    shapes = _place(rng, w, h)
    draw = ImageDraw.Draw(img)
    for s in shapes:
        s.draw(draw)
    writable = [k for k, s in enumerate(shapes) if s.kind in ("circle", "square")]
    if writable and rng.random() < 0.6:
        k = rng.choice(writable)
        labelled = replace(shapes[k], text=rng.choice(WORDS))
        if _draw_text(draw, labelled):
            shapes[k] = labelled
    rel = f"shapes/{i:06d}.{ext}"
    path = images_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == "png":
        img.save(path, "PNG")
    else:
        img.save(path, "JPEG", quality=92)

    pool = _qa_pool(shapes, bg, w, h, rng)
    qa = pool[:MANY_ITEMS] if i == MANY_ITEMS_INDEX else pool[: rng.randint(2, 6)]
    if i % 6 == 4:  # LLaVA turns, as some real seeds ship them
        conv: list[dict] = []
        for j, (q, a) in enumerate(qa):
            conv += [
                {"from": "human", "value": ("<image>\n" if j == 0 else "") + q},
                {"from": "gpt", "value": a},
            ]
    else:
        conv = [_item(q, a) for q, a in qa]
    bare = i % 3 == 2  # about a third of the real demo seed has neither caption nor boxes
    row = {
        # Ids are not unique in the real data: the last sample reuses the first one's id.
        "id": f"{0 if i == n - 1 and n > 2 else i:012d}",
        "image": rel,
        "conversations_v0": conv,
        "caption": []
        if bare
        else [
            {"from": "human", "value": CAPTION_PROMPT},
            {"from": "gpt", "value": _caption(shapes, bg, w, h)},
        ],
        "det": []
        if bare
        else [
            {
                "label": s.label,
                "bbox": [round(v / d, 5) for v, d in zip(s.box(), (w, h, w, h), strict=True)],
            }
            for s in shapes
        ],
    }
    if i % 4 != 3:  # the rest leave hash_id for the tool to compute
        row["hash_id"] = f"{i}_{rel.replace('/', '_')}"
    return row


def _bad_rows(n: int, rng: random.Random, images_root: Path) -> list[dict]:
    """Write the files of the bad cases and return their rows, in BAD_CASES order."""
    item = [_item("What colour is the circle?", "The circle is red.")]
    missing = images_root / f"shapes/{n:06d}.jpg"
    missing.unlink(missing_ok=True)  # a reused out_dir must not make it exist
    garbage = images_root / f"shapes/{n + 3:06d}.jpg"
    garbage.write_bytes(b"this is not an image\n" + rng.randbytes(256))
    return [
        {
            "id": "bad_missing",
            "image": f"shapes/{n:06d}.jpg",
            "conversations_v0": item,
            "caption": [],
            "det": [],
        },
        {
            "id": "bad_escape",
            "image": "../outside.jpg",
            "conversations_v0": item,
            "caption": [],
            "det": [],
        },
        {"id": "bad_malformed", "image": 12345, "caption": [], "det": []},
        {
            "id": "bad_not_image",
            "image": f"shapes/{n + 3:06d}.jpg",
            "conversations_v0": item,
            "caption": [],
            "det": [],
        },
    ]


def make_demo_seed(
    out_dir: Path, n: int = 12, seed: int = 0, bad: bool = False
) -> tuple[Path, Path]:
    """Write a synthetic seed `out_dir/seed.jsonl` with images under `out_dir/images/`.

    Rows are laid out by index so tests can rely on them: index 1 has 25 Q&A items (chunking),
    indices with i % 6 == 4 give `conversations_v0` as LLaVA turns, indices with i % 3 == 2 have
    neither caption nor boxes, indices with i % 4 == 3 carry no `hash_id`, and the last row
    reuses the id of row 0. With `bad=True` four broken rows follow the n good ones, at the
    indices `bad_indices(n)` returns: n missing_image (file absent), n + 1 escaping_path
    (`../outside.jpg`), n + 2 malformed (no `conversations_v0`, `image` is a number) and
    n + 3 not_an_image (the file holds garbage bytes).

    Args:
        out_dir: Directory to write into; created when missing.
        n: Number of good samples.
        seed: Seed of the private random generator; equal seeds give byte-identical files.
        bad: Append the four bad rows described above.

    Returns:
        The seed file path and the image root.
    """
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    images_root = out_dir / "images"
    (images_root / "shapes").mkdir(parents=True, exist_ok=True)
    rows = [_sample(i, n, rng, images_root) for i in range(n)]
    if bad:
        rows += _bad_rows(n, rng, images_root)
    seed_path = out_dir / "seed.jsonl"
    with seed_path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return seed_path, images_root
