/* fewlabels' fused CPU kernels for the augmentation presets (see native.py).
 *
 * One call augments images [start, end) of a uint8 NCHW batch: pad-and-crop + flip, the RandAugment layers,
 * Cutout, and either a uint8 copy or the normalised float32 output. Each image is processed from start to end
 * while it sits in the L2 cache (a 224 px RGB image is 150 kB), instead of streaming the whole batch through
 * memory once per op as the batched PyTorch path does. The random choices are drawn in Python, by the same code
 * as the PyTorch path, and passed in; every op follows fewlabels.augment.functional (the PyTorch reference) step
 * by step in float32, so both paths agree except for float-rounding ties.
 *
 * Plain C99, no dependencies: built on first use by native.py with the system C compiler. Must be compiled with
 * -ffp-contract=off so that a*b + c is rounded twice, like the PyTorch kernels it mirrors.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    OP_IDENTITY, OP_AUTOCONTRAST, OP_EQUALIZE, OP_ROTATE, OP_SOLARIZE, OP_COLOR, OP_POSTERIZE, OP_CONTRAST,
    OP_BRIGHTNESS, OP_SHARPNESS, OP_SHEARX, OP_SHEARY, OP_TRANSLATEX, OP_TRANSLATEY, OP_COUNT
};

typedef struct {
    int64_t c, h, w;
    const uint8_t *fill; /* (C,) fill of uncovered pixels for geometric ops */
} Shape;

/* float32 → uint8 as PyTorch's y.to(int16).clamp(0, 255).to(uint8): truncate toward zero, then clamp (|y| is
   far below 2^15 for every op here, where int16 and int truncation agree) */
