"""Synthetic street scenes in the Cityscapes layout -- the embedded default dataset.

    python -m datasets.synthetic --out data/synthetic --train 200 --val 50 --size 128x256 --seed 0

writes `<out>/leftImg8bit/{train,val}/synthcity/synthcity_<seq>_000019_leftImg8bit.png` and
`<out>/gtFine/{train,val}/synthcity/..._gtFine_labelIds.png` holding Cityscapes *label ids*, so the
Cityscapes loader, the id->train-id table and the official-format export are all exercised.
Train images use sequence numbers 0..N-1, val images 500000+i, so names are unique across splits.
`<out>/synthetic.json` records the generation parameters; `ensure` refuses to reuse a tree made
with other parameters instead of silently training on the wrong data.

What the scenes are built to exercise (the papers' knobs):
- large stuff: a perspective street canyon -- road, sidewalks, building facades with windows,
  vegetation (park sides, street trees), terrain strips, sky;
- thin structures: poles (1-2 px wide), traffic signs and traffic lights mounted on them;
- small objects: persons on sidewalks (some crossing), riders on bicycles/motorcycles;
- look-alike pairs drawn from the *same* colour/texture distribution, separable only by shape,
  size or context: wall (solid) vs fence (lattice); car vs truck (size, cab + tall box);
  bus (wheels, on road) vs train (longer, wheel skirt, on rails -- "rail track", an ignored id);
  person vs rider (on a two-wheeler); bicycle (thin rings) vs motorcycle (solid wheels, body);
  vegetation (upright crowns) vs terrain (ground strip) share the foliage texture.
- void/ignored pixels: rails (id 10) and, in some images, an ego-vehicle hood (id 1).
Appearance: every class paints a material (asphalt, paving, facade, concrete, foliage, paint,
glass, ...) shared across classes, with per-image colour draws, low- and high-frequency noise
scaled per material, an illumination gradient, cast shadows and a slight blur, so pixel colour
alone does not separate the classes.

Determinism: image i of a split is drawn from `np.random.default_rng([seed, split, i])`, so the
bytes depend only on (seed, split, index, size) -- not on how many images are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

from .cityscapes import IMAGE_SUFFIX, LABEL_ID_SUFFIX
from .errors import DatasetError

CITY = "synthcity"
FRAME = 19
VAL_SEQ_OFFSET = 500000
MARKER = "synthetic.json"
GENERATOR_VERSION = 1
SPLITS = {"train": 0, "val": 1}
DEFAULTS = {"train": 200, "val": 50, "size": (128, 256), "seed": 0}
DEFAULTS_ROOT = "data/synthetic"

# Cityscapes label ids used by the generator.
EGO, RAIL = 1, 10
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33

# Materials: texture is a property of the material, not of the class.
(M_SKY, M_FACADE, M_CONCRETE, M_FOLIAGE, M_ASPHALT, M_PAVING, M_METAL, M_SIGN, M_CLOTH,
 M_PAINT, M_GLASS, M_RUBBER, M_SKIN) = range(13)
# Per material: amplitude of low-frequency (blotchy) and high-frequency (grain) luminance noise.
NOISE_LOW = np.array([6, 12, 12, 32, 10, 10, 5, 3, 10, 6, 5, 3, 4], dtype=np.float32)
NOISE_HIGH = np.array([2, 8, 8, 16, 10, 9, 5, 3, 7, 4, 3, 3, 3], dtype=np.float32)

VEHICLE_PAINTS = np.array([[225, 225, 222], [172, 174, 178], [45, 45, 50], [165, 35, 30],
                           [35, 55, 135], [215, 185, 45], [45, 105, 65], [120, 90, 70]], dtype=np.float32)
CLOTH_COLOURS = np.array([[30, 30, 35], [60, 60, 120], [150, 40, 40], [200, 200, 195], [90, 70, 50],
                          [40, 100, 140], [170, 140, 60], [110, 110, 110]], dtype=np.float32)


class Canvas:
    """Image (float RGB), label-id map and material map painted together, back to front."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.zeros((h, w), np.uint8)
        self.mat = np.zeros((h, w), np.uint8)

    def _paint(self, fn, label, mat, colour):
        fn(self.img, tuple(float(c) for c in colour))
        if label is not None:
            fn(self.lab, int(label))
        if mat is not None:
            fn(self.mat, int(mat))

    def poly(self, pts, label, mat, colour):
        p = [np.round(np.asarray(pts, np.float64)).astype(np.int32).reshape(-1, 1, 2)]
        self._paint(lambda t, v: cv2.fillPoly(t, p, v), label, mat, colour)

    def rect(self, x0, y0, x1, y1, label, mat, colour):
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label, mat, colour)

    def ellipse(self, cx, cy, ax, ay, label, mat, colour, thickness=-1):
        c, a = (int(round(cx)), int(round(cy))), (max(1, int(round(ax))), max(1, int(round(ay))))
        self._paint(lambda t, v: cv2.ellipse(t, c, a, 0, 0, 360, v, thickness), label, mat, colour)

    def line(self, p0, p1, thickness, label, mat, colour):
        a, b = tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1)
        th = max(1, int(round(thickness)))
        self._paint(lambda t, v: cv2.line(t, a, b, v, th), label, mat, colour)


