// The LSTM's elementwise step, written once for loops.cpp (the LSTM) and cell_loops.cpp (the projected
// LSTM's forward step; the backward's output-gate and cell parts of the peephole, layer-norm and projected
// LSTMs). compiled.py hashes this header into each including module's build key.
//
// A row of gates is 4H wide, gate order i, f, r, o with gate j at j*H; tc keeps a(c) for the backward.
// Every pointer is the step's first row (the callers' block of rows), offset to the first unit of u.
#pragma once

#include "activations.h"

#include <algorithm>
#include <cstdint>

// The hidden units [k0, k1) of every row that one thread's share of a step covers. A row of K
// gates is K*H wide with gate j at j*H, so a share is K column blocks of the gates and one of the state.
struct Units {
  int64_t k0, k1;
  int64_t width() const { return k1 - k0; }
};

template <typename T>
void add_bias(T* __restrict__ g, const T* __restrict__ bias, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) g[k] += bias[k];
}

// a over `gates` adjacent gate blocks of width w (stride H): one call where they touch.
template <typename T>
void activate_gates(Act a, T* g, int64_t gates, int64_t w, int64_t H) {
  if (w == H) return activate(a, g, gates * H);
  for (int64_t j = 0; j < gates; ++j) activate(a, g + j * H, w);
}

template <typename T>
void activate_gates_backward(Act a, T* d, const T* y, int64_t gates, int64_t w, int64_t H) {
  if (w == H) return activate_backward(a, d, y, gates * H);
  for (int64_t j = 0; j < gates; ++j) activate_backward(a, d + j * H, y + j * H, w);
}

// `bias` (4H, or null) is added to the gates first: Zx comes from one product without its bias, which
// this pass adds for free (addmm's copy of a bias broadcast to every row of every step cost more than the
// product at (32, 128, 100): measured). h: the LSTM's output (the projected LSTM's m = o a(c)).
template <typename T>
void lstm_forward_step(Act act, Act sigma, T* g, const T* bias, const T* c_prev, T* c, T* tc, T* h, int64_t rows,
                       int64_t H, Units u) {
  const int64_t w = u.width();
  for (int64_t b = 0; b < rows; ++b) {
    T* __restrict__ gb = g + b * 4 * H + u.k0;
    const T* __restrict__ cp = c_prev + b * H + u.k0;
    T *__restrict__ cn = c + b * H + u.k0, *__restrict__ tn = tc + b * H + u.k0, *__restrict__ hn = h + b * H + u.k0;
    if (bias)
      for (int64_t j = 0; j < 4; ++j) add_bias(gb + j * H, bias + j * H + u.k0, w);
    activate_gates(sigma, gb, 2, w, H);  // i, f
    activate(act, gb + 2 * H, w);
    activate(sigma, gb + 3 * H, w);
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) cn[k] = tn[k] = gb[H + k] * cp[k] + gb[k] * gb[2 * H + k];
    activate(act, tn, w);
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) hn[k] = gb[3 * H + k] * tn[k];
  }
}

// The backward's two parts for w units of one row (gb its gates, db its dz, tb a(c), cp c'):
//   dz_o = sigma'(dh a(c));  then, given dc (its direct part dc' + a'(dh o), and what a family adds),
//   dz_i = sigma'(dc r);  dz_f = sigma'(dc c');  dz_r = a'(dc i);  dc' = dc f
// The output gate's: dz_o, and a'(dh o) (a' at c) into `dho`: the r slot of db, which holds it until dc is
// known, or (the layer-norm LSTM) the gradient of LN_c's output. dh_of(k): dL/dh at unit k.
// Both parts are inlined where they are called, as the loops they replaced were (GCC's heuristics would
// call them out of line from lstm_backward_step, measured: -fopt-info-vec).
template <typename T, typename Dh>
[[gnu::always_inline]] inline void lstm_output_backward(Act act, Act sigma, const T* __restrict__ gb,
                                                        const T* __restrict__ tb, T* db, T* dho, int64_t w, int64_t H,
                                                        const Dh& dh_of) {
#pragma omp simd
  for (int64_t k = 0; k < w; ++k) {
    const T dh = dh_of(k);
    db[3 * H + k] = dh * tb[k];
    dho[k] = dh * gb[3 * H + k];
  }
  activate_backward(sigma, db + 3 * H, gb + 3 * H, w);
  activate_backward(act, dho, tb, w);
}

// The cell's: dz_i, dz_f, dz_r and dc' = dc f into cc, from dc_of(k) (dL/dc at unit k, read before
// anything of unit k is written).
template <typename T, typename Dc>
[[gnu::always_inline]] inline void lstm_cell_backward(Act act, Act sigma, const T* __restrict__ gb,
                                                      const T* __restrict__ cp, T* cc, T* db, int64_t w, int64_t H,
                                                      const Dc& dc_of) {
#pragma omp simd
  for (int64_t k = 0; k < w; ++k) {
    const T dc = dc_of(k);
    db[k] = dc * gb[2 * H + k];
    db[H + k] = dc * cp[k];
    db[2 * H + k] = dc * gb[k];
    cc[k] = dc * gb[H + k];
  }
  activate_gates_backward(sigma, db, gb, 2, w, H);
  activate_backward(act, db + 2 * H, gb + 2 * H, w);
}

// The LSTM's backward step: dh = carry_h + d_out, dc = carry_c + a'(dh o); carry_c becomes dc f.
template <typename T>
void lstm_backward_step(Act act, Act sigma, const T* g, const T* c_prev, const T* tc, const T* d_out,
                        const T* carry_h, T* carry_c, T* dz, int64_t rows, int64_t H, Units u) {
  const int64_t w = u.width();
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict__ gb = g + b * 4 * H + u.k0;
    T* __restrict__ db = dz + b * 4 * H + u.k0;
    const T *__restrict__ cp = c_prev + b * H + u.k0, *__restrict__ tb = tc + b * H + u.k0;
    const T *__restrict__ dy = d_out + b * H + u.k0, *__restrict__ ch = carry_h + b * H + u.k0;
    T* __restrict__ cc = carry_c + b * H + u.k0;
    lstm_output_backward(act, sigma, gb, tb, db, db + 2 * H, w, H, [&](int64_t k) { return ch[k] + dy[k]; });
    lstm_cell_backward(act, sigma, gb, cp, cc, db, w, H, [&](int64_t k) { return cc[k] + db[2 * H + k]; });
  }
}