static inline uint8_t trunc_clamp(float y) {
    int v = (int)y;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* round half to even (torch.round) for |y| < 2^22, without a libm call: adding and subtracting 1.5·2^23 leaves
   the float rounded to an integer in the default rounding mode (needs -ffp-contract=off and no -ffast-math) */
static inline float round_even(float y) {
    const float magic = 12582912.0f; /* IEEE semantics: without -fassociative-math this is not folded to y */
    return (y + magic) - magic;
}

static inline int64_t reflect_index(int64_t i, int64_t n) {
    if (i < 0) i = -i;
    if (i > n - 1) i = 2 * (n - 1) - i;
    return i;
}

/* ------------------------------------------------------------------------------------------ pad-crop and flip */

static void crop_flip(const uint8_t *src, uint8_t *dst, const Shape *s, int64_t pad, int reflect, int64_t dy,
                      int64_t dx, int flip, int64_t *cols) {
    const int64_t c = s->c, h = s->h, w = s->w, shift = dx - pad;
    /* output columns [j0, j1) read input columns j + shift without reflection: a forward (or, flipped, a
       backward) run; the few columns outside it go through the cols table */
    int64_t j0 = shift < 0 ? -shift : 0, j1 = shift > 0 ? w - shift : w;
    if (j0 > w) j0 = w;
    if (j1 < j0) j1 = j0;
    for (int64_t j = 0; j < w; j++) {
        int64_t q = j + shift;
        if (reflect) {
            q = reflect_index(q, w);
        } else if (q < 0 || q >= w) {
            q = -1;
        }
        if (q >= 0 && flip) q = w - 1 - q;
        cols[j] = q;
    }
    for (int64_t ch = 0; ch < c; ch++) {
        for (int64_t i = 0; i < h; i++) {
            uint8_t *d = dst + (ch * h + i) * w;
            int64_t r = i + dy - pad;
            if (reflect) {
                r = reflect_index(r, h);
            } else if (r < 0 || r >= h) {
                memset(d, 0, (size_t)w);
                continue;
            }
            const uint8_t *srow = src + (ch * h + r) * w;
            for (int64_t j = 0; j < j0; j++) d[j] = cols[j] >= 0 ? srow[cols[j]] : 0;
            if (j1 > j0 && !flip) { /* only then are the run's pointers inside the row */
                memcpy(d + j0, srow + j0 + shift, (size_t)(j1 - j0));
            } else if (j1 > j0) {
                for (int64_t j = j0; j < j1; j++) d[j] = srow[w - 1 - shift - j];
            }
            for (int64_t j = j1; j < w; j++) d[j] = cols[j] >= 0 ? srow[cols[j]] : 0;
        }
    }
}

/* ------------------------------------------------------------------------------------------------- colour ops */

static void apply_luts(uint8_t *x, const Shape *s, uint8_t lut[][256]) {
    const int64_t hw = s->h * s->w;
    for (int64_t ch = 0; ch < s->c; ch++) {
        const uint8_t *l = lut[ch];
        uint8_t *p = x + ch * hw;
        for (int64_t k = 0; k < hw; k++) p[k] = l[p[k]];
    }
}

static void autocontrast(uint8_t *x, const Shape *s) {
    const int64_t hw = s->h * s->w;
    uint8_t lut[3][256];
    for (int64_t ch = 0; ch < s->c; ch++) {
        const uint8_t *p = x + ch * hw;
        uint8_t lo = 255, hi = 0;
        for (int64_t k = 0; k < hw; k++) {
            lo = p[k] < lo ? p[k] : lo;
            hi = p[k] > hi ? p[k] : hi;
        }
        float flo = (float)lo, inv = (float)(hi - lo) * (float)(1.0 / 255.0);
        if (hi == lo) {
            flo = 0.0f;
            inv = 1.0f;
        }
        for (int v = 0; v < 256; v++) lut[ch][v] = trunc_clamp(((float)v - flo) / inv);
    }
    apply_luts(x, s, lut);
}

static void equalize(uint8_t *x, const Shape *s) {
    const int64_t hw = s->h * s->w;
    uint8_t lut[3][256];
    for (int64_t ch = 0; ch < s->c; ch++) {
        const uint8_t *p = x + ch * hw;
        int64_t hist[256] = {0};
        for (int64_t k = 0; k < hw; k++) hist[p[k]]++;
        int top_value = 255;
        while (top_value > 0 && hist[top_value] == 0) top_value--;
        int64_t step = (hw - hist[top_value]) / 255; /* PIL: pixels not at the maximum value, // 255 */
        if (step == 0) {
            for (int v = 0; v < 256; v++) lut[ch][v] = (uint8_t)v;
            continue;
        }
        int64_t cum = 0;
        lut[ch][0] = 0;
        for (int v = 1; v < 256; v++) {
            cum += hist[v - 1];
            int64_t y = (cum + step / 2) / step;
            lut[ch][v] = (uint8_t)(y > 255 ? 255 : y);
        }
    }
    apply_luts(x, s, lut);
}

static void lut_all(uint8_t *x, const Shape *s, const uint8_t *table) {
    uint8_t lut[3][256];
    for (int64_t ch = 0; ch < s->c; ch++) memcpy(lut[ch], table, 256);
    apply_luts(x, s, lut);
}

static void solarize(uint8_t *x, const Shape *s, double m) {
    double t = ceil(256.0 - 25.6 * m);
    t = t < 0 ? 0 : (t > 256 ? 256 : t);
    if (t > 255) return;
    uint8_t table[256];
    for (int v = 0; v < 256; v++) table[v] = (uint8_t)(v >= t ? 255 - v : v);
    lut_all(x, s, table);
}

static void posterize(uint8_t *x, const Shape *s, double m) {
    double b = nearbyint(8.0 - 0.4 * m);
    int bits = (int)(b < 0 ? 0 : (b > 8 ? 8 : b));
    uint8_t mask = (uint8_t)((255 << (8 - bits)) & 255), table[256];
    if (bits == 8) return;
    for (int v = 0; v < 256; v++) table[v] = (uint8_t)(v & mask);
    lut_all(x, s, table);
}

static void brightness(uint8_t *x, const Shape *s, double factor) {
    float f = (float)factor;
    uint8_t table[256];
    for (int v = 0; v < 256; v++) table[v] = trunc_clamp((float)v * f);
    lut_all(x, s, table);
}

/* ITU-R 601 luma floored, as functional._gray on uint8 */
static inline float gray_at(const uint8_t *x, int64_t hw, int64_t k) {
    float g = (float)x[k] * 0.2989f;
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) /* PyTorch's vectorised add(alpha=) is fused there */
    g = fmaf((float)x[hw + k], 0.587f, g);
    g = fmaf((float)x[2 * hw + k], 0.114f, g);
#else
    g = g + (float)x[hw + k] * 0.587f;
    g = g + (float)x[2 * hw + k] * 0.114f;
#endif
    return (float)(int)g; /* floor: g ≥ 0 */
}

