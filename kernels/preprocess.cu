// Fused CLIP preprocessing kernels (CLIP's own preprocessing, as PIL computes it): antialiased bicubic
// short-side resize with PIL's exact integer arithmetic, centre crop, BGR8 or NV12 (BT.601/BT.709,
// limited/full range) -> RGB, /255, mean/std, CHW, float32 or float16. Two launches per batch of
// same-sized frames, block (32, 8):
//
//   stp_resize_h_{bgr8,nv12}   grid (ceil(size/32), ceil(mid_rows/8), batch)
//   stp_resize_v_{f32,f16}     grid (ceil(size/32), ceil(size/8), batch)
//
// The uint8 intermediate stays on the device. Filter taps are computed on the host by
// stp_edge.preprocess.CropResizePlan and uploaded once per input size. The kernel bodies and layouts are
// in preprocess.cuh (shared with a host build that tests them without a GPU); this file only binds them to
// the CUDA thread indices. Built by `python -m stp_edge.cuda.build`, or compiled at run time by pycuda.
#include "preprocess.cuh"

namespace {

__device__ __forceinline__ stp::Idx thread_idx() {
    return stp::Idx{static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z),
                    static_cast<int>(threadIdx.x), static_cast<int>(threadIdx.y), static_cast<int>(blockDim.x),
                    static_cast<int>(blockDim.y)};
}

}  // namespace

extern "C" {

// Horizontal pass over input rows [row0, row0 + mid_rows) of BGR8 frames -> RGB uint8 planes `mid`.
__global__ void stp_resize_h_bgr8(const unsigned char* __restrict__ src, long long frame_stride, long long pitch,
                                  const int* __restrict__ col_start, const int* __restrict__ col_coef,
                                  int ksize, int row0, int mid_rows, int size, unsigned char* __restrict__ mid) {
    stp::resize_h_bgr8(thread_idx(), src, frame_stride, pitch, col_start, col_coef, ksize, row0, mid_rows, size,
                       mid);
}

// Same for NV12 frames (UV plane at + uv_offset from each frame's start, same pitch as Y).
__global__ void stp_resize_h_nv12(const unsigned char* __restrict__ src, long long frame_stride, long long pitch,
                                  long long uv_offset, int height, float y_off, float y_scale, float c_scale,
                                  float rv, float gu, float gv, float bu, const int* __restrict__ col_start,
                                  const int* __restrict__ col_coef, int ksize, int row0, int mid_rows, int size,
                                  unsigned char* __restrict__ mid) {
    stp::resize_h_nv12(thread_idx(), src, frame_stride, pitch, uv_offset, height,
                       stp::Yuv{y_off, y_scale, c_scale, rv, gu, gv, bu}, col_start, col_coef, ksize, row0,
                       mid_rows, size, mid);
}

// Vertical pass + normalisation (out = v * scale_c + bias_c, scale = 1/(255 std), bias = -mean/std).
__global__ void stp_resize_v_f32(const unsigned char* __restrict__ mid, int mid_rows, int size,
                                 const int* __restrict__ row_start, const int* __restrict__ row_coef, int ksize,
                                 float s0, float s1, float s2, float b0, float b1, float b2,
                                 float* __restrict__ out) {
    const float scale[3] = {s0, s1, s2};
    const float bias[3] = {b0, b1, b2};
    stp::resize_v(thread_idx(), mid, mid_rows, size, row_start, row_coef, ksize, scale, bias, out);
}

__global__ void stp_resize_v_f16(const unsigned char* __restrict__ mid, int mid_rows, int size,
                                 const int* __restrict__ row_start, const int* __restrict__ row_coef, int ksize,
                                 float s0, float s1, float s2, float b0, float b1, float b2,
                                 __half* __restrict__ out) {
    const float scale[3] = {s0, s1, s2};
    const float bias[3] = {b0, b1, b2};
    stp::resize_v(thread_idx(), mid, mid_rows, size, row_start, row_coef, ksize, scale, bias, out);
}

}  // extern "C"
