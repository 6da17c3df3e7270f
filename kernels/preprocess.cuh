// Fused CLIP preprocessing: per-pixel bodies shared by the CUDA kernels (preprocess.cu) and a host build
// that tests their index arithmetic on machines without a GPU (tests/test_kernels_nvcc.py).
//
// Resize = PIL's antialiased bicubic (Pillow libImaging/Resample.c) with PIL's integer arithmetic:
// 22-bit fixed-point taps, horizontal pass first, result rounded half up and clipped to uint8, then the
// vertical pass, rounded to uint8 again. The taps come from stp_edge.preprocess.CropResizePlan, so the
// kernel, the CPU twin and PIL share one definition. Only the crop's SxS outputs are computed.
//
// Layouts:
//   input   frame b at src + b * frame_stride; row y at + y * pitch (bytes). BGR8: 3 bytes per pixel.
//           NV12: Y plane at the frame start, interleaved UV plane at + uv_offset, same pitch.
//   taps    col_coef[k * size + j] (k-major: neighbouring threads read neighbouring words);
//           row_coef[i * ksize + k]; starts are absolute input indices (rows relative to row0 for the
//           vertical pass, which reads the intermediate).
//   mid     uint8 [B][3][mid_rows][size], RGB planes of the horizontally resized rows [row0, row0+mid_rows).
//   out     [B][3][size][size] float32 or float16, normalised RGB.
#pragma once

#include <cuda_fp16.h>

#define STP_HD __host__ __device__ __forceinline__

// The kernel keeps IEEE single-precision results op by op (no FMA contraction), so its float math is
// bit-identical to the NumPy twin's (which rounds every multiply and add).
#ifdef __CUDA_ARCH__
#define STP_MUL(a, b) __fmul_rn((a), (b))
#define STP_ADD(a, b) __fadd_rn((a), (b))
#define STP_SUB(a, b) __fsub_rn((a), (b))
#define STP_LDG(p) __ldg(p)
#else
#define STP_MUL(a, b) ((a) * (b))
#define STP_ADD(a, b) ((a) + (b))
#define STP_SUB(a, b) ((a) - (b))
#define STP_LDG(p) (*(p))
#endif