static void contrast(uint8_t *x, const Shape *s, double factor) {
    const int64_t hw = s->h * s->w;
    double sum = 0.0;
    if (s->c == 3) {
        for (int64_t k = 0; k < hw; k++) sum += gray_at(x, hw, k);
    } else {
        for (int64_t k = 0; k < hw; k++) sum += x[k];
    }
    float mean = (float)(sum / (double)hw), f = (float)factor, omf = (float)(1.0 - factor);
    float base = mean * omf;
    uint8_t table[256];
    for (int v = 0; v < 256; v++) table[v] = trunc_clamp((float)v * f + base);
    lut_all(x, s, table);
}

static void color(uint8_t *x, const Shape *s, double factor) {
    if (s->c != 3) return;
    const int64_t hw = s->h * s->w;
    float f = (float)factor, omf = (float)(1.0 - factor);
    for (int64_t k = 0; k < hw; k++) {
        float g = gray_at(x, hw, k);
        for (int ch = 0; ch < 3; ch++) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) /* as PyTorch's vectorised addcmul_ */
            x[ch * hw + k] = trunc_clamp(fmaf(g, omf, (float)x[ch * hw + k] * f));
#else
            x[ch * hw + k] = trunc_clamp((float)x[ch * hw + k] * f + g * omf);
#endif
        }
    }
}

static void sharpness(const uint8_t *src, uint8_t *dst, const Shape *s, double factor) {
    const int64_t h = s->h, w = s->w;
    memcpy(dst, src, (size_t)(s->c * h * w));
    if (h <= 2 || w <= 2) return;
    float omf = (float)(1.0 - factor);
    for (int64_t ch = 0; ch < s->c; ch++) {
        const uint8_t *p = src + ch * h * w;
        uint8_t *q = dst + ch * h * w;
        for (int64_t i = 1; i < h - 1; i++) {
            const uint8_t *a = p + (i - 1) * w, *b = p + i * w, *c = p + (i + 1) * w;
            for (int64_t j = 1; j < w - 1; j++) {
                int sum = a[j - 1] + a[j] + a[j + 1] + b[j - 1] + 5 * b[j] + b[j + 1] + c[j - 1] + c[j] + c[j + 1];
                float centre = (float)b[j];
                float blur = round_even((float)sum / 13.0f);
                q[i * w + j] = trunc_clamp(centre + (blur - centre) * omf);
            }
        }
    }
}

/* ----------------------------------------------------------------------------------------------- geometric ops */

/* out[i][j] = x[i][j + shift[i]] (fill outside) */
static void shift_rows(const uint8_t *src, uint8_t *dst, const Shape *s, const int64_t *shift) {
    const int64_t h = s->h, w = s->w;
    for (int64_t ch = 0; ch < s->c; ch++) {
        for (int64_t i = 0; i < h; i++) {
            const uint8_t *p = src + (ch * h + i) * w;
            uint8_t *q = dst + (ch * h + i) * w;
            int64_t t = shift[i], a = t < 0 ? -t : 0, b = t > 0 ? w - t : w; /* valid output columns [a, b) */
            if (a > w) a = w;
            if (b < 0) b = 0;
            if (b < a) b = a;
            memset(q, s->fill[ch], (size_t)a);
            if (b > a) memcpy(q + a, p + a + t, (size_t)(b - a));
            memset(q + b, s->fill[ch], (size_t)(w - b));
        }
    }
}

/* out[i][j] = x[i + shift[j]][j] (fill outside) */
static void shift_cols(const uint8_t *src, uint8_t *dst, const Shape *s, const int64_t *shift) {
    const int64_t h = s->h, w = s->w;
    for (int64_t ch = 0; ch < s->c; ch++) {
        const uint8_t *p = src + ch * h * w;
        uint8_t *q = dst + ch * h * w;
        const uint8_t f = s->fill[ch];
        for (int64_t i = 0; i < h; i++) {
            for (int64_t j = 0; j < w; j++) {
                int64_t r = i + shift[j];
                q[i * w + j] = (r >= 0 && r < h) ? p[r * w + j] : f;
            }
        }
    }
}

/* out[i] = x[i + t] whole rows (fill outside) */
static void shift_image_rows(const uint8_t *src, uint8_t *dst, const Shape *s, int64_t t) {
    const int64_t h = s->h, w = s->w;
    for (int64_t ch = 0; ch < s->c; ch++) {
        for (int64_t i = 0; i < h; i++) {
            int64_t r = i + t;
            uint8_t *q = dst + (ch * h + i) * w;
            if (r >= 0 && r < h) {
                memcpy(q, src + (ch * h + r) * w, (size_t)w);
            } else {
                memset(q, s->fill[ch], (size_t)w);
            }
        }
    }
}

