// The matrix products of the C++ time loops, written once for loops.cpp and cell_loops.cpp: `matmul`
// on raw pointers, and a weight packed in column panels (`panels_of`) with the product that reads it
// (`multiply`). compiled.py hashes this header into each including module's build key.
#pragma once

#include <ATen/native/CPUBlas.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

// C (M x N) (+)= A (M x K) B (K x N), all row-major with leading dimensions. Floats go to oneDNN's
// batch-reduce GEMM micro-kernel through ATen's cpublas::brgemm (JIT-compiled once per shape and
// cached per thread; it falls back to ATen's BLAS where oneDNN cannot serve): no dispatch, no tensor
// views per step, and at B = 1 half the time of a dispatched addmm_ (measured: 2.4 against 5.7 us
// at H = 128). Doubles (the tests' precision) keep ATen's matrix product on views of the pointers.
template <typename T>
void matmul(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
            bool add) {
  if (M == 0 || N == 0) return;
#ifdef CPUBLAS_BRGEMM_F32F32F32  // the torch headers declare the float brgemm (else: the branch below)
  if constexpr (std::is_same_v<T, float>) {
    at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, false);
    return;
  }
#endif
  {
    const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    const at::Tensor a = at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, options);
    const at::Tensor b = at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, options);
    at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, options);
    if (add) c.addmm_(a, b); else at::mm_out(c, a, b);
  }
}

// dst = src^T for src (rows x cols, row-major, leading dimension lds) into dst (cols x rows, leading
// dimension ldd), in tiles of 16 x 16 that stay in L1 both ways. ATen's copy of a transposed view (what
// `w.t().contiguous()` and a cat of them run) walks one side a column at a time: [U^T; V^T; b] for an
// LSTM of 128 units, 110 us a call, was most of a call of T = 1 at B = 32 (the loop's own step 40 us).
template <typename T>
void transpose_into(const T* src, int64_t rows, int64_t cols, int64_t lds, T* dst, int64_t ldd) {
  constexpr int64_t tile = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += tile)
    for (int64_t c0 = 0; c0 < cols; c0 += tile) {
      const int64_t r1 = std::min(rows, r0 + tile), c1 = std::min(cols, c0 + tile);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * ldd + r] = src[r * lds + c];
    }
}

// The transposes of 2-D matrices stacked by rows into one contiguous (sum of their columns) x N matrix
// (each part N rows), or a 1-D part (N) as one row: [A^T; B^T; b]. Float and double by tiles, others
// by ATen.
inline at::Tensor stacked_transposes(const std::vector<at::Tensor>& parts) {
  int64_t depth = 0;
  const int64_t N = parts.front().size(0);
  for (const auto& p : parts) depth += p.dim() == 2 ? p.size(1) : 1;
  at::Tensor out = at::empty({depth, N}, parts.front().options());
  int64_t row = 0;
  for (const auto& p : parts) {
    TORCH_CHECK(p.size(0) == N, "stacked_transposes: every part must have ", N, " rows");
    const int64_t width = p.dim() == 2 ? p.size(1) : 1;
    at::Tensor into = out.narrow(0, row, width);
    row += width;
    if (p.dim() == 1) {
      into.copy_(p.view({1, N}));
      continue;
    }
    const at::Tensor src = p.contiguous();
    if (src.scalar_type() == at::kFloat)
      transpose_into(src.data_ptr<float>(), N, width, width, into.data_ptr<float>(), N);
    else if (src.scalar_type() == at::kDouble)
      transpose_into(src.data_ptr<double>(), N, width, width, into.data_ptr<double>(), N);
    else
      into.copy_(src.t());
  }
  return out;
}

inline at::Tensor transposed(const at::Tensor& w) { return stacked_transposes({w}); }

// A step's weight (depth x N, row-major) packed in panels of PANEL columns, (N / PANEL, depth, PANEL):
// each panel's rows are adjacent, where the plain weight's are N floats apart (8 kB at N = 2048, a
// stride at which the rows of a column block share cache sets). Measured, one thread, brgemm
// (M x K x N): 32 x 512 x 2048 0.6-0.8x the time of the plain weight, 16 x 512 x 2048 0.7-0.8x;
// neutral at N = 512 and slower at M = 1 (more calls). Used for full-width products of
// PANEL_ROWS rows or more where N >= PANELS_FROM. `panels_on = false` turns them off (loops.cpp's
// `set_panels`, for measuring); an undefined tensor where they do not serve.
constexpr int64_t PANEL = 64, PANEL_ROWS = 8, PANELS_FROM = 1024;
inline bool panels_on = true;

inline at::Tensor panels_of(const at::Tensor& w) {
  const int64_t depth = w.size(0), N = w.size(1);
  if (!panels_on || N % PANEL != 0 || N < PANELS_FROM || w.scalar_type() != at::kFloat) return at::Tensor();
  return w.reshape({depth, N / PANEL, PANEL}).transpose(0, 1).contiguous();
}

template <typename T>
const T* panel_ptr(const at::Tensor& panels) {
  return panels.defined() ? panels.data_ptr<T>() : nullptr;
}

// C (M x N, leading dimension ldc) (+)= A w, w (depth x N) row-major, read from `panels` (w packed by
// panels_of, or null) where there are PANEL_ROWS rows or more.
template <typename T>
void multiply(int64_t M, int64_t N, int64_t depth, const T* A, int64_t lda, const T* w, const T* panels, T* C,
              int64_t ldc, bool add) {
  if (!panels || M < PANEL_ROWS) return matmul(M, N, depth, A, lda, w, N, C, ldc, add);
  for (int64_t j = 0; j < N / PANEL; ++j)
    matmul(M, PANEL, depth, A, lda, panels + j * depth * PANEL, PANEL, C + j * PANEL, ldc, add);
}