namespace stp {

constexpr int kPrecisionBits = 22;  // PIL: 32 - 8 - 2

// PIL's clip8: the fixed-point sum started at 1 << (bits - 1) (round half up), shifted, clipped.
STP_HD int clip8(int acc) {
    int v = acc >> kPrecisionBits;
    return v < 0 ? 0 : (v > 255 ? 255 : v);
}

// Round half up and clip to 0..255, the uint8 a decoder's YUV->RGB conversion outputs.
STP_HD int round_u8(float x) {
    float r = floorf(STP_ADD(x, 0.5f));
    return r < 0.f ? 0 : (r > 255.f ? 255 : static_cast<int>(r));
}

// YCbCr -> RGB constants (stp_edge.preprocess.yuv_coefficients).
struct Yuv {
    float y_off, y_scale, c_scale, rv, gu, gv, bu;
};

// One RGB pixel as ints 0..255.
struct Rgb {
    int r, g, b;
};

STP_HD Rgb load_bgr8(const unsigned char* frame, long long pitch, int y, int x) {
    const unsigned char* p = frame + y * pitch + 3LL * x;
    return Rgb{STP_LDG(p + 2), STP_LDG(p + 1), STP_LDG(p)};
}

// FFmpeg's NV12 chroma (swscale's default, the CPU decode path's conversion; stp_edge.preprocess.nv12_chroma_rows):
// replicated horizontally, interpolated vertically: luma row 2k+1 takes chroma row k, row 2k the mean of rows
// k-1 and k, row 0 row 0, row height-2 1/4 of row k-1 and 3/4 of row k. Blended value = a + w * (b - a), exact.
STP_HD float nv12_chroma(const unsigned char* upper, const unsigned char* lower, float w) {
    float a = static_cast<float>(STP_LDG(upper));
    return STP_ADD(a, STP_MUL(w, STP_SUB(static_cast<float>(STP_LDG(lower)), a)));
}

STP_HD Rgb load_nv12(const unsigned char* frame, long long pitch, long long uv_offset, int height, const Yuv& c,
                     int y, int x) {
    int lower = y >> 1;
    bool exact = (y & 1) || y == 0;
    int upper = exact ? lower : lower - 1;
    float w = exact ? 1.f : (y == height - 2 ? 0.75f : 0.5f);
    const unsigned char* uv0 = frame + uv_offset + upper * pitch + 2LL * (x >> 1);
    const unsigned char* uv1 = frame + uv_offset + lower * pitch + 2LL * (x >> 1);
    float yy = STP_MUL(STP_SUB(static_cast<float>(STP_LDG(frame + y * pitch + x)), c.y_off), c.y_scale);
    float u = STP_MUL(STP_SUB(nv12_chroma(uv0, uv1, w), 128.f), c.c_scale);
    float v = STP_MUL(STP_SUB(nv12_chroma(uv0 + 1, uv1 + 1, w), 128.f), c.c_scale);
    float r = STP_ADD(yy, STP_MUL(c.rv, v));
    float g = STP_SUB(STP_SUB(yy, STP_MUL(c.gu, u)), STP_MUL(c.gv, v));
    float b = STP_ADD(yy, STP_MUL(c.bu, u));
    return Rgb{round_u8(r), round_u8(g), round_u8(b)};
}

// Horizontal pass for intermediate row `m` (input row row0 + m) and crop column j of frame b.
// Load is a functor (int y, int x) -> Rgb so BGR8 and NV12 share the accumulation loop.
template <typename Load>
STP_HD void resize_h_pixel(const Load& load, const int* col_start, const int* col_coef, int ksize, int row0,
                           int mid_rows, int size, unsigned char* mid_frame, int m, int j) {
    int x0 = STP_LDG(col_start + j);
    int ar = 1 << (kPrecisionBits - 1), ag = ar, ab = ar;
    for (int k = 0; k < ksize; ++k) {
        int w = STP_LDG(col_coef + k * size + j);
        if (w == 0) continue;  // zero padding past this output's window (may lie outside the image)
        Rgb p = load(row0 + m, x0 + k);
        ar += p.r * w;
        ag += p.g * w;
        ab += p.b * w;
    }
    long long plane = static_cast<long long>(mid_rows) * size;
    long long o = static_cast<long long>(m) * size + j;
    mid_frame[o] = static_cast<unsigned char>(clip8(ar));
    mid_frame[plane + o] = static_cast<unsigned char>(clip8(ag));
    mid_frame[2 * plane + o] = static_cast<unsigned char>(clip8(ab));
}

STP_HD void store(float* p, float v) { *p = v; }
STP_HD void store(__half* p, float v) { *p = __float2half_rn(v); }

// Vertical pass + normalisation for output (i, j) of frame b; writes the three channels.
template <typename T>
STP_HD void resize_v_pixel(const unsigned char* mid_frame, int mid_rows, int size, const int* row_start,
                           const int* row_coef, int ksize, const float* scale, const float* bias,
                           T* out_frame, int i, int j) {
    long long plane_in = static_cast<long long>(mid_rows) * size;
    long long plane_out = static_cast<long long>(size) * size;
    int r0 = STP_LDG(row_start + i);
    for (int c = 0; c < 3; ++c) {
        const unsigned char* src = mid_frame + c * plane_in + j;
        int acc = 1 << (kPrecisionBits - 1);
        for (int k = 0; k < ksize; ++k) {
            int w = STP_LDG(row_coef + i * ksize + k);
            if (w == 0) continue;
            acc += static_cast<int>(src[static_cast<long long>(r0 + k) * size]) * w;
        }
        float v = static_cast<float>(clip8(acc));
        store(out_frame + c * plane_out + static_cast<long long>(i) * size + j,
              STP_ADD(STP_MUL(v, scale[c]), bias[c]));
    }
}

// Thread coordinates of a launch; the __global__ wrappers fill it from blockIdx/threadIdx, the host test
// build from a loop over the same grid.
struct Idx {
    int bx, by, bz, tx, ty, bdx, bdy;
};

struct Bgr8Loader {
    const unsigned char* frame;
    long long pitch;
    STP_HD Rgb operator()(int y, int x) const { return load_bgr8(frame, pitch, y, x); }
};

struct Nv12Loader {
    const unsigned char* frame;
    long long pitch;
    long long uv_offset;
    int height;
    Yuv coef;
    STP_HD Rgb operator()(int y, int x) const { return load_nv12(frame, pitch, uv_offset, height, coef, y, x); }
};

// Kernel bodies. Grids: horizontal (ceil(size/bdx), ceil(mid_rows/bdy), batch),
// vertical (ceil(size/bdx), ceil(size/bdy), batch).
STP_HD void resize_h_bgr8(const Idx& t, const unsigned char* src, long long frame_stride, long long pitch,
                          const int* col_start, const int* col_coef, int ksize, int row0, int mid_rows, int size,
                          unsigned char* mid) {
    int j = t.bx * t.bdx + t.tx;
    int m = t.by * t.bdy + t.ty;
    if (m >= mid_rows || j >= size) return;
    long long b = t.bz;
    Bgr8Loader load{src + b * frame_stride, pitch};
    resize_h_pixel(load, col_start, col_coef, ksize, row0, mid_rows, size,
                   mid + b * 3 * mid_rows * static_cast<long long>(size), m, j);
}

STP_HD void resize_h_nv12(const Idx& t, const unsigned char* src, long long frame_stride, long long pitch,
                          long long uv_offset, int height, const Yuv& coef, const int* col_start,
                          const int* col_coef, int ksize, int row0, int mid_rows, int size, unsigned char* mid) {
    int j = t.bx * t.bdx + t.tx;
    int m = t.by * t.bdy + t.ty;
    if (m >= mid_rows || j >= size) return;
    long long b = t.bz;
    Nv12Loader load{src + b * frame_stride, pitch, uv_offset, height, coef};
    resize_h_pixel(load, col_start, col_coef, ksize, row0, mid_rows, size,
                   mid + b * 3 * mid_rows * static_cast<long long>(size), m, j);
}

template <typename T>
STP_HD void resize_v(const Idx& t, const unsigned char* mid, int mid_rows, int size, const int* row_start,
                     const int* row_coef, int ksize, const float* scale, const float* bias, T* out) {
    int j = t.bx * t.bdx + t.tx;
    int i = t.by * t.bdy + t.ty;
    if (i >= size || j >= size) return;
    long long b = t.bz;
    resize_v_pixel(mid + b * 3 * mid_rows * static_cast<long long>(size), mid_rows, size, row_start, row_coef,
                   ksize, scale, bias, out + b * 3 * size * static_cast<long long>(size), i, j);
}

}  // namespace stp
