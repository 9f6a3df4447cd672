"""Translation probes: is each stage of a model equivariant to shifts of its input, and is its output invariant?

A convolution applies the same weights at every position, so shifting its input shifts its output the same way:
conv(shift(x)) = shift(conv(x)) (equivariance). A pooling step with stride s keeps this only for shifts that are
multiples of s (a shift of k input pixels is k / s pixels of the pooled map), and a global pool at the end turns
equivariance into invariance: the pooled features, hence the prediction, barely change. A fully connected layer ties
each weight to one pixel position, so it has neither property.

For a shift of k pixels and each stage i with cumulative stride s_i, the probe measures

    error_i = ‖F_i(shift_k(x)) − shift_{k/s_i}(F_i(x))‖ / ‖shift_{k/s_i}(F_i(x))‖     (per image, then the mean)

where F_i is the map after stage i. It is undefined (NaN) when s_i does not divide k, and for 1×1 maps (an MLP's
hidden layers, or a CNN stage pooled down to one pixel), which have no spatial extent to shift. Non-circular shifts
fill the uncovered band with `fill` (the background) and compare the maps only where both are defined, minus a
border of `margin` input pixels (ceil(margin / s_i) map pixels) on every side: near the border the zero padding of the
convolutions sees different content before and after the shift, so no model is equivariant there; what is left of the
error grows with the receptive field, which reaches further past a small margin at deeper stages. Circular shifts
(torch.roll) need no crop, but are only exactly equivariant for convolutions with circular padding: a model with zero
padding sees the wrapped-around border differently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

DIRECTIONS: dict[str, tuple[int, int]] = {"horizontal": (0, 1), "vertical": (1, 0)}  # (rows, columns) per pixel


def shift(x: torch.Tensor, dy: int, dx: int, *, circular: bool = False,
          fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """x (N, C, H, W) moved dy rows down and dx columns right (negative: up / left).

    circular: what leaves one side comes back on the other (torch.roll). Otherwise the uncovered band is `fill`,
    a scalar or one value per channel (C,).
    """
    if circular:
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    h, w = x.shape[-2:]
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    out = fill_t.reshape(1, -1, 1, 1).expand_as(x).clone() if fill_t.ndim else torch.full_like(x, float(fill_t))
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def valid_region(h: int, w: int, dy: int, dx: int, margin: int = 0) -> tuple[slice, slice]:
    """Rows and columns of an (h, w) map where a non-circular shift by (dy, dx) has moved real content (not fill),
    minus `margin` pixels on every side. Empty slices when nothing is left."""
    rows = slice(max(dy, 0) + margin, max(h + min(dy, 0) - margin, 0))
    cols = slice(max(dx, 0) + margin, max(w + min(dx, 0) - margin, 0))
    return rows, cols


def cumulative_stride(in_size: tuple[int, int], map_size: tuple[int, int]) -> int | None:
    """The input pixels per map pixel of a stage: the power of two p with ceil(H / p) == h and ceil(W / p) == w
    (pools with ceil_mode round up: 28 → 14 → 7 → 4 is strides 2, 4, 8), else round(H / h) when that is exact,
    else None (a map that is not a strided grid of the input)."""
    (hin, win), (h, w) = in_size, map_size
    for e in range(int(math.log2(max(hin, 1))) + 2):
        p = 2 ** e
        if math.ceil(hin / p) == h and math.ceil(win / p) == w:
            return p
    s = hin // h if h else 0
    return s if s and hin == s * h and win == s * w else None


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a − b‖ / ‖b‖ per image, for (N, ...) tensors; (N,) float32. An all-zero reference gives 0 when a is zero
    too, else inf."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    num, den = (a - b).norm(dim=1), b.norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.where(num > 0, math.inf, 0.0))


def stage_error(m0: torch.Tensor, m1: torch.Tensor, k: int, direction: str, stride: int | None, *,
                circular: bool, margin: int) -> tuple[torch.Tensor | None, str | None]:
    """Per-image equivariance error (N,) of one stage: m0 = F(x), m1 = F(shift_k(x)), both (N, C, h, w); the shift
    k and the margin are in input pixels. Returns (None, reason) where the error is undefined."""
    if m0.ndim != 4 or m0.shape[-2:] == (1, 1):
        return None, "a 1×1 map has no spatial extent"
    if stride is None:
        return None, "the map is not a strided grid of the input"
    if k % stride:
        return None, f"cumulative stride {stride} does not divide {k}"
    uy, ux = DIRECTIONS[direction]
    ks = k // stride
    ref = shift(m0, uy * ks, ux * ks, circular=circular)  # (N, C, h, w) what an equivariant map would be
    if not circular:
        rows, cols = valid_region(*m0.shape[-2:], uy * ks, ux * ks, -(-margin // stride))
        ref, m1 = ref[:, :, rows, cols], m1[:, :, rows, cols]
        if ref.numel() == 0:
            return None, f"nothing is left of the {tuple(m0.shape[-2:])} map after cropping the border"
    return relative_error(m1, ref), None


@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(stage maps, pooled features (N, D), predicted classes (N,)) in float32."""
    maps = [m.float() for m in model.feature_stages(x)]
    feats = model.forward_features(x).float()
    return maps, feats, model.forward_head(feats).argmax(1)


