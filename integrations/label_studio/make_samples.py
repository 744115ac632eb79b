"""Regenerate the demo's synthetic sample images (sqsam_label_studio/samples/*.jpg).

They are made here from scratch (no third-party content): a shaded ball, a mug-like block and a
flower on textured backgrounds, about 15-30 KB each. Run: python integrations/label_studio/make_samples.py
"""

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "sqsam_label_studio" / "samples"
W, H = 400, 300


def background(rng: np.random.Generator, top, bottom) -> np.ndarray:
    t = np.linspace(0, 1, H)[:, None, None]
    img = (1 - t) * np.array(top, float) + t * np.array(bottom, float)
    img = np.repeat(img, W, axis=1)
    noise = cv2.GaussianBlur(rng.normal(0, 18, (H, W)).astype(np.float32), (0, 0), 3)
    img += noise[:, :, None]
    return img


def shade_disk(img, cx, cy, r, color, light=(-0.5, -0.6)):
    yy, xx = np.mgrid[0:H, 0:W]
    dx, dy = (xx - cx) / r, (yy - cy) / r
    inside = dx * dx + dy * dy <= 1
    dz = np.sqrt(np.clip(1 - dx * dx - dy * dy, 0, 1))
    lx, ly = light
    lz = np.sqrt(max(0.0, 1 - lx * lx - ly * ly))
    lum = np.clip(dx * lx + dy * ly + dz * lz, 0, 1)
    spec = np.clip(lum, 0, 1) ** 30 * 160
    for c in range(3):
        img[..., c] = np.where(inside, color[c] * (0.25 + 0.75 * lum) + spec, img[..., c])
    return inside


def shadow(img, cx, cy, rx, ry, strength=0.45):
    mask = np.zeros((H, W), np.float32)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 8)
    img *= (1 - strength * mask)[:, :, None]


def ball(rng):
    img = background(rng, (150, 190, 120), (70, 120, 60))  # grass-like
    shadow(img, 215, 235, 85, 22)
    shade_disk(img, 200, 150, 80, (220, 60, 40))
    return img


def block(rng):
    img = background(rng, (205, 195, 180), (150, 120, 90))  # table-like
    shadow(img, 210, 245, 110, 20)
    body = np.zeros((H, W), np.uint8)
    cv2.rectangle(body, (120, 80), (280, 240), 255, -1)
    body = cv2.GaussianBlur(body, (0, 0), 1.2) > 127
    x = np.linspace(0, 1, W)[None, :]
    shade = 0.55 + 0.45 * np.sin(np.clip((x - 120 / W) / (160 / W), 0, 1) * np.pi)
    for c, v in enumerate((40, 90, 200)):
        img[..., c] = np.where(body, v * shade, img[..., c])
    cv2.ellipse(img, (200, 82), (80, 12), 0, 0, 360, (30, 60, 150), -1)
    handle = np.zeros((H, W), np.uint8)
    cv2.ellipse(handle, (285, 160), (40, 48), 0, -90, 90, 255, 14)
    img[handle > 0] = (35, 75, 175)
    return img


def flower(rng):
    img = background(rng, (60, 80, 120), (25, 35, 60))  # dusk
    petals = np.zeros((H, W), np.uint8)
    for k in range(8):
        a = k * np.pi / 4
        cx, cy = 200 + 55 * np.cos(a), 150 + 55 * np.sin(a)
        cv2.ellipse(petals, (int(cx), int(cy)), (42, 20), np.degrees(a), 0, 360, 255, -1)
    petal_shade = cv2.GaussianBlur(petals.astype(np.float32) / 255, (0, 0), 6)
    for c, v in enumerate((245, 215, 80)):
        img[..., c] = np.where(petals > 0, v * (0.6 + 0.4 * petal_shade), img[..., c])
    shade_disk(img, 200, 150, 32, (150, 80, 30))
    return img


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for name, make in (("ball", ball), ("mug", block), ("flower", flower)):
        rgb = np.clip(make(rng), 0, 255).astype(np.uint8)
        path = OUT / f"{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