static void rotate(const uint8_t *src, uint8_t *dst, const Shape *s, double degrees, int32_t *idx) {
    const int64_t h = s->h, w = s->w, hw = h * w;
    double a = degrees * 0.017453292519943295; /* torch.deg2rad in float64 */
    float cs = (float)cos(a), sn = (float)sin(a);
    float m[6] = {cs, -sn, 0.0f, sn, cs, 0.0f};
    float cw = (float)((w - 1) / 2.0), chh = (float)((h - 1) / 2.0);
    float tx = m[2] + cw, ty = m[5] + chh, wmax = (float)(w - 1), hmax = (float)(h - 1);
    /* the source pixel of every output pixel (-1: outside), shared by the channels; same float32 steps as
       functional.affine */
    for (int64_t i = 0; i < h; i++) {
        float ys = (float)i - chh;
        float rx = m[1] * ys + tx, ry = m[4] * ys + ty;
        int32_t *row = idx + i * w;
        for (int64_t j = 0; j < w; j++) {
            float xs = (float)j - cw;
            float sx = round_even(m[0] * xs + rx), sy = round_even(m[3] * xs + ry);
            int inside = (sx >= 0.0f) & (sx <= wmax) & (sy >= 0.0f) & (sy <= hmax);
            int32_t k = (int32_t)sy * (int32_t)w + (int32_t)sx;
            row[j] = inside ? k : -1;
        }
    }
    for (int64_t ch = 0; ch < s->c; ch++) {
        const uint8_t *p = src + ch * hw;
        uint8_t *q = dst + ch * hw;
        const uint8_t f = s->fill[ch];
        for (int64_t k = 0; k < hw; k++) q[k] = idx[k] >= 0 ? p[idx[k]] : f;
    }
}

/* one RandAugment op; returns 1 when the result is in dst, 0 when x was changed in place (src) */
static int apply_op(int64_t op, double m, double sign, uint8_t *src, uint8_t *dst, const Shape *s, int64_t *tmp) {
    const double enhance = 1.0 + 0.09 * m * sign; /* randaugment._enhance */
    switch (op) {
    case OP_AUTOCONTRAST:
        if (m > 0) autocontrast(src, s);
        return 0;
    case OP_EQUALIZE:
        if (m > 0) equalize(src, s);
        return 0;
    case OP_ROTATE:
        rotate(src, dst, s, 3.0 * m * sign, (int32_t *)tmp);
        return 1;
    case OP_SOLARIZE:
        solarize(src, s, m);
        return 0;
    case OP_COLOR:
        color(src, s, enhance);
        return 0;
    case OP_POSTERIZE:
        posterize(src, s, m);
        return 0;
    case OP_CONTRAST:
        contrast(src, s, enhance);
        return 0;
    case OP_BRIGHTNESS:
        brightness(src, s, enhance);
        return 0;
    case OP_SHARPNESS:
        sharpness(src, dst, s, enhance);
        return 1;
    case OP_SHEARX:
    case OP_SHEARY: {
        const double f = 0.03 * m * sign;
        const int64_t n = op == OP_SHEARX ? s->h : s->w;
        for (int64_t k = 0; k < n; k++) tmp[k] = (int64_t)nearbyint(f * ((double)k + 0.5));
        if (op == OP_SHEARX) {
            shift_rows(src, dst, s, tmp);
        } else {
            shift_cols(src, dst, s, tmp);
        }
        return 1;
    }
    case OP_TRANSLATEX: {
        const int64_t t = (int64_t)nearbyint(nearbyint(0.045 * m * (double)s->w) * sign);
        for (int64_t k = 0; k < s->h; k++) tmp[k] = -t;
        shift_rows(src, dst, s, tmp);
        return 1;
    }
    case OP_TRANSLATEY: {
        const int64_t t = (int64_t)nearbyint(nearbyint(0.045 * m * (double)s->h) * sign);
        shift_image_rows(src, dst, s, -t);
        return 1;
    }
    default:
        return 0;
    }
}