def equivariance_probe(model: nn.Module, x: torch.Tensor, shifts: Sequence[int] = (1, 2, 4, 8), *,
                       labels: torch.Tensor | None = None, circular: bool = False, margin: int = 4,
                       fill: float | torch.Tensor = 0.0, directions: Sequence[str] = ("horizontal", "vertical"),
                       batch_size: int = 256) -> dict[str, Any]:
    """Equivariance error per stage, relative change of the pooled features and share of changed predictions, for
    every shift k in `shifts` and direction, on normalised images x (N, C, H, W).

    The model needs feature_stages / forward_features / forward_head (every fewlabels model has them); it runs in
    eval mode, in float32 so that rounding does not pass for an equivariance error. margin: input pixels left out
    of the comparison on every side (non-circular shifts only). fill: the value of the
    background in normalised units (for uint8 images on black, -mean / std per channel). labels: also report the
    accuracy on the shifted images. Returns {"stages": [...], "rows": [...], "notes": [...]}: one row per
    (shift, direction) with `stage_errors` (NaN where undefined), `pooled_change`, `prediction_change` (a share) and
    `accuracy`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    in_size = tuple(x.shape[-2:])
    combos = [(k, d) for k in shifts for d in directions]
    errs: dict[tuple[int, str], list[list[torch.Tensor]]] = {}
    pooled: dict[tuple[int, str], list[torch.Tensor]] = {c: [] for c in combos}
    changed: dict[tuple[int, str], list[torch.Tensor]] = {c: [] for c in combos}
    correct: dict[tuple[int, str] | None, list[torch.Tensor]] = {c: [] for c in [None, *combos]}
    reasons: dict[tuple[int, int], str] = {}  # (shift, stage) → why its error is undefined
    stages: list[dict[str, Any]] = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device, torch.float32)  # (B, C, H, W)
        maps0, feats0, pred0 = _forward(model, xb)
        if not stages:
            stages = [{"stage": i + 1, "shape": list(m.shape[1:]),
                       "stride": cumulative_stride(in_size, tuple(m.shape[-2:])) if m.ndim == 4 else None}
                      for i, m in enumerate(maps0)]
        if labels is not None:
            correct[None].append((pred0.cpu() == labels[start:start + batch_size]).float())
        for k, d in combos:
            uy, ux = DIRECTIONS[d]
            maps1, feats1, pred1 = _forward(model, shift(xb, uy * k, ux * k, circular=circular, fill=fill))
            row = errs.setdefault((k, d), [[] for _ in maps0])
            for i, (m0, m1) in enumerate(zip(maps0, maps1)):
                e, why = stage_error(m0, m1, k, d, stages[i]["stride"], circular=circular, margin=margin)
                if e is None:
                    reasons[(k, i)] = why
                else:
                    row[i].append(e.cpu())
            pooled[(k, d)].append(relative_error(feats1, feats0).cpu())
            changed[(k, d)].append((pred1 != pred0).float().cpu())
            if labels is not None:
                correct[(k, d)].append((pred1.cpu() == labels[start:start + batch_size]).float())
    model.train(was_training)

    def mean(parts: list[torch.Tensor]) -> float:
        return float(torch.cat(parts).mean()) if parts else math.nan

    rows = []
    for k, d in combos:
        rows.append({"shift": k, "direction": d,
                     "stage_errors": [math.nan if (k, i) in reasons else mean(p) for i, p in enumerate(errs[(k, d)])],
                     "pooled_change": mean(pooled[(k, d)]), "prediction_change": mean(changed[(k, d)]),
                     "accuracy": mean(correct[(k, d)]) if labels is not None else None})
    notes = [f"shift {k}: stage {i + 1} not measured ({why})" for (k, i), why in sorted(reasons.items())]
    return {"images": int(x.shape[0]), "input_size": list(in_size), "circular": circular,
            "margin": None if circular else margin, "stages": stages, "rows": rows,
            "accuracy": mean(correct[None]) if labels is not None else None, "notes": notes}


def mean_over_directions(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per shift: the stage errors, pooled change and prediction change averaged over the directions."""
    by_shift: dict[int, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        by_shift.setdefault(r["shift"], []).append(r)
    out = {}
    for k, rs in by_shift.items():
        n_stages = len(rs[0]["stage_errors"])
        out[k] = {"stage_errors": [sum(r["stage_errors"][i] for r in rs) / len(rs) for i in range(n_stages)],
                  "pooled_change": sum(r["pooled_change"] for r in rs) / len(rs),
                  "prediction_change": sum(r["prediction_change"] for r in rs) / len(rs)}
    return out


def format_value(v: float | None, pct: bool = False) -> str:
    """A table cell: n/a for undefined, a percentage, or 4 decimals (scientific below 0.001, where equivariance
    errors of float rounding live; "0" when exactly zero)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if pct:
        return f"{100 * v:.1f}%"
    if v == 0:
        return "0"  # exactly: bit-identical maps
    return f"{v:.1e}" if abs(v) < 1e-3 else f"{v:.4f}"


def _is_spatial(stage: dict[str, Any]) -> bool:
    return len(stage["shape"]) == 3 and tuple(stage["shape"][1:]) != (1, 1)


def equivariance_markdown(result: dict[str, Any]) -> str:
    """The probe's result as a Markdown table (one row per shift and direction), with the notes under it. Stages
    without a spatial map (1×1, e.g. an MLP's hidden layers) get no column."""
    spatial = [i for i, s in enumerate(result["stages"]) if _is_spatial(s)]
    stage_cols = [f"stage {s['stage']} (stride {s['stride'] or '-'}, {'×'.join(map(str, s['shape'][1:]))}) error"
                  for s in (result["stages"][i] for i in spatial)]
    has_acc = result.get("accuracy") is not None
    head = ["shift (px)", "direction", *stage_cols, "pooled features change", "prediction changed",
            *(["accuracy"] if has_acc else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if has_acc:
        zeros = "".join(" 0 |" for _ in stage_cols)
        lines.append(f"| 0 | - |{zeros} 0 | 0 | {format_value(result['accuracy'], True)} |")
    for r in result["rows"]:
        cells = [str(r["shift"]), r["direction"], *[format_value(r["stage_errors"][i]) for i in spatial],
                 format_value(r["pooled_change"]), format_value(r["prediction_change"], True),
                 *([format_value(r["accuracy"], True)] if has_acc else [])]
        lines.append("| " + " | ".join(cells) + " |")
    mode = ("circular shifts (torch.roll)" if result["circular"] else
            f"shifts with background fill; maps compared without the outer {result['margin']} input pixels")
    text = "\n".join(lines) + f"\n\n{result['images']} images of {'×'.join(map(str, result['input_size']))}, {mode}. " \
        "Errors are ‖F(shift x) − shift F(x)‖ / ‖F(x)‖ (mean over images); n/a: undefined, see the notes.\n"
    if not spatial:
        text += "\nThe model has no spatial feature maps (its stages are 1×1): only the pooled features and the " \
            "predictions are compared.\n"
    elif result["notes"]:
        text += "\n" + "\n".join(f"- {n}" for n in _compact_notes(result["notes"])) + "\n"
    return text


def _compact_notes(notes: list[str]) -> list[str]:
    # "shift 1: stage 1 not measured (stride 2 ...)" for each stage → one line per shift, to keep the table readable
    by_shift: dict[str, list[str]] = {}
    for n in notes:
        k, rest = n.split(": ", 1)
        by_shift.setdefault(k, []).append(rest)
    return [f"{k}: " + "; ".join(v) for k, v in by_shift.items()]


def plot_equivariance(result: dict[str, Any], path: Any, title: str = "") -> None:
    """Errors per stage and the pooled/prediction changes against the shift (mean over directions), one PNG."""
    from ..report import plot_lines

    avg = mean_over_directions(result)
    ks = sorted(avg)
    series: dict[str, tuple[list, list]] = {}
    for i, s in enumerate(result["stages"]):
        ys = [avg[k]["stage_errors"][i] for k in ks]
        if not all(math.isnan(y) for y in ys):
            series[f"stage {i + 1} equivariance error (stride {s['stride']})"] = (ks, ys)
    series["pooled features change"] = (ks, [avg[k]["pooled_change"] for k in ks])
    series["share of predictions changed"] = (ks, [avg[k]["prediction_change"] for k in ks])
    plot_lines(series, path, xlabel="shift (pixels)", ylabel="relative error / share", title=title)