class Scene:
    """One random street scene; `render()` returns (uint8 RGB image, uint8 label-id map)."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.h, self.w = rng, h, w
        self.cv = Canvas(h, w)
        self.hy = h * rng.uniform(0.36, 0.5)                 # horizon row
        self.vx = w * rng.uniform(0.38, 0.62)                # vanishing point column
        self.things: list[tuple[float, callable]] = []       # (bottom row, draw) for depth sorting

    # --- geometry helpers -----------------------------------------------------------------
    def u(self, y: float) -> float:
        """Pixels per 'unit' (about the camera height) for an object standing on row y."""
        return max(0.5, (y - self.hy) / (self.h - self.hy)) * self.h * 0.25 if y > self.hy else 0.5

    def ground_x(self, b: float, y: float) -> float:
        """Column at row y of the ground line that meets the image bottom at column b."""
        return self.vx + (b - self.vx) * (y - self.hy) / (self.h - self.hy)

    def ground_y(self, b: float, x: float) -> float:
        """Row at column x of the ground line through the vanishing point and (b, h)."""
        return self.hy + (x - self.vx) / (b - self.vx) * (self.h - self.hy)

    def colour(self, mean, sd):
        return np.clip(np.asarray(mean, np.float32) + self.rng.normal(0, sd, 3), 0, 255)

    def shade(self, c, f):
        return np.clip(np.asarray(c, np.float32) * f, 0, 255)

    # --- stuff ----------------------------------------------------------------------------
    def sky(self):
        r, h = self.rng, self.h
        if r.random() < 0.3:   # overcast: grey, overlaps facade/concrete colours
            top = self.colour((175, 178, 185), 15)
            bottom = np.clip(top + 20, 0, 255)
        else:
            top = self.colour((85, 135, 205), 18)
            bottom = self.colour((175, 200, 230), 15)
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        self.cv.img[:] = top * (1 - t) + bottom * t
        self.cv.lab[:] = SKY
        self.cv.mat[:] = M_SKY

    def layout_ground(self):
        r, w = self.rng, self.w
        road_w = w * r.uniform(0.6, 1.3)
        cx = self.vx + w * r.uniform(-0.15, 0.15)
        self.road = (cx - road_w / 2, cx + road_w / 2)
        self.walk = (self.road[0] - w * r.uniform(0.2, 0.6), self.road[1] + w * r.uniform(0.2, 0.6))
        self.park = (r.random() < 0.3, r.random() < 0.3)
        terrain = [p or r.random() < 0.25 for p in self.park]
        self.base = (self.walk[0] - (w * r.uniform(0.15, 0.6) if terrain[0] else 0.0),
                     self.walk[1] + (w * r.uniform(0.15, 0.6) if terrain[1] else 0.0))
        self.terrain = terrain

    def facades(self):
        r, cv, vx, hy = self.rng, self.cv, self.vx, self.hy
        gap = self.w * r.uniform(0.03, 0.1)
        if r.random() < 0.6:   # distant block closing the street
            bw, bh = self.w * r.uniform(0.05, 0.25), self.h * r.uniform(0.02, 0.12)
            cv.rect(vx - bw / 2, hy - bh, vx + bw / 2, hy + 1, BUILDING, M_FACADE, self.colour((150, 140, 130), 30))
        for side in (0, 1):
            if self.park[side]:
                self.tree_line(side, gap)
                continue
            b = self.base[side]
            x_near, x_far = (0.0, vx - gap) if side == 0 else (float(self.w), vx + gap)
            x = x_near
            while (x < x_far) if side == 0 else (x > x_far):
                seg = self.w * r.uniform(0.06, 0.22)
                x1 = min(x + seg, x_far) if side == 0 else max(x - seg, x_far)
                self.building(b, x, x1, r.uniform(2.0, 12.0))
                x = x1

    def building(self, b, x0, x1, height):
        r, cv, hy = self.rng, self.cv, self.hy
        yb0, yb1 = self.ground_y(b, x0), self.ground_y(b, x1)
        yt0, yt1 = yb0 - height * (yb0 - hy), yb1 - height * (yb1 - hy)
        tones = [(165, 150, 130), (150, 150, 150), (140, 85, 70), (200, 195, 180), (110, 110, 115)]
        base = self.colour(tones[r.integers(len(tones))], 14)
        cv.poly([(x0, yb0), (x1, yb1), (x1, yt1), (x0, yt0)], BUILDING, M_FACADE, base)
        rows, cols = int(r.integers(3, 9)), int(r.integers(1, 5))
        glass = self.colour((55, 65, 80), 12) if r.random() < 0.7 else self.shade(base, 1.35)

        def at(u, v):   # facade coordinates (u along, v up) -> pixel
            x = x0 + u * (x1 - x0)
            yb, yt = yb0 + u * (yb1 - yb0), yt0 + u * (yt1 - yt0)
            return x, yb - v * (yb - yt)
        for i in range(rows):
            v0 = 0.12 + i * 0.85 / rows
            for j in range(cols):
                u0 = 0.15 + j * 0.75 / cols
                quad = [at(u0, v0), at(u0 + 0.45 / cols, v0), at(u0 + 0.45 / cols, v0 + 0.45 / rows),
                        at(u0, v0 + 0.45 / rows)]
                cv.poly(quad, None, None, glass)

    def crown(self, cx, cy, radius, colour):
        r = self.rng
        for _ in range(int(r.integers(3, 6))):
            dx, dy = r.normal(0, radius * 0.45, 2)
            rad = radius * r.uniform(0.5, 0.9)
            self.cv.ellipse(cx + dx, cy + dy, rad, rad * r.uniform(0.8, 1.1), VEGETATION, M_FOLIAGE,
                            self.shade(colour, r.uniform(0.85, 1.15)))

    def tree_line(self, side, gap):
        r, b = self.rng, self.base[side]
        green = self.colour((70, 105, 45), 15)
        xs = np.linspace(0 if side == 0 else self.w, self.vx + (-gap if side == 0 else gap), int(r.integers(6, 12)))
        for x in xs:
            y = self.ground_y(b, x)
            u = (y - self.hy) / (self.h - self.hy) * self.h * 0.25
            trunk_h = u * r.uniform(1.0, 2.0)
            self.cv.line((x, y), (x, y - trunk_h), max(1, u * 0.12), VEGETATION, M_FOLIAGE, self.shade(green, 0.6))
            self.crown(x, y - trunk_h - u * 0.8, u * r.uniform(1.0, 1.8), green)

    def ground(self):
        r, cv, vp, h = self.rng, self.cv, (self.vx, self.hy), self.h
        asphalt = self.colour((85, 85, 90), 12)
        paving = self.colour((135, 128, 120), 18)
        grass = self.colour((110, 135, 65), 18)   # overlaps the vegetation distribution
        for side in (0, 1):
            if self.terrain[side]:
                cv.poly([vp, (self.base[side], h), (self.walk[side], h)], TERRAIN, M_FOLIAGE, grass)
            cv.poly([vp, (self.walk[side], h), (self.road[side], h)], SIDEWALK, M_PAVING, paving)
            # tile joints (texture only)
            for t in np.linspace(0.1, 1, int(r.integers(4, 9))) ** 1.6:
                y = self.hy + t * (h - self.hy)
                cv.line((self.ground_x(self.walk[side], y), y), (self.ground_x(self.road[side], y), y), 1,
                        None, None, self.shade(paving, 0.8))
        cv.poly([vp, (self.road[0], h), (self.road[1], h)], ROAD, M_ASPHALT, asphalt)
        curb = self.shade(paving, 1.2)
        for side in (0, 1):
            cv.line(vp, (self.road[side], h), 1 + (self.w > 300), SIDEWALK, M_PAVING, curb)
        # dashed centre marking (road label, texture only)
        mid = (self.road[0] + self.road[1]) / 2
        for t0 in np.arange(0.05, 1.0, 0.12):
            ya, yb = self.hy + t0 ** 1.5 * (h - self.hy), self.hy + (t0 + 0.05) ** 1.5 * (h - self.hy)
            cv.line((self.ground_x(mid, ya), ya), (self.ground_x(mid, yb), yb), max(1, self.u(yb) * 0.08),
                    None, None, (215, 215, 205))

    def barrier(self, side, fence: bool):
        """A wall (solid) or fence (lattice) along the back of the sidewalk, same material."""
        r, cv, b = self.rng, self.cv, self.walk[side]
        lo, hi = (0.0, self.vx - 0.05 * self.w) if side == 0 else (self.vx + 0.05 * self.w, float(self.w))
        xa = r.uniform(lo, hi)
        xb = float(np.clip(xa + (1 if side == 0 else -1) * self.w * r.uniform(0.15, 0.5), lo, hi))
        xa, xb = min(xa, xb), max(xa, xb)
        height = r.uniform(0.9, 1.8)
        colour = self.colour([(150, 145, 135), (120, 120, 125), (175, 165, 150)][r.integers(3)], 14)
        label = FENCE if fence else WALL

        def at(x, v):
            y = self.ground_y(b, x)
            return x, y - v * height * self.u(y)
        if not fence:
            cv.poly([at(xa, 0), at(xb, 0), at(xb, 1), at(xa, 1)], label, M_CONCRETE, colour)
            return
        n_posts = int(r.integers(4, 12))
        for x in np.linspace(xa, xb, n_posts):
            y = self.ground_y(b, x)
            cv.line(at(x, 0), at(x, 1), max(1, self.u(y) * 0.08), label, M_CONCRETE, colour)
        for v in np.linspace(0.15, 1.0, int(r.integers(2, 4))):
            cv.line(at(xa, v), at(xb, v), max(1, self.u(self.ground_y(b, (xa + xb) / 2)) * 0.06), label, M_CONCRETE,
                    colour)
        if r.random() < 0.5:   # mesh
            for x in np.linspace(xa, xb, n_posts * 3)[:-1]:
                step = (xb - xa) / (n_posts * 3)
                cv.line(at(x, 0.15), at(x + step, 1.0), 1, label, M_CONCRETE, colour)

    def rails(self, y, u):
        """Two horizontal rails at row y across the whole width (ignored label id 10)."""
        steel = self.colour((95, 90, 85), 8)
        for dy in (0.0, -0.18 * u):
            self.cv.line((0, y + dy), (self.w, y + dy), max(1, u * 0.06), RAIL, M_METAL, steel)
        for x in np.arange(self.rng.uniform(0, u * 0.5), self.w, max(2.0, u * 0.5)):   # sleepers
            self.cv.line((x, y + u * 0.03), (x + u * 0.1, y - 0.2 * u), max(1, u * 0.05), RAIL, M_METAL,
                         self.shade(steel, 0.7))

    # --- things ---------------------------------------------------------------------------
    def road_point(self, dmin=0.08, dmax=1.0, margin=0.0):
        r = self.rng
        y = self.hy + r.uniform(dmin, dmax) * (self.h - self.hy)
        xl, xr = self.ground_x(self.road[0], y), self.ground_x(self.road[1], y)
        return float(r.uniform(xl + margin * (xr - xl), xr - margin * (xr - xl))), float(y)

    def walk_point(self, side=None, near_curb=False):
        r = self.rng
        side = int(r.integers(2)) if side is None else side
        y = self.hy + r.uniform(0.08, 1.0) * (self.h - self.hy)
        xo, xi = self.ground_x(self.walk[side], y), self.ground_x(self.road[side], y)
        t = r.uniform(0.75, 0.95) if near_curb else r.uniform(0.1, 0.9)
        return float(xo + t * (xi - xo)), float(y)

    def car(self, x, y, paint, facing):
        cv, u = self.cv, self.u(y)
        length = u * self.rng.uniform(2.4, 3.0)
        x0, x1 = x - length / 2, x + length / 2
        wheel = 0.22 * u
        cv.rect(x0, y - 0.75 * u, x1, y - wheel * 0.8, CAR, M_PAINT, paint)
        f = 1 if facing > 0 else -1
        c0, c1 = x - f * 0.3 * length, x + f * 0.18 * length
        cabin = [(c0, y - 0.75 * u), (c1, y - 0.75 * u), (c1 - f * 0.12 * length, y - 1.2 * u),
                 (c0 + f * 0.05 * length, y - 1.2 * u)]
        cv.poly(cabin, CAR, M_PAINT, paint)
        inset = [(px * 0.85 + x * 0.15 - f * 0.02 * length, py * 0.85 + (y - 0.95 * u) * 0.15) for px, py in cabin]
        cv.poly(inset, CAR, M_GLASS, self.colour((50, 60, 75), 10))
        for wx in (x0 + 0.2 * length, x1 - 0.2 * length):
            cv.ellipse(wx, y - wheel, wheel, wheel, CAR, M_RUBBER, (25, 25, 28))

    def truck(self, x, y, paint, facing):
        cv, u, r = self.cv, self.u(y), self.rng
        length = u * r.uniform(3.8, 5.0)
        x0, x1 = x - length / 2, x + length / 2
        f = 1 if facing > 0 else -1
        wheel = 0.3 * u
        split = x + f * 0.22 * length          # cab at the front, cargo box behind
        box = (x0, split) if f > 0 else (split, x1)
        cab = (split, x1) if f > 0 else (x0, split)
        cv.rect(box[0], y - r.uniform(1.7, 2.1) * u, box[1], y - wheel * 1.2, TRUCK, M_PAINT,
                self.colour(paint, 10) if r.random() < 0.5 else paint)
        cv.rect(cab[0], y - 1.35 * u, cab[1], y - wheel * 1.2, TRUCK, M_PAINT, paint)
        cw = cab[1] - cab[0]
        win = (cab[0] + 0.45 * cw, cab[1] - 0.1 * cw) if f > 0 else (cab[0] + 0.1 * cw, cab[1] - 0.45 * cw)
        cv.rect(win[0], y - 1.25 * u, win[1], y - 0.85 * u, TRUCK, M_GLASS, self.colour((50, 60, 75), 10))
        for wxx in (x0 + 0.15 * length, x0 + 0.32 * length, x1 - 0.15 * length):
            cv.ellipse(wxx, y - wheel, wheel, wheel, TRUCK, M_RUBBER, (25, 25, 28))

    def long_vehicle(self, x, y, paint, label):
        """Bus (wheels, road) or train (longer, skirt, rails): same body and window band."""
        cv, u, r = self.cv, self.u(y), self.rng
        is_train = label == TRAIN
        length = u * (r.uniform(9, 16) if is_train else r.uniform(5.0, 6.5))
        height = u * r.uniform(1.8, 2.1)
        x0, x1 = x - length / 2, x + length / 2
        bottom = y - (0.1 * u if is_train else 0.3 * u)
        cv.rect(x0, y - height, x1, bottom, label, M_PAINT, paint)
        glass = self.colour((50, 60, 75), 10)
        cv.rect(x0 + 0.03 * length, y - 0.85 * height, x1 - 0.03 * length, y - 0.55 * height, label, M_GLASS, glass)
        n = int(length / u * 1.2)
        for px in np.linspace(x0 + 0.03 * length, x1 - 0.03 * length, max(n, 2)):   # window pillars
            cv.line((px, y - 0.85 * height), (px, y - 0.55 * height), max(1, 0.06 * u), label, M_PAINT, paint)
        if is_train:
            cv.rect(x0, y - 0.3 * u, x1, bottom, label, M_PAINT, self.shade(paint, 0.45))
        else:
            wheel = 0.3 * u
            for wx in (x0 + 0.18 * length, x1 - 0.2 * length):
                cv.ellipse(wx, y - wheel, wheel, wheel, BUS, M_RUBBER, (25, 25, 28))

    def figure(self, x, y, label, seated=False):
        """Person (standing) or rider (seated on a two-wheeler): same clothes, same skin."""
        cv, u, r = self.cv, self.u(y), self.rng
        top_c, leg_c = CLOTH_COLOURS[r.integers(len(CLOTH_COLOURS))], CLOTH_COLOURS[r.integers(len(CLOTH_COLOURS))]
        top_c, leg_c = self.colour(top_c, 12), self.colour(leg_c, 12)
        height = u * r.uniform(1.0, 1.25)
        width = height * 0.26
        hip = y - 0.48 * height
        if seated:
            cv.line((x - width * 0.2, hip), (x - width * 0.9, y - 0.05 * height), max(1, width * 0.35), label, M_CLOTH,
                    leg_c)
        else:
            stride = r.uniform(0, 0.25) * width
            for dx in (-0.25 * width - stride, 0.25 * width + stride):
                cv.line((x, hip), (x + dx, y), max(1, width * 0.35), label, M_CLOTH, leg_c)
        cv.rect(x - width / 2, y - 0.85 * height, x + width / 2, hip, label, M_CLOTH, top_c)
        cv.ellipse(x, y - 0.92 * height, width * 0.35, height * 0.08, label, M_SKIN,
                   self.colour((190, 150, 120), 25))

    def two_wheeler(self, x, y, label, facing):
        cv, u, r = self.cv, self.u(y), self.rng
        f = 1 if facing > 0 else -1
        base = self.colour([(30, 30, 35), (150, 30, 30), (40, 60, 130), (160, 160, 160)][r.integers(4)], 10)
        wheel = 0.3 * u
        a, b = x - f * 0.55 * u, x + f * 0.55 * u
        if label == BICYCLE:
            th = max(1, 0.05 * u)
            for wx in (a, b):
                cv.ellipse(wx, y - wheel, wheel, wheel, label, M_METAL, base, thickness=int(th))
            seat, bar = (x - f * 0.15 * u, y - 0.75 * u), (b - f * 0.1 * u, y - 0.85 * u)
            for p, q in (((a, y - wheel), seat), (seat, (x, y - wheel)), ((x, y - wheel), bar), (bar, (b, y - wheel)),
                         (seat, bar)):
                cv.line(p, q, th, label, M_METAL, base)
        else:
            for wx in (a, b):
                cv.ellipse(wx, y - wheel, wheel, wheel, label, M_RUBBER, (25, 25, 28))
            cv.ellipse(x, y - 0.6 * u, 0.45 * u, 0.2 * u, label, M_PAINT, base)
            cv.line((b, y - wheel), (b - f * 0.1 * u, y - 0.95 * u), max(1, 0.08 * u), label, M_METAL, (60, 60, 60))

    def pole(self, x, y):
        cv, u, r = self.cv, self.u(y), self.rng
        height = u * r.uniform(2.8, 4.5)
        metal = self.colour((120, 120, 118), 18)
        top = y - height
        cv.line((x, y), (x, top), max(1, 0.06 * u), POLE, M_METAL, metal)
        kind = r.random()
        if kind < 0.55:    # traffic sign
            s = u * r.uniform(0.22, 0.32)
            face = [(200, 40, 40), (40, 70, 160), (225, 200, 40), (230, 230, 230)][r.integers(4)]
            cy = top + s
            shape = r.integers(3)
            if shape == 0:
                cv.ellipse(x, cy, s, s, SIGN, M_SIGN, self.colour(face, 10))
                cv.ellipse(x, cy, s * 0.6, s * 0.6, SIGN, M_SIGN, (235, 235, 235))
            elif shape == 1:
                cv.poly([(x - s, cy + s * 0.8), (x + s, cy + s * 0.8), (x, cy - s)], SIGN, M_SIGN, self.colour(face, 10))
            else:
                cv.rect(x - s * 1.2, cy - s * 0.7, x + s * 1.2, cy + s * 0.7, SIGN, M_SIGN, self.colour(face, 10))
        elif kind < 0.9:   # traffic light
            bw, bh = u * 0.22, u * 0.6
            cv.rect(x - bw / 2, top, x + bw / 2, top + bh, LIGHT, M_METAL, self.colour((35, 35, 38), 6))
            lit = r.integers(3)
            for i, c in enumerate(((230, 50, 40), (240, 190, 40), (60, 220, 90))):
                on = c if i == lit else tuple(v * 0.3 for v in c)
                cv.ellipse(x, top + bh * (0.2 + 0.3 * i), bw * 0.3, bw * 0.3, LIGHT, M_SIGN, on)

    def street_tree(self, x, y):
        u, r = self.u(y), self.rng
        green = self.colour((70, 105, 45), 15)
        trunk_h = u * r.uniform(1.5, 2.5)
        self.cv.line((x, y), (x, y - trunk_h), max(1, 0.1 * u), VEGETATION, M_FOLIAGE, self.colour((80, 65, 50), 10))
        self.crown(x, y - trunk_h - u * 0.6, u * r.uniform(0.9, 1.4), green)

    def populate(self):
        r, add = self.rng, self.things.append
        paint = lambda: self.colour(VEHICLE_PAINTS[r.integers(len(VEHICLE_PAINTS))], 12)  # noqa: E731
        facing = lambda: 1 if r.random() < 0.5 else -1  # noqa: E731
        if r.random() < 0.25:
            x, y = self.road_point(0.2, 0.7)
            add((y - 0.01, lambda y=y: self.rails(y, self.u(y))))
            add((y, lambda x=x, y=y, c=paint(): self.long_vehicle(x, y, c, TRAIN)))
        for _ in range(int(r.integers(0, 5))):
            x, y = self.road_point()
            add((y, lambda x=x, y=y, c=paint(), f=facing(): self.car(x, y, c, f)))
        if r.random() < 0.35:
            x, y = self.road_point()
            add((y, lambda x=x, y=y, c=paint(), f=facing(): self.truck(x, y, c, f)))
        if r.random() < 0.3:
            x, y = self.road_point(0.15, 0.9)
            add((y, lambda x=x, y=y, c=paint(): self.long_vehicle(x, y, c, BUS)))
        for _ in range(int(r.integers(0, 3)) if r.random() < 0.5 else 0):
            x, y = self.road_point(margin=0.1)
            kind = BICYCLE if r.random() < 0.5 else MOTORCYCLE
            f = facing()

            def ride(x=x, y=y, kind=kind, f=f):
                self.two_wheeler(x, y, kind, f)
                self.figure(x - f * 0.05 * self.u(y), y - 0.45 * self.u(y), RIDER, seated=True)
            add((y, ride))
        if r.random() < 0.2:
            x, y = self.walk_point()
            add((y, lambda x=x, y=y, f=facing(): self.two_wheeler(x, y, BICYCLE, f)))
        for _ in range(int(r.integers(0, 6))):
            x, y = self.road_point() if r.random() < 0.15 else self.walk_point()
            add((y, lambda x=x, y=y: self.figure(x, y, PERSON)))
        for _ in range(int(r.integers(1, 5))):
            x, y = self.walk_point(near_curb=True)
            add((y, lambda x=x, y=y: self.pole(x, y)))
        for _ in range(int(r.integers(0, 3))):
            x, y = self.walk_point(near_curb=True)
            add((y, lambda x=x, y=y: self.street_tree(x, y)))

    # --- finishing ------------------------------------------------------------------------
    def ego_vehicle(self):
        cv, h, w = self.cv, self.h, self.w
        cv.ellipse(w / 2, h + 0.02 * h, 0.75 * w, self.rng.uniform(0.08, 0.16) * h, EGO, M_PAINT,
                   self.colour((35, 35, 40), 6))

    def finish(self) -> np.ndarray:
        r, cv, h, w = self.rng, self.cv, self.h, self.w
        img = cv.img
        low = cv2.resize(r.normal(0, 1, (h // 8 + 2, w // 8 + 2)).astype(np.float32), (w, h),
                         interpolation=cv2.INTER_CUBIC)
        grain = r.normal(0, 1, (h, w)).astype(np.float32)
        img += (low * NOISE_LOW[cv.mat] + grain * NOISE_HIGH[cv.mat])[..., None]
        img += r.normal(0, 3, (h, w, 3)).astype(np.float32)          # chroma noise
        if r.random() < 0.5:                                         # a cast shadow on the ground
            x0 = r.uniform(0, w)
            pts = np.round([(x0, self.hy), (x0 + r.uniform(-0.5, 0.5) * w, h), (r.uniform(-0.5, 1.5) * w, h)])
            mask = np.zeros((h, w), np.float32)
            cv2.fillPoly(mask, [pts.astype(np.int32).reshape(-1, 1, 2)], 1.0)
            img *= (1 - mask * r.uniform(0.25, 0.5) * (cv.lab != SKY))[..., None]
        xs = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :, None]
        img *= r.uniform(0.8, 1.15) * (1 + r.uniform(-0.3, 0.3) * xs)  # exposure + illumination gradient
        img *= self.colour((1, 1, 1), 0.04)[None, None, :]            # white balance
        img = cv2.GaussianBlur(img, (3, 3), 0.7)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        self.sky()
        self.layout_ground()
        self.facades()
        self.ground()
        for side in (0, 1):
            if self.rng.random() < 0.4:
                self.barrier(side, fence=self.rng.random() < 0.5)
        self.populate()
        for _, draw in sorted(self.things, key=lambda t: t[0]):
            draw()
        if self.rng.random() < 0.25:
            self.ego_vehicle()
        return self.finish(), self.cv.lab


def render_scene(seed: int, split: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB HxWx3 image, uint8 HxW Cityscapes label ids) of one scene; pure in its arguments."""
    h, w = size
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    return Scene(rng, h, w).render()


