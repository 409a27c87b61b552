"""Looking at dense labels or tracks: skeletons drawn over a video, and a one-page viewer.

* ``track_color(track_id)``: a fixed colour per track (golden-ratio hues), RGB.
* ``draw_people(image, people, ...)``: a copy of a BGR frame with each person's skeleton in
  its track's colour, every joint and limb drawn with opacity = its confidence (a limb: the
  lower of its two joints' scores; ``min_alpha`` keeps faint ones visible), the track id
  beside the head; a labeled frame gets a white border and the word "labeled".
* ``write_overlay_video(frames, dataset, path, fps)``: every frame drawn, written with
  OpenCV's ``VideoWriter`` (``mp4v``) to a temporary name, then renamed.
* ``write_html(path, frames, dataset, confidence)``: one offline HTML page: the drawn frames
  (embedded as JPEG data URIs, or written beside the page and referenced relatively), a
  slider, and the per-frame confidence drawn as inline SVG (labeled frames marked, the
  current frame's position shown). No script or style is fetched from anywhere.

Frames are BGR uint8 ``[H, W, 3]`` (OpenCV's order); colours given as RGB are converted.
Coordinates are image pixels, pixel centres at integers, x right, y down.
"""

from __future__ import annotations

import base64
import colorsys
import html
import json
import math
import os
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from posewarper_jax.apps.outputs import staged_file
from posewarper_jax.data.types import SKELETON, Person, Video

__all__ = [
    "draw_people",
    "track_color",
    "write_html",
    "write_overlay_video",
]

_SHIFT = 4  # cv2 fractional bits