static void cutout(uint8_t *x, const Shape *s, int64_t size, int64_t cy, int64_t cx, int use_mean,
                   const uint8_t *fill) {
    const int64_t h = s->h, w = s->w, hw = h * w;
    int64_t top = cy - size / 2, left = cx - size / 2;
    int64_t r0 = top < 0 ? 0 : top, r1 = top + size > h ? h : top + size;
    int64_t c0 = left < 0 ? 0 : left, c1 = left + size > w ? w : left + size;
    for (int64_t ch = 0; ch < s->c; ch++) {
        uint8_t *p = x + ch * hw;
        uint8_t value = fill[ch];
        if (use_mean) {
            int64_t sum = 0;
            for (int64_t k = 0; k < hw; k++) sum += p[k];
            value = (uint8_t)round_even((float)((double)sum / (double)hw));
        }
        if (r1 <= r0 || c1 <= c0) continue;
        for (int64_t i = r0; i < r1; i++) memset(p + i * w + c0, value, (size_t)(c1 - c0));
    }
}

/* ----------------------------------------------------------------------------------------------------- entry */

/* Augment images [start, end) of x (N, C, H, W) uint8, contiguous. Per-image parameters are indexed by the
 * image's position in the batch; RandAugment's are (layers, N), layer-major. Writes out_u8 (N, C, H, W) when
 * given, else out_f at element strides out_strides[4] as x · scale_shift[c] + scale_shift[C + c] (normalised).
 * Returns 0, or -1 when scratch memory could not be allocated. */
int fl_augment(const uint8_t *x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t start, int64_t end,
               int64_t pad, int32_t reflect, const int64_t *offsets, const uint8_t *flips, int64_t layers,
               const int64_t *ops, const double *mags, const double *signs, const uint8_t *fill, int64_t cutout_size,
               const int64_t *centres, int32_t cutout_mean, const uint8_t *cutout_fill, uint8_t *out_u8,
               float *out_f, const int64_t *out_strides, const float *scale_shift) {
    const int64_t chw = c * h * w;
    const Shape s = {c, h, w, fill};
    int64_t ntmp = h * w > h + w ? h * w : h + w;
    uint8_t *buf = (uint8_t *)malloc((size_t)(2 * chw));
    int64_t *tmp = (int64_t *)malloc(sizeof(int64_t) * (size_t)(ntmp > w ? ntmp : w));
    if (!buf || !tmp) {
        free(buf);
        free(tmp);
        return -1;
    }
    for (int64_t i = start; i < end; i++) {
        uint8_t *cur = buf, *other = buf + chw;
        const uint8_t *img = x + i * chw;
        int64_t dy = offsets ? offsets[2 * i] : pad, dx = offsets ? offsets[2 * i + 1] : pad;
        int flip = flips ? flips[i] != 0 : 0;
        crop_flip(img, cur, &s, pad, reflect, dy, dx, flip, tmp);
        for (int64_t l = 0; l < layers; l++) {
            const int64_t k = l * n + i;
            if (ops[k] == OP_IDENTITY) continue;
            if (apply_op(ops[k], mags[k], signs[k], cur, other, &s, tmp)) {
                uint8_t *t = cur;
                cur = other;
                other = t;
            }
        }
        if (cutout_size > 0) cutout(cur, &s, cutout_size, centres[2 * i], centres[2 * i + 1], cutout_mean,
                                    cutout_fill);
        if (out_u8) {
            memcpy(out_u8 + i * chw, cur, (size_t)chw);
            continue;
        }
        float *o = out_f + i * out_strides[0];
        const int64_t sc = out_strides[1], sh = out_strides[2], sw = out_strides[3];
        /* (x · scale) + shift, rounded twice like ops.normalize (no FMA: -ffp-contract=off) */
        if (sw == 1) {
            for (int64_t ch = 0; ch < c; ch++) {
                const float a = scale_shift[ch], b = scale_shift[c + ch];
                for (int64_t r = 0; r < h; r++) {
                    const uint8_t *p = cur + (ch * h + r) * w;
                    float *q = o + ch * sc + r * sh;
                    for (int64_t j = 0; j < w; j++) q[j] = (float)p[j] * a + b;
                }
            }
        } else {
            for (int64_t r = 0; r < h; r++) {
                for (int64_t ch = 0; ch < c; ch++) {
                    const float a = scale_shift[ch], b = scale_shift[c + ch];
                    const uint8_t *p = cur + (ch * h + r) * w;
                    float *q = o + r * sh + ch * sc;
                    for (int64_t j = 0; j < w; j++) q[j * sw] = (float)p[j] * a + b;
                }
            }
        }
    }
    free(buf);
    free(tmp);
    return 0;
}