def sample_name(split: str, index: int) -> str:
    seq = index + (VAL_SEQ_OFFSET if split == "val" else 0)
    return f"{CITY}_{seq:06d}_{FRAME:06d}"


def _parse_size(size, key="data.generate.size") -> tuple[int, int]:
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise DatasetError(f"{key}: expected HxW like 128x256, got {size!r}")
        size = [int(p) for p in parts]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise DatasetError(f"{key}: expected [height, width] or 'HxW', got {size!r}")
    h, w = size
    if h < 32 or w < 32:
        raise DatasetError(f"{key}: expected both sides >= 32 px, got {h}x{w}")
    return int(h), int(w)


def normalize_params(train=DEFAULTS["train"], val=DEFAULTS["val"], size=DEFAULTS["size"], seed=DEFAULTS["seed"],
                     prefix: str = "data.generate") -> dict:
    """Validated generation parameters as a JSON-able dict (errors name `prefix.key`)."""
    for key, value, lo in (("train", train, 1), ("val", val, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise DatasetError(f"{prefix}.{key}: expected an integer >= {lo}, got {value!r}")
    if train > VAL_SEQ_OFFSET or val > VAL_SEQ_OFFSET:
        raise DatasetError(f"{prefix}: at most {VAL_SEQ_OFFSET} images per split")
    h, w = _parse_size(size, f"{prefix}.size")
    return {"train": train, "val": val, "size": [h, w], "seed": seed}


def generate(out: str, train: int = 200, val: int = 50, size=(128, 256), seed: int = 0) -> dict:
    """Write a synthetic tree under `out` (overwriting files of the same names); returns stats."""
    params = normalize_params(train, val, size, seed)
    start = time.perf_counter()
    counts = np.zeros(256, np.int64)
    for split in ("train", "val"):
        img_dir = os.path.join(out, "leftImg8bit", split, CITY)
        lab_dir = os.path.join(out, "gtFine", split, CITY)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(lab_dir, exist_ok=True)
        for i in range(params[split]):
            image, label = render_scene(params["seed"], split, i, tuple(params["size"]))
            name = sample_name(split, i)
            cv2.imwrite(os.path.join(img_dir, name + IMAGE_SUFFIX), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(os.path.join(lab_dir, name + LABEL_ID_SUFFIX), label)
            counts += np.bincount(label.ravel(), minlength=256)
    with open(os.path.join(out, MARKER), "w", encoding="utf-8") as fh:
        json.dump({"generator": "ctxtune datasets.synthetic", "version": GENERATOR_VERSION, **params}, fh)
    return {**params, "seconds": time.perf_counter() - start, "label_id_pixels": counts}


def read_marker(root: str) -> dict | None:
    path = os.path.join(root, MARKER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable generation record ({exc})") from exc


def check_marker(root: str, params: dict) -> None:
    """Refuse a tree generated with other parameters (it would silently be the wrong data)."""
    marker = read_marker(root)
    if marker is None:
        return
    had = {k: marker.get(k) for k in ("train", "val", "size", "seed")}
    if had != params or marker.get("version") != GENERATOR_VERSION:
        raise DatasetError(f"data.generate: '{root}' holds a synthetic set made with {had} "
                           f"(generator v{marker.get('version')}), not {params}; delete it or point data.root "
                           "elsewhere")


def is_populated(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "leftImg8bit")) and any(
        files for _, _, files in os.walk(os.path.join(root, "leftImg8bit")))


def ensure(root: str, **generate_params) -> bool:
    """Generate the synthetic set at `root` if it is missing or empty; True when it generated.

    Safe when several processes call it at once (e.g. parallel search trials): each writes into
    a private temporary folder next to `root` and renames it into place; the losers discard theirs.
    An existing tree made with different parameters is an error rather than silently reused.
    """
    params = normalize_params(**generate_params)
    if is_populated(root):
        check_marker(root, params)
        return False
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(root)) + ".tmp-", dir=parent)
    try:
        generate(tmp, **params)
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if is_populated(root):      # another process won the race
                check_marker(root, params)
                return False
            raise
        return True
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def missing_root_message(root: str, params: dict | None) -> str:
    p = params or {**DEFAULTS, "size": list(DEFAULTS["size"])}
    cmd = (f"python -m datasets.synthetic --out {root} --train {p['train']} --val {p['val']} "
           f"--size {p['size'][0]}x{p['size'][1]} --seed {p['seed']}")
    return (f"data.root: synthetic dataset '{root}' is missing or empty; generate it with: {cmd} "
            "(or call datasets.synthetic.ensure(root, **data.generate) before datasets.build)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output root (Cityscapes layout)")
    ap.add_argument("--train", type=int, default=DEFAULTS["train"], help="number of training images")
    ap.add_argument("--val", type=int, default=DEFAULTS["val"], help="number of validation images")
    ap.add_argument("--size", default="128x256", help="HxW of every image, e.g. 128x256")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    args = ap.parse_args(argv)
    try:
        stats = generate(args.out, args.train, args.val, args.size, args.seed)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h, w = stats["size"]
    print(f"wrote {stats['train']} train + {stats['val']} val synthetic {h}x{w} scenes to {args.out} "
          f"in {stats['seconds']:.1f} s (seed {stats['seed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