def track_color(track_id: int) -> tuple[int, int, int]:
    """RGB colour of a track: hue ``(0.13 + 0.618 t) mod 1``, saturated and bright; grey for
    an untracked person (id < 0)."""
    if track_id < 0:
        return (200, 200, 200)
    h = (0.13 + 0.61803398875 * int(track_id)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return (int(r * 255), int(g * 255), int(b * 255))


def _blend_element(image: np.ndarray, draw, box, alpha: float) -> None:
    """Draws with ``draw(roi)`` on a copy of the ROI ``box`` (x0, y0, x1, y1) and blends it
    into ``image`` with opacity ``alpha``, in place."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0 or alpha <= 0:
        return
    roi = image[y0:y1, x0:x1]
    layer = roi.copy()
    draw(layer, (x0, y0))
    cv2.addWeighted(layer, float(alpha), roi, 1.0 - float(alpha), 0.0, dst=roi)


def _fixed(p, origin) -> tuple[int, int]:
    return (
        int(round((p[0] - origin[0]) * (1 << _SHIFT))),
        int(round((p[1] - origin[1]) * (1 << _SHIFT))),
    )


def draw_people(
    image: np.ndarray,
    people: Sequence[Person],
    *,
    labeled: bool = False,
    threshold: float = 0.05,
    min_alpha: float = 0.25,
    thickness: int = 2,
    radius: int = 3,
    caption: str | None = None,
) -> np.ndarray:
    """A copy of BGR ``image`` with ``people`` drawn (module docstring).

    Args:
      image: uint8 ``[H, W, 3]`` BGR.
      people: persons with ``keypoints`` ``[17, 3]`` and optionally ``keypoint_scores`` (None:
        1 for every labeled joint).
      labeled: mark the frame as labeled (white border, "labeled").
      threshold: joints scoring below it (or unlabeled) are not drawn, nor limbs touching them.
      min_alpha: the opacity of a joint scoring ``threshold``; 1 at score 1.
      caption: text in the top-left corner (e.g. the frame number).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    out = image.copy()
    pad = thickness + radius + 2
    for person in people:
        kp = np.asarray(person.keypoints, np.float64)
        scores = person.keypoint_scores
        s = (kp[:, 2] > 0).astype(np.float64) if scores is None else np.asarray(scores, float)
        s = np.where(kp[:, 2] > 0, s, 0.0)
        ok = (s >= threshold) & np.all(np.isfinite(kp[:, :2]), axis=1)
        r, g, b = track_color(person.track_id)
        color = (b, g, r)

        def alpha(v: float) -> float:
            return float(min_alpha + (1 - min_alpha) * np.clip(v, 0, 1))

        for a, c in SKELETON:
            if not (ok[a] and ok[c]):
                continue
            p, q = kp[a, :2], kp[c, :2]
            box = (min(p[0], q[0]) - pad, min(p[1], q[1]) - pad,
                   max(p[0], q[0]) + pad + 1, max(p[1], q[1]) + pad + 1)  # fmt: skip

            def limb(layer, origin, p=p, q=q, color=color):
                cv2.line(layer, _fixed(p, origin), _fixed(q, origin), color, thickness,
                         cv2.LINE_AA, _SHIFT)  # fmt: skip

            _blend_element(out, limb, box, alpha(min(s[a], s[c])))
        for j in np.flatnonzero(ok):
            p = kp[j, :2]
            box = (p[0] - pad, p[1] - pad, p[0] + pad + 1, p[1] + pad + 1)

            def joint(layer, origin, p=p, color=color):
                cv2.circle(layer, _fixed(p, origin), radius << _SHIFT, color, -1, cv2.LINE_AA,
                           _SHIFT)  # fmt: skip

            _blend_element(out, joint, box, alpha(s[j]))
        if ok.any() and person.track_id >= 0:
            top = kp[ok][np.argmin(kp[ok, 1])]
            org = (int(top[0]) + 4, max(int(top[1]) - 4, 10))
            cv2.putText(out, str(person.track_id), org, cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        color, 1, cv2.LINE_AA)  # fmt: skip
    if labeled:
        h, w = out.shape[:2]
        cv2.rectangle(out, (1, 1), (w - 2, h - 2), (255, 255, 255), 2)
        cv2.putText(out, "labeled", (6, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    if caption:
        cv2.putText(out, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3,
                    cv2.LINE_AA)  # fmt: skip
        cv2.putText(out, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255),
                    1, cv2.LINE_AA)  # fmt: skip
    return out


def drawn_frames(
    frames: Iterable[tuple[int, np.ndarray]], video: Video, labeled: Sequence[bool]
) -> Iterable[tuple[int, np.ndarray]]:
    """``(index, drawn BGR frame)`` for every ``(index, frame)`` of ``frames``."""
    for i, frame in frames:
        if i >= video.nframes:
            raise ValueError(f"frame {i} is beyond the {video.nframes} frames of {video.name!r}")
        yield (
            i,
            draw_people(frame, video.frames[i].people, labeled=bool(labeled[i]), caption=f"{i}"),
        )


def write_overlay_video(
    frames: Iterable[tuple[int, np.ndarray]],
    video: Video,
    labeled: Sequence[bool],
    path: str,
    fps: float = 25.0,
) -> int:
    """Writes every frame of ``frames`` with ``video``'s people drawn to ``path`` (mp4v);
    returns the number of frames written. Nothing is left at ``path`` on failure."""
    count = 0
    with staged_file(path) as tmp:
        writer = None
        try:
            for _, image in drawn_frames(frames, video, labeled):
                if writer is None:
                    h, w = image.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    writer = cv2.VideoWriter(tmp, fourcc, float(fps or 25.0), (w, h))
                    if not writer.isOpened():
                        raise OSError(f"{path}: OpenCV cannot write an mp4v video here")
                writer.write(image)
                count += 1
        finally:
            if writer is not None:
                writer.release()
    return count


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; background: #f4f4f4; }}
#frame {{ max-width: 100%; image-rendering: auto; border: 1px solid #888; }}
#slider {{ width: {width}px; }}
.info {{ margin: 6px 0; }}
svg {{ background: #fff; border: 1px solid #ccc; }}
</style></head>
<body>
<h3>{title}</h3>
<div><img id="frame" alt="frame" src=""></div>
<div class="info"><input id="slider" type="range" min="0" max="{last}" value="0" step="1">
 <span id="label"></span></div>
<svg id="plot" width="{width}" height="{plot_h}" viewBox="0 0 {width} {plot_h}">
{svg}
<line id="cursor" x1="0" y1="0" x2="0" y2="{plot_h}" stroke="#d00" stroke-width="1"/>
</svg>
<div class="info">Per-frame confidence: mean joint score of the frame's people (labeled
frames: 1, marked in green; gaps: no pose). Keys: left / right arrows.</div>
<script>
const frames = {frames};
const info = {info};
const slider = document.getElementById("slider");
const img = document.getElementById("frame");
const label = document.getElementById("label");
const cursor = document.getElementById("cursor");
function show(i) {{
  img.src = frames[i];
  const d = info[i];
  label.textContent = "frame " + i + (d.labeled ? " (labeled)" : "") + ", people " + d.people
    + ", confidence " + (d.confidence === null ? "-" : d.confidence.toFixed(3));
  const x = {x0} + i * {dx};
  cursor.setAttribute("x1", x); cursor.setAttribute("x2", x);
}}
slider.addEventListener("input", () => show(+slider.value));
document.addEventListener("keydown", (e) => {{
  if (e.key === "ArrowRight") slider.value = Math.min({last}, +slider.value + 1);
  else if (e.key === "ArrowLeft") slider.value = Math.max(0, +slider.value - 1);
  else return;
  show(+slider.value);
}});
show(0);
</script>
</body></html>
"""


def _svg(confidence: Sequence[float], labeled: Sequence[bool], width: int, height: int):
    n = len(confidence)
    x0, x1, y0, y1 = 30, width - 10, 10, height - 20
    dx = (x1 - x0) / max(n - 1, 1)

    def y(v):
        return y1 - (y1 - y0) * float(np.clip(v, 0, 1))

    parts = [
        f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#888"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#888"/>',
        f'<text x="2" y="{y0 + 4}" font-size="10">1</text>',
        f'<text x="2" y="{y1}" font-size="10">0</text>',
        f'<text x="{x0}" y="{height - 4}" font-size="10">frame 0</text>',
        f'<text x="{x1 - 50}" y="{height - 4}" font-size="10">frame {n - 1}</text>',
    ]
    for i, is_labeled in enumerate(labeled):
        if is_labeled:
            x = x0 + i * dx
            parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" '
                         'stroke="#2a2" stroke-dasharray="2,2"/>')  # fmt: skip
    run: list[str] = []
    for i, v in enumerate(list(confidence) + [math.nan]):
        if v is None or math.isnan(v):
            if len(run) > 1:
                parts.append(f'<polyline fill="none" stroke="#236" points="{" ".join(run)}"/>')
            elif run:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="#236"/>')
            run = []
        else:
            run.append(f"{x0 + i * dx:.1f},{y(v):.1f}")
    return "\n".join(parts), x0, dx


def write_html(
    path: str,
    frames: Iterable[tuple[int, np.ndarray]],
    video: Video,
    labeled: Sequence[bool],
    confidence: Sequence[float],
    *,
    embed: bool = True,
    quality: int = 85,
    title: str | None = None,
) -> str:
    """Writes the viewer page (module docstring) for ``video``'s people over ``frames``.

    Args:
      path: the HTML file.
      frames: ``(index, BGR frame)`` for every frame.
      video: the people to draw, per frame.
      labeled: per frame, whether it was labeled.
      confidence: per frame (NaN: no pose), drawn as the plot.
      embed: embed the frames as data URIs (one self-contained file); else write them to
        ``<page name>_frames/`` beside the page and reference them relatively.
      quality: JPEG quality of the frames.
    """
    n = video.nframes
    if len(confidence) != n or len(labeled) != n:
        raise ValueError(f"{len(confidence)} confidences / {len(labeled)} flags for {n} frames")
    stem = os.path.splitext(os.path.basename(path))[0]
    refs: list[str] = []
    with staged_file(path) as tmp:
        folder = os.path.join(os.path.dirname(os.path.abspath(path)), f"{stem}_frames")
        width = 640
        for i, image in drawn_frames(frames, video, labeled):
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            if not ok:
                raise OSError(f"{path}: cannot encode frame {i}")
            if embed:
                refs.append("data:image/jpeg;base64," + base64.b64encode(buf).decode("ascii"))
            else:
                os.makedirs(folder, exist_ok=True)
                buf.tofile(os.path.join(folder, f"{i:06d}.jpg"))
                refs.append(f"{stem}_frames/{i:06d}.jpg")
            width = max(width, image.shape[1])
        if len(refs) != n:
            raise ValueError(f"{len(refs)} frames read for the {n} frames of {video.name!r}")
        plot_h = 160
        svg, x0, dx = _svg(confidence, labeled, width, plot_h)
        info = [
            {
                "labeled": bool(labeled[i]),
                "people": len(video.frames[i].people),
                "confidence": None if math.isnan(confidence[i]) else round(confidence[i], 4),
            }
            for i in range(n)
        ]
        page = _PAGE.format(
            title=html.escape(title or f"{video.name}: {n} frames"),
            width=width,
            last=n - 1,
            plot_h=plot_h,
            svg=svg,
            frames=json.dumps(refs),
            info=json.dumps(info),
            x0=x0,
            dx=f"{dx:.6f}",
        )
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
    return path


def write_views(args, source, video: Video, labeled: Sequence[bool], confidence) -> None:
    """The overlay video (``args.overlay``) and the viewer page (``args.html``, embedding the
    frames unless ``args.html_refer``) of a command's result, each where asked; ``source``
    is the ``video_frames.FrameSource`` the command read."""
    from posewarper_jax.data import video_frames

    if args.overlay:
        write_overlay_video(
            video_frames.iter_frames(source), video, labeled, args.overlay, source.fps
        )
    if args.html:
        write_html(
            args.html,
            video_frames.iter_frames(source),
            video,
            labeled,
            confidence,
            embed=not args.html_refer,
        )
