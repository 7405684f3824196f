// The time loops of `fused` (every ladder cell) and the linear recurrence of `scan`, in C++. Same
// buffers, same equations, same results as the Python loops in fused.py and scan.py (to rounding).
// Built at first use by torch.utils.cpp_extension (compiled.py); rnnlab works without it.
//
//   LSTM                  i, f, o = sigma(z_i, z_f, z_o), r = a(z_r);  c = f c' + i r;  h = o a(c)
//   gated                 vanilla s = a(z_r); before s = a(z_r + s'); residual s = s' + a(z_r);
//                         input s = s' + i r;  forget s = f s' + i r      (any activations)
//   GRU                   r, u = sigma(zx + zh), n = a(zx_n + r zh_n), s = n + u (s' - n)
//   linear recurrence     s_t = f_t s_{t-1} + b_t, and its backward (a reverse recurrence)
//   cell scan             the steps above with no V, batch-major: scan's loop for reads_state=False
// where z = Zx + V s' + b: Zx precomputed for all steps by one product (`product`, oneDNN's) and
// in the gate buffer on entry, b added in the step's pass over its gates; or computed by each step
// with V s' and b as one product [x_t, s', 1] [U, V, b]^T (`Stacked`, where that weight stays in cache).
//
// Layering: one driver for the six entry points of `fused` (`over_steps`: forward or backward in time,
// the whole loop one parallel region of a team of threads, team.h, with a sync between steps; on one
// thread, plain calls), each thread's share of a step a block of batch rows or of hidden units
// (`share_of`), in which the block's matrix product (`matmul`: oneDNN's brgemm micro-kernel on raw
// pointers for floats, no ATen dispatch per step) is followed by the block's elementwise work (the
// `*_step` functions, vectorised loops over the block of each row).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "activations.h"
#include "checks.h"
#include "lstm.h"
#include "products.h"
#include "team.h"
#include "upstream.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

using at::Tensor;
using c10::optional;

namespace at::native {
// oneDNN's matrix product, which ATen exports without installing its header. Weak, so that a torch
// without it still loads this module (`product` then uses at::mm).
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta,
                             float alpha) __attribute__((weak));
}  // namespace at::native

namespace {

int64_t rows_at(const std::vector<int64_t>& sizes, int64_t t, int64_t batch) {
  return sizes.empty() ? batch : sizes[t];  // sequences still running at step t (sorted by length)
}

// --- the step's matrix product and its split over threads ----------------------------------------
// (Units, the hidden units of a thread's share of a step: lstm.h)

constexpr int64_t UNIT = 16;  // hidden units per block: a multiple of every vector width
// A step's matrix product smaller than this (multiply-adds) runs on one thread. With a region per step
// (a fork and a join of several microseconds) a backward step at B = 1, H = 128 (65k) did not earn its
// split (forward+backward 15.5 ms split, 10.6 ms not) and the threshold was 2^18; with one region per
// loop and a barrier between steps (team.h) it does, measured on 2 threads at B = 1, H = 128, T = 1000
// against torch.nn.LSTM (2026-11-30, quiet machine): forward+backward LSTM 0.71 -> 0.59, GRU 0.55 ->
// 0.49 split from 2^14; the forward splits from 2^14 too (the vanilla step, 16k, 0.30 -> 0.29).
// (`set_least` changes them, for measuring)
int64_t PARALLEL_MACS = 1 << 14, FORWARD_PARALLEL_MACS = 1 << 14;

// One thread's share of a step: the rows [r0, r1) of the step's n rows, and of those the units u.
struct Share {
  int64_t r0, r1;
  Units u;
  int64_t rows(int64_t n) const { return std::max<int64_t>(0, std::min(r1, n) - r0); }  // of the first n rows
};

// How a step is split over threads (`set_split`, for measuring): by the rule below, or always by
// units or always by rows.
enum class Split { rule, units, rows };
Split split_mode = Split::rule;

// From this many rows per thread, a step is split by batch rows (each thread's product keeps the
// full K*H width and its gates stay its own), below by blocks of units.
constexpr int64_t ROWS_PER_THREAD = 16;

// How a step is split over the threads of the loop's team: not at all (the first thread does it all), by
// blocks of batch rows (each thread's product keeps the full K*H width and its gates stay its own), or
// by blocks of hidden units (where there are too few rows), so that the elementwise work is split like
// the product, each thread reading the gates it computed itself (no second pass over them).
enum class Mode { serial, rows, units };

Mode mode_of(int64_t rows, int64_t H, int64_t macs, int64_t least, int64_t threads) {
  if (macs < least || threads == 1) return Mode::serial;
  const bool by_rows = split_mode == Split::rows || (split_mode == Split::rule && rows >= ROWS_PER_THREAD * threads);
  if (by_rows && rows >= 2) return Mode::rows;
  return H < 2 * UNIT ? Mode::serial : Mode::units;
}

// This thread's share of a step of `rows` rows split `mode` (it may be empty).
Share share_of(const Team& team, Mode mode, int64_t rows, int64_t H) {
  if (mode == Mode::rows) {
    const auto [r0, r1] = team.block(rows);
    return Share{r0, r1, Units{0, H}};
  }
  if (mode == Mode::units) {
    const auto [k0, k1] = team.block(H, UNIT);
    return Share{0, rows, Units{k0, k1}};
  }
  return team.index == 0 ? Share{0, rows, Units{0, H}} : Share{0, 0, Units{0, 0}};
}

bool empty(const Share& s) { return s.r1 <= s.r0 || s.u.k1 <= s.u.k0; }

// The rows whose inputs this thread gathers for the step (the product's rows, or where the step is
// split by units, a block of rows: the whole product reads them after a sync).
std::pair<int64_t, int64_t> gather_rows(const Team& team, Mode mode, const Share& s, int64_t n) {
  if (mode == Mode::units) return team.block(n);
  return {std::min(s.r0, n), std::min(s.r1, n)};
}

// Forward in time (t = 0..T-1), or backward (t = T-1 down to -1: the backward's step t also finishes
// the product of step t + 1, and t = -1 only that, which gives the initial state's gradient).
template <typename Step>
void for_each_step(int64_t steps, bool backward, const Step& step) {
  if (!backward) {
    for (int64_t t = 0; t < steps; ++t) step(t);
  } else {
    for (int64_t t = steps - 1; t >= -1; --t) step(t);
  }
}

// Every fused loop: step(t, team) for t forward or backward in time (`for_each_step`) on every thread
// of one team (team.h: one parallel region for the whole loop, a sync between steps), or on one thread
// where even the largest step, of `rows` rows and `macs` multiply-adds, is not split. Where every step
// has all `rows` (`same_rows`: no lengths) and is split by rows, each thread keeps its block of rows at
// every step: the threads run their steps apart (team.h: `steps_apart`).
template <typename Step>
void over_steps(int64_t steps, bool backward, int64_t rows, int64_t H, int64_t macs, int64_t least, bool same_rows,
                const Step& step) {
  const bool split = mode_of(rows, H, macs, least, at::get_num_threads()) != Mode::serial;
  in_team(split, [&](Team& team) {
    const bool apart = same_rows && steps_apart && mode_of(rows, H, macs, least, team.size) == Mode::rows;
    for_each_step(steps, backward, [&](int64_t t) {
      team.run([&] { team.fault_at(t); });
      step(t, team);
      if (!apart) team.sync();
    });
  });
}

// gates[:rows, the units' columns of each of the K gates] (+)= a (rows x depth, leading dimension lda) w,
// w (depth x K*H) row-major: V^T, or [U^T; V^T] where the step multiplies [x_t, s'] itself; `panels`
// (or null): w packed by panels_of.
template <typename T>
void gate_product(int64_t rows, int64_t K, int64_t H, Units u, const T* a, int64_t lda, int64_t depth, const T* w,
                  T* gates, bool add, const T* panels = nullptr) {
  if (u.k0 == 0 && u.k1 == H) return multiply(rows, K * H, depth, a, lda, w, panels, gates, K * H, add);
  for (int64_t j = 0; j < K; ++j)
    matmul(rows, u.width(), depth, a, lda, w + j * H + u.k0, K * H, gates + j * H + u.k0, K * H, add);
}

// The inputs (T, B, F) where the steps multiply them themselves, read where they are: any strides but
// contiguous rows (the batch-first x seen time-major: no copy of it made before the loop). Where `copy`
// (T, B, F, contiguous) is given, each step's rows are written there as the step reads them, by the
// thread that reads them: the time-major copy the backward's products need, made inside the loop's
// threads instead of before the loop on one (rnnlab's fused.py: training without lengths).
template <typename T>
struct Inputs {
  const T* x = nullptr;
  T* copy = nullptr;
  int64_t step = 0, batch_stride = 0, F = 0, B = 0;
  Inputs(const optional<Tensor>& inputs, const optional<Tensor>& copy_in) {
    if (!inputs) return;
    x = inputs->data_ptr<T>(), step = inputs->stride(0), batch_stride = inputs->stride(1);
    F = inputs->size(2), B = inputs->size(1);
    if (copy_in) copy = copy_in->data_ptr<T>();
  }
  const T* row(int64_t t, int64_t b) const { return x + t * step + b * batch_stride; }
  // the rows [r0, r1) of step t into the copy, where one is kept
  void keep(int64_t t, int64_t r0, int64_t r1) const {
    if (copy)
      for (int64_t b = r0; b < r1; ++b) std::copy(row(t, b), row(t, b) + F, copy + (t * B + b) * F);
  }
};

// Where the forward's step computes its whole pre-activation itself: [x_t, s'] [U; V]^T as ONE
// product of depth F + H (F alone without V), from the step's rows of x and the state it reads
// (masked) gathered side by side into `rows` (B x depth). Zx of all steps is then never written
// out and read back: at (64, 256, 100) that traffic (26 MB each way) cost more than the gathering.
template <typename T>
struct Stacked {
  Tensor w, buffer, panels;  // [U^T; V^T; b] (depth x K*H); the rows [x_t, s', 1]; w by panels_of
  Inputs<T> x;
  int64_t F = 0, R = 0, depth = 0;
  bool bias = false;  // b is w's last row, and each row of `buffer` ends in a 1: the product adds the bias
  Stacked(const optional<Tensor>& inputs, const optional<Tensor>& weight, const optional<Tensor>& weight_hh,
          const optional<Tensor>& bias_in, int64_t batch, const optional<Tensor>& copy) : x(inputs, copy) {
    if (!inputs) return;
    std::vector<Tensor> parts{*weight};
    if (weight_hh) parts.push_back(*weight_hh), R = weight_hh->size(1);
    if (bias_in) parts.push_back(*bias_in), bias = true;
    w = stacked_transposes(parts);  // [U^T; V^T; b]
    panels = panels_of(w);
    F = inputs->size(2), depth = w.size(0);
    buffer = at::empty({batch, depth}, inputs->options());
    if (bias) buffer.select(1, depth - 1).fill_(1);  // gather never writes this column
  }
  explicit operator bool() const { return x.x != nullptr; }
  // [x_t, s' * mask(, 1)] for the step's rows [r0, r1) (each thread gathers its own); returns all rows
  const T* gather(int64_t t, int64_t batch, int64_t r0, int64_t r1, const T* s_prev, const T* mask, int64_t H) const {
    T* rows = buffer.data_ptr<T>();
    x.keep(t, r0, r1);
    for (int64_t b = r0; b < r1; ++b) {
      std::copy(x.row(t, b), x.row(t, b) + F, rows + b * depth);
      if (R == 0) continue;
      T* __restrict__ s = rows + b * depth + F;
      const T* __restrict__ sp = s_prev + b * H;
      if (mask) {
        const T* __restrict__ m = mask + b * H;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) s[k] = sp[k] * m[k];
      } else {
        std::copy(sp, sp + H, s);
      }
    }
    return rows;
  }
};

// carry[:rows, units] (+)= (dz[:rows] V[:, units]) * mask: the product's part of the gradient reaching
// the state read at the previous step (dz rows K*H wide, V (K*H x H)); without V, nothing (or zeros).
template <typename T>
void add_recurrent(T* carry, const T* dz, const T* v, const T* mask, int64_t rows, int64_t KH, int64_t H, Units u,
                   bool add) {
  const int64_t w = u.width();
  if (!v) {
    if (!add)
      for (int64_t b = 0; b < rows; ++b) std::fill(carry + b * H + u.k0, carry + b * H + u.k1, T(0));
    return;
  }
  if (!mask) return matmul(rows, w, KH, dz, KH, v + u.k0, H, carry + u.k0, H, add);
  std::vector<T> product(rows * w);
  matmul(rows, w, KH, dz, KH, v + u.k0, H, product.data(), w, false);
  for (int64_t b = 0; b < rows; ++b) {
    T* __restrict__ c = carry + b * H + u.k0;
    const T* __restrict__ p = product.data() + b * w;
    const T* __restrict__ m = mask + b * H + u.k0;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) c[k] = add ? c[k] + p[k] * m[k] : p[k] * m[k];
  }
}

// The state the gates read, masked (recurrent dropout) into `scratch` where a mask is given (the rows
// [r0, r1): each thread masks its own); returns all rows.
template <typename T>
const T* masked(const T* s, const T* mask, T* scratch, int64_t r0, int64_t r1, int64_t H) {
  if (!mask) return s;
  for (int64_t k = r0 * H; k < r1 * H; ++k) scratch[k] = s[k] * mask[k];
  return scratch;
}

// The rows a forward step's product reads: [x_t, s' * mask] (`stacked`), s' * mask, or s' itself; each
// thread prepares its own rows, or where the step is split by units a block of rows and then a sync
// (every thread's product reads every row). Returns the first row (null: the step has no product).
template <typename T>
const T* step_reads(Team& team, Mode mode, const Share& s, int64_t t, int64_t batch, int64_t n,
                    const Stacked<T>& stacked, const T* vt, const T* s_prev, const T* mask, T* scratch, int64_t H) {
  if (!stacked && !(vt && mask)) return vt ? s_prev : nullptr;
  const auto [q0, q1] = gather_rows(team, mode, s, n);
  team.run([&] {
    if (stacked) stacked.gather(t, batch, q0, q1, s_prev, mask, H); else masked(s_prev, mask, scratch, q0, q1, H);
  });
  if (mode == Mode::units) team.sync();
  return stacked ? stacked.buffer.template data_ptr<T>() : scratch;
}

// A forward share's product into its gates g (the step's first row; K gates): [x_t, s'] [U; V]^T (+ b)
// written where the step multiplies its inputs, else V s' added to the Zx already there.
template <typename T>
void step_product(const Share& s, int64_t rows, int64_t K, int64_t H, const T* read, const Stacked<T>& stacked,
                  const T* vt, const T* vt_panels, T* g) {
  const int64_t o = s.r0 * H;
  if (stacked)
    gate_product(rows, K, H, s.u, read + s.r0 * stacked.depth, stacked.depth, stacked.depth, stacked.w.template data_ptr<T>(),
                 g + K * o, false, panel_ptr<T>(stacked.panels));
  else if (vt)
    gate_product(rows, K, H, s.u, read + o, H, H, vt, g + K * o, true, vt_panels);
}

template <typename T>
T* pointer(const optional<Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// --- the steps: the elementwise work of one step for the units u of `rows` rows ------------------
// A row of gates is K*H wide with gate j at j*H; every pointer below is the step's first row, offset
// to the first unit of u by the step itself. `bias` (K*H, or null) is added to the gates first: Zx
// comes from one product without its bias, which this pass adds for free (addmm's copy of a bias
// broadcast to every row of every step cost more than the product at (32, 128, 100): measured).

// --- LSTM: lstm.h (lstm_forward_step, lstm_backward_step; add_bias and activate_gates too) ----------

// --- gated cells: vanilla, residual (after or before), input-gated, forget-gated -------------------
// Gate order is the cell's: (r), (i, r) or (i, f, r); r is always last.

enum class Kind { vanilla, before, residual, input, forget };

Kind parse_kind(const std::string& name) {
  static const std::pair<const char*, Kind> names[] = {{"vanilla", Kind::vanilla}, {"before", Kind::before},
                                                       {"residual", Kind::residual}, {"input", Kind::input},
                                                       {"forget", Kind::forget}};
  for (const auto& [key, kind] : names)
    if (name == key) return kind;
  TORCH_CHECK_VALUE(false, "rnnlab loops: unknown gated kind ", name);
  return Kind::vanilla;  // not reached
}

int64_t gate_count(Kind kind) { return kind == Kind::forget ? 3 : kind == Kind::input ? 2 : 1; }

template <typename T>
void gated_forward_step(Kind kind, Act act, Act sigma, T* g, const T* bias, const T* s_prev, T* s, int64_t rows,
                        int64_t H, Units u) {
  const int64_t K = gate_count(kind), w = u.width();
  for (int64_t b = 0; b < rows; ++b) {
    T* __restrict__ r = g + b * K * H + (K - 1) * H + u.k0;
    T* __restrict__ i = g + b * K * H + u.k0;  // i and f are adjacent: one sigma pass for both
    const T* __restrict__ sp = s_prev + b * H + u.k0;
    T* __restrict__ sn = s + b * H + u.k0;
    if (bias)
      for (int64_t j = 0; j < K; ++j) add_bias(i + j * H, bias + j * H + u.k0, w);
    if (kind == Kind::before) {
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) r[k] += sp[k];
    }
    activate(act, r, w);
    if (K > 1) activate_gates(sigma, i, K - 1, w, H);
    switch (kind) {
      case Kind::vanilla:
      case Kind::before:  // fused.py may give the state's buffer as the gate's (s = r): nothing to copy then
        if (sn != r) std::copy(r, r + w, sn);
        break;
      case Kind::residual:
#pragma omp simd
        for (int64_t k = 0; k < w; ++k) sn[k] = sp[k] + r[k];
        break;
      case Kind::input:
#pragma omp simd
        for (int64_t k = 0; k < w; ++k) sn[k] = sp[k] + i[k] * r[k];
        break;
      case Kind::forget:
#pragma omp simd
        for (int64_t k = 0; k < w; ++k) sn[k] = i[H + k] * sp[k] + i[k] * r[k];
        break;
    }
  }
}

// On entry carry = dL/ds^t from the future; d_out the output's gradient. Fills dz_t and leaves in
// carry the direct part of dL/ds^{t-1} (the V part is added by the caller).
template <typename T>
void gated_backward_step(Kind kind, Act act, Act sigma, const T* g, const T* s_prev, const T* d_out, T* carry,
                         T* dz, int64_t rows, int64_t H, Units u) {
  const int64_t K = gate_count(kind), w = u.width();
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict__ r = g + b * K * H + (K - 1) * H + u.k0;
    const T* __restrict__ i = g + b * K * H + u.k0;
    T* __restrict__ dr = dz + b * K * H + (K - 1) * H + u.k0;
    T* __restrict__ di = dz + b * K * H + u.k0;
    const T* __restrict__ sp = s_prev + b * H + u.k0;
    const T* __restrict__ dy = d_out + b * H + u.k0;
    T* __restrict__ ds = carry + b * H + u.k0;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) ds[k] += dy[k];  // dL/ds^t
    switch (kind) {
      case Kind::vanilla:
      case Kind::before:
      case Kind::residual:
        std::copy(ds, ds + w, dr);
        activate_backward(act, dr, r, w);
        if (kind == Kind::vanilla) std::fill(ds, ds + w, T(0));
        if (kind == Kind::before) std::copy(dr, dr + w, ds);
        break;  // residual: ds^{t-1} = ds^t directly
      case Kind::input:
      case Kind::forget:
#pragma omp simd
        for (int64_t k = 0; k < w; ++k) {
          di[k] = ds[k] * r[k];
          dr[k] = ds[k] * i[k];
        }
        if (kind == Kind::forget) {
#pragma omp simd
          for (int64_t k = 0; k < w; ++k) {
            di[H + k] = ds[k] * sp[k];
            ds[k] *= i[H + k];
          }
        }
        activate_gates_backward(sigma, di, i, K - 1, w, H);
        activate_backward(act, dr, r, w);
        break;
    }
  }
}

// --- GRU ------------------------------------------------------------------------------------------
// With a state read: gates (r, z, n), zh = V s' + b_hh kept per step (its n part feeds the backward).
// Without (minGRU): gates (z, n). `bias` is b_ih (b_hh is inside zh: r scales its n part).

template <typename T>
void gru_forward_step(Act act, Act sigma, T* g, const T* bias, T* zh, const T* bias_hh, const T* s_prev, T* s,
                      int64_t rows, int64_t H, Units u) {
  const int64_t K = zh ? 3 : 2, w = u.width();
  for (int64_t b = 0; b < rows; ++b) {
    T* __restrict__ gb = g + b * K * H + u.k0;
    T* __restrict__ ug = gb + (K - 2) * H;
    T* __restrict__ n = gb + (K - 1) * H;
    if (bias)
      for (int64_t j = 0; j < K; ++j) add_bias(gb + j * H, bias + j * H + u.k0, w);
    if (zh) {
      T* __restrict__ zb = zh + b * 3 * H + u.k0;
      if (bias_hh)
        for (int64_t j = 0; j < 3; ++j) add_bias(zb + j * H, bias_hh + j * H + u.k0, w);
      for (int64_t j = 0; j < 2; ++j) add_bias(gb + j * H, zb + j * H, w);
      activate_gates(sigma, gb, 2, w, H);
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) n[k] += gb[k] * zb[2 * H + k];
    } else {
      activate(sigma, ug, w);
    }
    activate(act, n, w);
    const T* __restrict__ sp = s_prev + b * H + u.k0;
    T* __restrict__ sn = s + b * H + u.k0;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) sn[k] = n[k] + ug[k] * (sp[k] - n[k]);
  }
}

//   dn = a'(dh (1 - u));  du = sigma'(dh (s' - n));  ds' = dh u (+ dzh V)
//   with a state read also  dzh_n = dn r;  dr = sigma'(dn zh_n);  dzh_{r,z} = dzx_{r,z}
template <typename T>
void gru_backward_step(Act act, Act sigma, const T* g, const T* zh, const T* s_prev, const T* d_out, T* carry,
                       T* dzx, T* dzh, int64_t rows, int64_t H, Units u) {
  const int64_t K = zh ? 3 : 2, w = u.width();
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict__ ug = g + b * K * H + (K - 2) * H + u.k0;
    const T* __restrict__ n = g + b * K * H + (K - 1) * H + u.k0;
    T* __restrict__ du = dzx + b * K * H + (K - 2) * H + u.k0;
    T* __restrict__ dn = dzx + b * K * H + (K - 1) * H + u.k0;
    const T* __restrict__ sp = s_prev + b * H + u.k0;
    const T* __restrict__ dy = d_out + b * H + u.k0;
    T* __restrict__ ds = carry + b * H + u.k0;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) {
      T dh = ds[k] + dy[k];
      dn[k] = dh - dh * ug[k];
      du[k] = (sp[k] - n[k]) * dh;
      ds[k] = dh * ug[k];
    }
    activate_backward(act, dn, n, w);
    activate_backward(sigma, du, ug, w);
    if (zh) {
      const T* __restrict__ r = g + b * 3 * H + u.k0;
      const T* __restrict__ zn = zh + b * 3 * H + 2 * H + u.k0;
      T* __restrict__ dr = dzx + b * 3 * H + u.k0;
      T* __restrict__ dh_b = dzh + b * 3 * H + u.k0;
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) {
        dh_b[2 * H + k] = dn[k] * r[k];
        dr[k] = dn[k] * zn[k];
      }
      activate_backward(sigma, dr, r, w);
      for (int64_t j = 0; j < 2; ++j) std::copy(dr + j * H, dr + j * H + w, dh_b + j * H);
    }
  }
}


// --- linear recurrence (scan) -----------------------------------------------------------------------

template <typename T>
void scan_forward(const T* f, const T* b, const T* s0, T* s, int64_t batch, int64_t steps, int64_t H) {
  for (int64_t n = 0; n < batch; ++n) {
    const T* __restrict__ prev = s0 + n * H;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t o = (n * steps + t) * H;
      const T* __restrict__ ft = f + o;
      const T* __restrict__ bt = b + o;
      T* __restrict__ out = s + o;
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) out[k] = ft[k] * prev[k] + bt[k];
      prev = out;
    }
  }
}

template <typename T>
void scan_backward(const T* f, const T* s, const T* s0, const T* ds, T* df, T* db, T* ds0, int64_t batch,
                   int64_t steps, int64_t H) {
  for (int64_t n = 0; n < batch; ++n) {
    T* __restrict__ carry = ds0 + n * H;  // f_{t+1} g_{t+1}; ds0 at the end
    std::fill(carry, carry + H, T(0));
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t o = (n * steps + t) * H;
      const T* __restrict__ prev = t == 0 ? s0 + n * H : s + o - H;
      const T* __restrict__ ft = f + o;
      const T* __restrict__ dst = ds + o;
      T* __restrict__ dft = df + o;
      T* __restrict__ dbt = db + o;
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) {
        T g = dst[k] + carry[k];
        dbt[k] = g;
        dft[k] = g * prev[k];
        carry[k] = ft[k] * g;
      }
    }
  }
}


// --- scan: the ladder cells without a state read, batch-major ---------------------------------------
// With reads_state=False a cell's gates do not depend on its state, so the steps above, which
// never touch V, serve the scan as they are: one row at a time, each sequence from its first step
// to its last valid one (the rows of one sequence are adjacent in (B, T, ...) tensors).

enum class ScanKind { gated, gru, lstm };

ScanKind scan_kind(const std::string& name) { return name == "gru" ? ScanKind::gru : name == "lstm" ? ScanKind::lstm : ScanKind::gated; }

int64_t steps_of(const std::vector<int64_t>& lengths, int64_t n, int64_t steps) {
  return lengths.empty() ? steps : lengths[n];
}

// --- entry checks ------------------------------------------------------------------------------
// Every entry point checks what its loops index through raw pointers before touching any memory:
// each tensor defined, on the CPU, of the gates' dtype, of its exact shape and, where read through
// a pointer, contiguous; the per-step row counts and lengths in range. A wrong call raises.

constexpr int64_t ANY = -1;  // a dimension of any size >= 1 (a ring of steps)

struct Expect {
  const char* where;
  const char* like;  // the tensor that fixed the dtype
  at::ScalarType dtype;

  void operator()(const Tensor& t, const char* name, std::vector<int64_t> shape, bool contiguous = true) const {
    TORCH_CHECK_VALUE(t.defined(), where, ": ", name, " is missing");
    TORCH_CHECK_VALUE(t.device().is_cpu(), where, ": ", name, " must be on the CPU; got ", t.device());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, where, ": ", name, " must be ", dtype, " like ", like, "; got ",
                     t.scalar_type());
    bool fits = t.dim() == static_cast<int64_t>(shape.size()), ring = false;
    for (size_t d = 0; d < shape.size(); ++d) {
      ring = ring || shape[d] == ANY;
      fits = fits && (shape[d] == ANY ? t.size(d) >= 1 : t.size(d) == shape[d]);
    }
    TORCH_CHECK_VALUE(fits, where, ": ", name, " must be ", at::IntArrayRef(shape), ring ? " (-1: any size >= 1)" : "",
                      "; got ", t.sizes());
    TORCH_CHECK_VALUE(!contiguous || t.is_contiguous(), where, ": ", name, " must be contiguous");
  }
  void operator()(const optional<Tensor>& t, const char* name, std::vector<int64_t> shape, bool contiguous = true) const {
    if (t) (*this)(*t, name, std::move(shape), contiguous);
  }
  // present exactly when `needed` (where a tensor present changes what the loop reads)
  void required(const optional<Tensor>& t, const char* name, bool needed) const {
    TORCH_CHECK_VALUE(static_cast<bool>(t) == needed, where, ": ", name, needed ? " is required here" : " must be None here");
  }
  // present where `needed` (elsewhere it is not read)
  void needs(const optional<Tensor>& t, const char* name, bool needed) const {
    TORCH_CHECK_VALUE(t || !needed, where, ": ", name, " is required here");
  }
};

// The leading tensor `name` (3-D, contiguous, float or double on the CPU) fixes the dtype every other
// tensor must have; `state` (B, H) fixes H, with B its dimension `batch_dim`. Returns the checker.
Expect expect_gates(const char* where, const Tensor& gates, const Tensor& state, int64_t batch_dim,
                    const char* name = "gates") {
  TORCH_CHECK_VALUE(gates.defined() && gates.dim() == 3, where, ": ", name, " must be 3-D; got ",
                    gates.defined() ? gates.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(gates.device().is_cpu(), where, ": ", name, " must be on the CPU; got ", gates.device());
  TORCH_CHECK_TYPE(gates.scalar_type() == at::kFloat || gates.scalar_type() == at::kDouble, where, ": ", name,
                   " must be float32 or float64; got ", gates.scalar_type());
  TORCH_CHECK_VALUE(gates.is_contiguous(), where, ": ", name, " must be contiguous");
  TORCH_CHECK_VALUE(state.defined() && state.dim() == 2 && state.size(0) == gates.size(batch_dim) && state.size(1) >= 1,
                    where, ": the initial state must be (B, H) with B = ", gates.size(batch_dim), " and H >= 1; got ",
                    state.defined() ? state.sizes() : at::IntArrayRef{});
  return Expect{where, name, gates.scalar_type()};
}

// lengths: empty, or one per sequence within [0, T].
void check_lengths(const char* where, const std::vector<int64_t>& lengths, int64_t steps, int64_t batch) {
  TORCH_CHECK_VALUE(lengths.empty() || static_cast<int64_t>(lengths.size()) == batch, where,
              ": lengths must hold one length per sequence (", batch, "); got ", lengths.size());
  for (int64_t n : lengths) TORCH_CHECK_VALUE(n >= 0 && n <= steps, where, ": lengths must lie in [0, ", steps, "]; got ", n);
}

int64_t scan_gate_count(ScanKind scan, Kind kind) {
  return scan == ScanKind::lstm ? 4 : scan == ScanKind::gru ? 2 : kind == Kind::forget ? 3 : kind == Kind::input ? 2 : 1;
}
// --- the six entry points of `fused` ------------------------------------------------------------
// Each is one time loop (`forward_steps` or `backward_steps`, over `over_steps`) of one step function,
// which runs on every thread of the team the thread's share of the step (`share_of`): the matrix product
// and the elementwise work for a block of rows or of units.

// Contiguous copies where the loops read through raw pointers (V^T for the forward product).
struct Weights {
  Tensor vt, v, mask, vt_panels;
  Weights(const optional<Tensor>& weight_hh, const optional<Tensor>& mask_in, bool forward) {
    if (weight_hh) (forward ? vt : v) = forward ? transposed(*weight_hh) : weight_hh->contiguous();
    if (vt.defined()) vt_panels = panels_of(vt);
    if (mask_in) mask = mask_in->contiguous();
  }
  template <typename T> const T* vt_ptr() const { return vt.defined() ? vt.data_ptr<T>() : nullptr; }
  template <typename T> const T* v_ptr() const { return v.defined() ? v.data_ptr<T>() : nullptr; }
  template <typename T> const T* mask_ptr() const { return mask.defined() ? mask.data_ptr<T>() : nullptr; }
};

// A forward loop (`over_steps`, forward in time): on every thread its share s of step t's n rows, the rows
// its product reads prepared first (`step_reads`: [x_t, s'] where `stacked`, else s' masked; s_prev(t) the
// state step t reads), then step(t, s, s.rows(n), s.r0 * H, read): the share's product and elementwise work.
template <typename T, typename Previous, typename Step>
void forward_steps(int64_t steps, int64_t batch, int64_t H, const std::vector<int64_t>& sizes, int64_t macs_per_row,
                   const Stacked<T>& stacked, const T* vt, const T* mask, T* scratch, const Previous& s_prev,
                   const Step& step) {
  over_steps(steps, false, rows_at(sizes, 0, batch), H, rows_at(sizes, 0, batch) * macs_per_row,
             FORWARD_PARALLEL_MACS, sizes.empty(), [&](int64_t t, Team& team) {
    const int64_t n = rows_at(sizes, t, batch);
    const Mode mode = mode_of(n, H, n * macs_per_row, FORWARD_PARALLEL_MACS, team.size);
    const Share s = share_of(team, mode, n, H);
    const T* read = step_reads(team, mode, s, t, batch, n, stacked, vt, s_prev(t), mask, scratch, H);
    if (empty(s)) return;
    team.run([&] { step(t, s, s.rows(n), s.r0 * H, read); });
  });
}

// A backward loop (`over_steps`, t = T-1 down to -1), K gates a row (for the products' size): on every
// thread its share of the rows of step t or t + 1, first the product that finishes step t + 1's gradient
// of the state, carry += (dz_{t+1} V) * mask (`add_recurrent`, from `dz`'s rows KD*H wide; dz null: no
// product; `add` false: carry = that product, the LSTM's, which has no direct term), then for t >= 0
// step(t, s, s.rows(n), s.r0 * H, dy): the share's elementwise work, dy its rows of the outputs' gradient.
template <typename T, typename Step>
void backward_steps(int64_t steps, int64_t batch, int64_t H, int64_t K, const std::vector<int64_t>& sizes,
                    const Upstream<T>& d_out, T* carry, const T* dz, int64_t KD, const T* v, const T* mask, bool add,
                    const Step& step) {
  over_steps(steps, true, batch, H, batch * K * H * H, PARALLEL_MACS, sizes.empty(), [&](int64_t t, Team& team) {
    const int64_t n = t >= 0 ? rows_at(sizes, t, batch) : 0, later = t + 1 < steps ? rows_at(sizes, t + 1, batch) : 0;
    const int64_t rows = std::max(n, later);
    const Share s = share_of(team, mode_of(rows, H, rows * K * H * H, PARALLEL_MACS, team.size), rows, H);
    if (empty(s)) return;
    team.run([&] {
      const int64_t o = s.r0 * H;
      if (t + 1 < steps && dz)
        add_recurrent(carry + o, dz + (t + 1) * batch * KD * H + KD * o, v, mask ? mask + o : nullptr, s.rows(later),
                      KD * H, H, s.u, add);
      if (t < 0) return;
      step(t, s, s.rows(n), o, d_out.step(t, s.r0, s.r0 + s.rows(n), s.u.k0, s.u.k1));
    });
  });
}

// T: the inputs' steps where given (the gates may then be a ring of steps), else the gates'.
int64_t steps_of(const optional<Tensor>& inputs, const Tensor& gates) {
  return inputs && inputs->dim() == 3 ? inputs->size(0) : gates.size(0);
}

// inputs (T, B, F), any strides but contiguous rows, and weight (K*H, F), both or neither: with them the
// gates are written, not read; inputs_copy (T, B, F), only with them and without lengths (`Inputs`).
void expect_inputs(const Expect& expect, const optional<Tensor>& inputs, const optional<Tensor>& weight,
                   const optional<Tensor>& copy, const std::vector<int64_t>& sizes, int64_t steps, int64_t batch,
                   int64_t KH) {
  expect.required(weight, "weight (with inputs)", static_cast<bool>(inputs));
  expect(inputs, "inputs", {steps, batch, ANY}, false);
  if (!inputs) return expect.required(copy, "inputs_copy (without inputs)", false);
  TORCH_CHECK_VALUE((inputs->stride(2) == 1 || inputs->size(2) == 1) &&
                        (inputs->size(1) == 1 || inputs->stride(1) >= inputs->size(2)), expect.where,
                    ": inputs must have contiguous rows that do not overlap; got strides ", inputs->strides());
  expect(*weight, "weight", {KH, inputs->size(2)}, false);
  expect(copy, "inputs_copy", {steps, batch, inputs->size(2)});
  TORCH_CHECK_VALUE(!copy || sizes.empty(), expect.where, ": inputs_copy needs every row at every step (no sizes)");
}

}  // namespace

// gates (T, B, 4H): Zx on entry (with its bias, or without it and `bias` given), the gate values on
// exit; or, with `inputs` and `weight`, written only (each step computes its Zx), a ring of steps
// when not saving. cs has T steps, or a ring of 2 when not saving; tcs T steps or a ring of 1.
// Returns nothing: hs, cs, tcs are filled (hs and tcs rows of finished sequences untouched).
void lstm_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                  const optional<Tensor>& weight_hh, const optional<Tensor>& mask,
                  const Tensor& h0, const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, std::vector<int64_t> sizes,
                  const optional<Tensor>& bias, const optional<Tensor>& inputs, const optional<Tensor>& weight,
                  const optional<Tensor>& inputs_copy) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("lstm_forward", gates, h0, 1);
  const int64_t steps = steps_of(inputs, gates), batch = gates.size(1), H = h0.size(1);
  expect(gates, "gates", {inputs ? ANY : steps, batch, 4 * H});
  expect(h0, "h0", {batch, H}, false);
  expect(c0, "c0", {batch, H});
  expect(hs, "hs", {steps, batch, H});
  expect(cs, "cs", {ANY, batch, H});
  expect(tcs, "tcs", {ANY, batch, H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  expect(bias, "bias", {4 * H});
  expect_inputs(expect, inputs, weight, inputs_copy, sizes, steps, batch, 4 * H);
  check_sizes("lstm_forward", sizes, steps, batch);
  const int64_t ring_c = cs.size(0), ring_t = tcs.size(0), step = batch * H;  // elements of one step of hs, cs, tcs
  const Weights weights(inputs ? optional<Tensor>() : weight_hh, mask, true);
  const Tensor h0c = h0.contiguous(), scratch = at::empty_like(h0c);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward", [&] {
    using T = scalar_t;
    T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    const T *vt = weights.vt_ptr<T>(), *m = weights.mask_ptr<T>(), *b = pointer<T>(bias);
    const Stacked<T> stacked(inputs, weight, weight_hh, bias, batch, inputs_copy);
    const T* step_bias = stacked.bias ? nullptr : b;  // where the product adds it, the step does not
    const auto h_prev = [&](int64_t t) { return t == 0 ? h0c.data_ptr<T>() : h + (t - 1) * step; };
    forward_steps<T>(steps, batch, H, sizes, 4 * H * (stacked.depth + H), stacked, vt, m, scratch.data_ptr<T>(), h_prev,
                     [&](int64_t t, const Share& s, int64_t rows, int64_t o, const T* read) {
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + ((t - 1) % ring_c) * step;
      T* g_t = g + (t % gates.size(0)) * 4 * step;
      T *c_t = c + (t % ring_c) * step, *tc_t = tc + (t % ring_t) * step, *h_t = h + t * step;
      step_product(s, rows, 4, H, read, stacked, vt, panel_ptr<T>(weights.vt_panels), g_t);
      lstm_forward_step<T>(act, sigma, g_t + 4 * o, step_bias, c_prev + o, c_t + o, tc_t + o, h_t + o, rows, H, s.u);
    });
  });
}

// Fills dz (T, B, 4H) and turns carry_h, carry_c (the gradients of the final state on entry) into
// those of the initial state.
void lstm_backward(const std::string& act_name, const std::string& sigma_name, const Tensor& gates, const Tensor& cs,
                   const Tensor& tcs, const Tensor& c0, const Tensor& d_out, const optional<Tensor>& weight_hh,
                   const optional<Tensor>& mask, Tensor carry_h, Tensor carry_c, Tensor dz, std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("lstm_backward", gates, c0, 1);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(1);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(c0, "c0", {batch, H});
  expect(cs, "cs", {steps, batch, H});
  expect(tcs, "tcs", {steps, batch, H});
  expect(d_out, "d_out", {steps, batch, H}, false);  // any strides (upstream.h)
  expect(carry_h, "carry_h", {batch, H});
  expect(carry_c, "carry_c", {batch, H});
  expect(dz, "dz", {steps, batch, 4 * H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  check_sizes("lstm_backward", sizes, steps, batch);
  const int64_t step = batch * H;
  const Weights weights(weight_hh, mask, false);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    using T = scalar_t;
    const T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    const Upstream<T> dout(d_out);
    const T *v = weights.v_ptr<T>(), *m = weights.mask_ptr<T>();
    T *ch = carry_h.data_ptr<T>(), *cc = carry_c.data_ptr<T>(), *d = dz.data_ptr<T>();
    // dh' = dz V (masked), from step t + 1: the LSTM has no direct term
    backward_steps<T>(steps, batch, H, 4, sizes, dout, ch, d, 4, v, m, false,
                      [&](int64_t t, const Share& s, int64_t rows, int64_t o, const T* dy) {
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      lstm_backward_step<T>(act, sigma, g + t * 4 * step + 4 * o, c_prev + o, tc + t * step + o, dy + o, ch + o, cc + o,
                            d + t * 4 * step + 4 * o, rows, H, s.u);
    });
  });
}

// gates (T, B, K*H): as in lstm_forward (Zx, bias, or inputs and weight); states (T, B, H) filled.
void gated_forward(const std::string& kind_name, const std::string& act_name, const std::string& sigma_name,
                   Tensor gates, const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& s0,
                   Tensor states, std::vector<int64_t> sizes, const optional<Tensor>& bias,
                   const optional<Tensor>& inputs, const optional<Tensor>& weight, const optional<Tensor>& inputs_copy) {
  const Kind kind = parse_kind(kind_name);
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("gated_forward", gates, s0, 1);
  const int64_t steps = steps_of(inputs, gates), batch = gates.size(1), H = s0.size(1), K = gate_count(kind);
  expect(gates, "gates", {inputs ? ANY : steps, batch, K * H});
  expect(s0, "s0", {batch, H});
  expect(states, "states", {steps, batch, H});
  expect(weight_hh, "weight_hh", {K * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  expect(bias, "bias", {K * H});
  expect_inputs(expect, inputs, weight, inputs_copy, sizes, steps, batch, K * H);
  check_sizes("gated_forward", sizes, steps, batch);
  const Weights weights(inputs ? optional<Tensor>() : weight_hh, mask, true);
  const Tensor scratch = at::empty_like(s0);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gated_forward", [&] {
    using T = scalar_t;
    T *g = gates.data_ptr<T>(), *s = states.data_ptr<T>();
    const T *vt = weights.vt_ptr<T>(), *m = weights.mask_ptr<T>(), *b = pointer<T>(bias);
    const Stacked<T> stacked(inputs, weight, weight_hh, bias, batch, inputs_copy);
    const T* step_bias = stacked.bias ? nullptr : b;  // where the product adds it, the step does not
    const auto s_prev = [&](int64_t t) { return t == 0 ? s0.data_ptr<T>() : s + (t - 1) * batch * H; };
    forward_steps<T>(steps, batch, H, sizes, K * H * (stacked.depth + H), stacked, vt, m, scratch.data_ptr<T>(), s_prev,
                     [&](int64_t t, const Share& sh, int64_t rows, int64_t o, const T* read) {
      T* g_t = g + (t % gates.size(0)) * batch * K * H;
      step_product(sh, rows, K, H, read, stacked, vt, panel_ptr<T>(weights.vt_panels), g_t);
      gated_forward_step<T>(kind, act, sigma, g_t + K * o, step_bias, s_prev(t) + o, s + t * batch * H + o, rows, H,
                            sh.u);
    });
  });
}

// Fills dz (T, B, K*H); carry: the final state's gradient on entry, the initial state's on exit.
void gated_backward(const std::string& kind_name, const std::string& act_name, const std::string& sigma_name,
                    const Tensor& gates, const Tensor& states, const Tensor& s0, const Tensor& d_out,
                    const optional<Tensor>& weight_hh, const optional<Tensor>& mask, Tensor carry, Tensor dz,
                    std::vector<int64_t> sizes) {
  const Kind kind = parse_kind(kind_name);
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("gated_backward", gates, s0, 1);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = s0.size(1), K = gate_count(kind);
  expect(gates, "gates", {steps, batch, K * H});
  expect(s0, "s0", {batch, H});
  expect(states, "states", {steps, batch, H});
  expect(d_out, "d_out", {steps, batch, H}, false);  // any strides (upstream.h)
  expect(carry, "carry", {batch, H});
  expect(dz, "dz", {steps, batch, K * H});
  expect(weight_hh, "weight_hh", {K * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  check_sizes("gated_backward", sizes, steps, batch);
  const Weights weights(weight_hh, mask, false);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gated_backward", [&] {
    using T = scalar_t;
    const T *g = gates.data_ptr<T>(), *s = states.data_ptr<T>();
    const Upstream<T> dout(d_out);
    const T *v = weights.v_ptr<T>(), *m = weights.mask_ptr<T>();
    T *ds = carry.data_ptr<T>(), *d = dz.data_ptr<T>();
    backward_steps<T>(steps, batch, H, K, sizes, dout, ds, v ? d : nullptr, K, v, m, true,
                      [&](int64_t t, const Share& sh, int64_t rows, int64_t o, const T* dy) {
      const T* s_prev = t == 0 ? s0.data_ptr<T>() : s + (t - 1) * batch * H;
      gated_backward_step<T>(kind, act, sigma, g + t * batch * K * H + K * o, s_prev + o, dy + o, ds + o,
                             d + t * batch * K * H + K * o, rows, H, sh.u);
    });
  });
}

// gates (T, B, K*H): as in lstm_forward (Zx, bias b_ih, or inputs and weight); hs (T, B, H)
// filled; with a state read, zhs (T or 1, B, 3H) receives V s' + b_hh of each step (a ring of one
// step when not saving).
void gru_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                 const optional<Tensor>& weight_hh, const optional<Tensor>& bias_hh, const optional<Tensor>& mask,
                 const Tensor& s0, Tensor hs, const optional<Tensor>& zhs, std::vector<int64_t> sizes,
                 const optional<Tensor>& bias, const optional<Tensor>& inputs, const optional<Tensor>& weight,
                 const optional<Tensor>& inputs_copy) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("gru_forward", gates, s0, 1);
  const int64_t steps = steps_of(inputs, gates), batch = gates.size(1), H = s0.size(1), K = weight_hh ? 3 : 2;
  expect(gates, "gates", {inputs ? ANY : steps, batch, K * H});
  expect(s0, "s0", {batch, H});
  expect(hs, "hs", {steps, batch, H});
  expect.required(zhs, "zhs (with weight_hh)", static_cast<bool>(weight_hh));
  expect(zhs, "zhs", {ANY, batch, 3 * H});
  expect(weight_hh, "weight_hh", {3 * H, H}, false);
  expect(bias_hh, "bias_hh", {3 * H}, false);
  expect(mask, "mask", {batch, H}, false);
  expect(bias, "bias", {K * H});
  expect_inputs(expect, inputs, weight, inputs_copy, sizes, steps, batch, K * H);
  check_sizes("gru_forward", sizes, steps, batch);
  // with the inputs, the step computes x_t U^T itself (straight from x: zh = V s' is a product of its own)
  const Tensor ut = inputs ? transposed(*weight) : Tensor(), ut_panels = inputs ? panels_of(ut) : Tensor();
  const int64_t F = inputs ? inputs->size(2) : 0;
  const Weights weights(weight_hh, mask, true);
  const Tensor scratch = at::empty_like(s0), b_hh = bias_hh ? bias_hh->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_forward", [&] {
    using T = scalar_t;
    T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *zh = pointer<T>(zhs);
    const T *vt = weights.vt_ptr<T>(), *m = weights.mask_ptr<T>(), *b = pointer<T>(bias);
    const T* bhh = b_hh.defined() ? b_hh.data_ptr<T>() : nullptr;
    const int64_t ring = zhs ? zhs->size(0) : 1;
    const Stacked<T> none(optional<Tensor>(), optional<Tensor>(), optional<Tensor>(), optional<Tensor>(), batch,
                          optional<Tensor>());
    const Inputs<T> x(inputs, inputs_copy);
    const auto s_prev = [&](int64_t t) { return t == 0 ? s0.data_ptr<T>() : h + (t - 1) * batch * H; };
    // the GRU multiplies x_t and s' apart (zh = V s' is kept): K*H*(F + H) multiply-adds a row
    forward_steps<T>(steps, batch, H, sizes, K * H * (F + H), none, vt, m, scratch.data_ptr<T>(), s_prev,
                     [&](int64_t t, const Share& sh, int64_t rows, int64_t o, const T* read) {
      T* zh_s = zh ? zh + (t % ring) * batch * 3 * H + 3 * o : nullptr;
      T* g_t = g + (t % gates.size(0)) * batch * K * H;
      if (F) {
        if (sh.u.k0 == 0) x.keep(t, sh.r0, sh.r0 + rows);  // each row by one thread: split by units, the first's
        gate_product(rows, K, H, sh.u, x.row(t, sh.r0), std::max(x.batch_stride, F), F, ut.data_ptr<T>(),
                     g_t + K * o, false, panel_ptr<T>(ut_panels));
      }
      if (vt) gate_product(rows, 3, H, sh.u, read + o, H, H, vt, zh_s, false, panel_ptr<T>(weights.vt_panels));
      gru_forward_step<T>(act, sigma, g_t + K * o, b, zh_s, bhh, s_prev(t) + o, h + t * batch * H + o, rows, H, sh.u);
    });
  });
}

// Fills dzx (T, B, K*H) and, with a state read, dzh (T, B, 3H); carry as in gated_backward.
void gru_backward(const std::string& act_name, const std::string& sigma_name, const Tensor& gates,
                  const optional<Tensor>& zhs, const Tensor& hs, const Tensor& s0, const Tensor& d_out,
                  const optional<Tensor>& weight_hh, const optional<Tensor>& mask, Tensor carry, Tensor dzx,
                  const optional<Tensor>& dzh, std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("gru_backward", gates, s0, 1);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = s0.size(1), K = weight_hh ? 3 : 2;
  expect(gates, "gates", {steps, batch, K * H});
  expect(s0, "s0", {batch, H});
  expect(hs, "hs", {steps, batch, H});
  expect(d_out, "d_out", {steps, batch, H}, false);  // any strides (upstream.h)
  expect(carry, "carry", {batch, H});
  expect(dzx, "dzx", {steps, batch, K * H});
  expect.required(zhs, "zhs (with weight_hh)", static_cast<bool>(weight_hh));
  expect.required(dzh, "dzh (with weight_hh)", static_cast<bool>(weight_hh));
  expect(zhs, "zhs", {steps, batch, 3 * H});
  expect(dzh, "dzh", {steps, batch, 3 * H});
  expect(weight_hh, "weight_hh", {3 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  check_sizes("gru_backward", sizes, steps, batch);
  const Weights weights(weight_hh, mask, false);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    using T = scalar_t;
    const T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *zh = pointer<T>(zhs);
    const Upstream<T> dout(d_out);
    const T *v = weights.v_ptr<T>(), *m = weights.mask_ptr<T>();
    T *ds = carry.data_ptr<T>(), *dx = dzx.data_ptr<T>(), *dh = pointer<T>(dzh);
    // the recurrent product's gradient is dzh (3H a row), present with V
    backward_steps<T>(steps, batch, H, K, sizes, dout, ds, dh, 3, v, m, true,
                      [&](int64_t t, const Share& sh, int64_t rows, int64_t o, const T* dy) {
      const T* s_prev = t == 0 ? s0.data_ptr<T>() : h + (t - 1) * batch * H;
      gru_backward_step<T>(act, sigma, g + t * batch * K * H + K * o, zh ? zh + t * batch * 3 * H + 3 * o : nullptr,
                           s_prev + o, dy + o, ds + o, dx + t * batch * K * H + K * o,
                           dh ? dh + t * batch * 3 * H + 3 * o : nullptr, rows, H, sh.u);
    });
  });
}


// For measuring the two splits against each other (`mode_of`): 'rule', 'units' or 'rows'.
void set_split(const std::string& mode) {
  TORCH_CHECK_VALUE(mode == "rule" || mode == "units" || mode == "rows", "set_split: 'rule', 'units' or 'rows'; got ",
                    mode);
  split_mode = mode == "units" ? Split::units : mode == "rows" ? Split::rows : Split::rule;
}

// at::mm(a, b), where a is a transposed view (a weight's gradient: dz^T x over all steps) with more rows than
// b has columns, as (b^T a^T)^T from 2^28 multiply-adds: MKL, which serves where oneDNN's matmul declines (an
// AVX2 Zen 2 EPYC), ran dz^T x 1.6x slower than x^T dz for a (2048 x 64) result over K = 3200 and 1.12x for
// (1024 x 256) over 6,400, the transposed copy included; smaller products gained nothing, and at B = 1
// (K = 1000) the LSTM's forward+backward lost 2-3% (docs/BENCHMARKS.md, "The weight gradients' orientation").
constexpr int64_t WIDE_ON_THE_RIGHT_MACS = int64_t{1} << 28;

Tensor wide_on_the_right(const Tensor& a, const Tensor& b) {
  const bool tall = a.size(0) > b.size(1) && a.size(0) * a.size(1) * b.size(1) >= WIDE_ON_THE_RIGHT_MACS;
  if (tall && a.stride(0) == 1 && a.stride(1) != 1) return at::mm(b.t(), a.t()).t().contiguous();
  return at::mm(a, b);
}

// a @ b for 2-D tensors: the products of `fused` over all steps at once (Zx and the weight and input
// gradients). Floats through oneDNN's matmul where torch has it: on this AMD EPYC it took 0.5-0.9x
// the time of at::mm (MKL) for the (T*B x I) (I x 4H) products of the benchmark sizes (measured).
Tensor product(const Tensor& a, const Tensor& b) {
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "product: a (M, K) and b (K, N) ",
                    "must be 2-D with matching K; got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "product: a and b must share a dtype; got ",
                   a.scalar_type(), " and ", b.scalar_type());
  if (a.scalar_type() == at::kFloat && a.device().is_cpu() && b.device().is_cpu() && a.numel() > 0 && b.numel() > 0 &&
      &at::native::mkldnn_matmul != nullptr && at::globalContext().userEnabledMkldnn()) {
    Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
    try {
      at::native::mkldnn_matmul(a, b, out, 0.f, 1.f);
      return out;
    } catch (const c10::Error&) {  // a torch built without oneDNN, or a layout it declines
    }
  }
  return wide_on_the_right(a, b);
}

// s_t = f_t s_{t-1} + b_t along dim 1 of (B, T, H), from s0 (B, H): one pass, B*H recurrences side by side.
Tensor linear_scan_forward(const Tensor& f, const Tensor& b, const Tensor& s0) {
  const Expect expect = expect_gates("linear_scan_forward", b, s0, 0, "b");
  const int64_t batch = b.size(0), steps = b.size(1), H = b.size(2);
  expect(b, "b", {batch, steps, H});
  expect(f, "f", {batch, steps, H});
  expect(s0, "s0", {batch, H});
  Tensor s = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "linear_scan_forward", [&] {
    scan_forward<scalar_t>(f.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), s0.data_ptr<scalar_t>(),
                           s.data_ptr<scalar_t>(), batch, steps, H);
  });
  return s;
}

// The backward of linear_scan_forward, a reverse recurrence: g_t = ds_t + f_{t+1} g_{t+1};
// db_t = g_t, df_t = g_t s_{t-1}, ds0 = f_0 g_0. Returns (df, db, ds0).
std::vector<Tensor> linear_scan_backward(const Tensor& f, const Tensor& s, const Tensor& s0, const Tensor& ds) {
  const Expect expect = expect_gates("linear_scan_backward", s, s0, 0, "s");
  const int64_t batch = s.size(0), steps = s.size(1), H = s.size(2);
  expect(s, "s", {batch, steps, H});
  expect(f, "f", {batch, steps, H});
  expect(ds, "ds", {batch, steps, H});
  expect(s0, "s0", {batch, H});
  Tensor df = at::empty_like(s), db = at::empty_like(s), ds0 = at::empty_like(s0);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "linear_scan_backward", [&] {
    scan_backward<scalar_t>(f.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), s0.data_ptr<scalar_t>(),
                            ds.data_ptr<scalar_t>(), df.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(),
                            ds0.data_ptr<scalar_t>(), batch, steps, H);
  });
  return {df, db, ds0};
}

// The scan's forward. z (B, T, K*H), read only; gates (B, T, K*H) gets the gate values (copied
// from z a row at a time, so that the step finds them in cache); out (B, T, H) gets s
// (the LSTM's h), left untouched past each sequence's length; for the LSTM, cs and tcs (B, T, H)
// get c and a(c) from c0. kind: vanilla, residual, input, forget (gated), gru (minGRU) or lstm.
void cell_scan_forward(const std::string& kind_name, const std::string& act_name, const std::string& sigma_name,
                       const Tensor& z, Tensor gates, const Tensor& s0, const optional<Tensor>& c0, Tensor out,
                       const optional<Tensor>& cs, const optional<Tensor>& tcs, std::vector<int64_t> lengths) {
  const ScanKind scan = scan_kind(kind_name);
  const Kind kind = scan == ScanKind::gated ? parse_kind(kind_name) : Kind::vanilla;
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("cell_scan_forward", gates, s0, 0);
  const int64_t batch = gates.size(0), steps = gates.size(1), H = s0.size(1), KH = gates.size(2);
  const bool lstm = scan == ScanKind::lstm;
  expect(gates, "gates", {batch, steps, scan_gate_count(scan, kind) * H});
  expect(z, "z", {batch, steps, KH});
  expect(s0, "s0", {batch, H});
  expect(out, "out", {batch, steps, H});
  expect.needs(c0, "c0 (the LSTM's)", lstm);
  expect.needs(cs, "cs (the LSTM's)", lstm);
  expect.needs(tcs, "tcs (the LSTM's)", lstm);
  expect(c0, "c0", {batch, H});
  expect(cs, "cs", {batch, steps, H});
  expect(tcs, "tcs", {batch, steps, H});
  check_lengths("cell_scan_forward", lengths, steps, batch);
  const Units whole{0, H};  // one row at a time, all of it
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "cell_scan_forward", [&] {
    const scalar_t* zx = z.data_ptr<scalar_t>();
    scalar_t *g = gates.data_ptr<scalar_t>(), *s = out.data_ptr<scalar_t>();
    scalar_t *c = cs ? cs->data_ptr<scalar_t>() : nullptr, *tc = tcs ? tcs->data_ptr<scalar_t>() : nullptr;
    for (int64_t n = 0; n < batch; ++n) {
      for (int64_t t = 0, o = n * steps; t < steps_of(lengths, n, steps); ++t, ++o) {
        scalar_t* g_t = g + o * KH;
        std::copy(zx + o * KH, zx + (o + 1) * KH, g_t);
        switch (scan) {
          case ScanKind::lstm: {
            const scalar_t* c_prev = t == 0 ? c0->data_ptr<scalar_t>() + n * H : c + (o - 1) * H;
            lstm_forward_step<scalar_t>(act, sigma, g_t, nullptr, c_prev, c + o * H, tc + o * H, s + o * H, 1, H, whole);
            break;
          }
          case ScanKind::gru:
            gru_forward_step<scalar_t>(act, sigma, g_t, nullptr, nullptr, nullptr, t == 0 ? s0.data_ptr<scalar_t>() + n * H : s + (o - 1) * H,
                                       s + o * H, 1, H, whole);
            break;
          case ScanKind::gated:
            gated_forward_step<scalar_t>(kind, act, sigma, g_t, nullptr, t == 0 ? s0.data_ptr<scalar_t>() + n * H : s + (o - 1) * H,
                                         s + o * H, 1, H, whole);
            break;
        }
      }
    }
  });
}

// The scan's backward: fills dz (B, T, K*H) (untouched past each length). carry (B, H): the final
// state's (the LSTM's h) gradient on entry, the initial state's on exit; carry_c likewise for c.
// out, the forward's, only where the step reads the previous state: forget-gated and GRU.
void cell_scan_backward(const std::string& kind_name, const std::string& act_name, const std::string& sigma_name,
                        const Tensor& gates, const optional<Tensor>& out, const Tensor& s0, const optional<Tensor>& cs,
                        const optional<Tensor>& tcs, const optional<Tensor>& c0, const Tensor& d_out, Tensor carry,
                        const optional<Tensor>& carry_c, Tensor dz, std::vector<int64_t> lengths) {
  const ScanKind scan = scan_kind(kind_name);
  const Kind kind = scan == ScanKind::gated ? parse_kind(kind_name) : Kind::vanilla;
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("cell_scan_backward", gates, s0, 0);
  const int64_t batch = gates.size(0), steps = gates.size(1), H = s0.size(1), KH = gates.size(2);
  const bool lstm = scan == ScanKind::lstm;
  expect(gates, "gates", {batch, steps, scan_gate_count(scan, kind) * H});
  expect(s0, "s0", {batch, H});
  expect(d_out, "d_out", {batch, steps, H});
  expect(dz, "dz", {batch, steps, KH});
  expect(carry, "carry", {batch, H});
  // the steps that read s^{t-1} (forget-gated, GRU) read it from the forward's outputs
  expect.needs(out, "out (the forward's outputs, for the forget-gated cell and the GRU)",
               scan == ScanKind::gru || kind == Kind::forget);
  expect(out, "out", {batch, steps, H});
  expect.needs(c0, "c0 (the LSTM's)", lstm);
  expect.needs(cs, "cs (the LSTM's)", lstm);
  expect.needs(tcs, "tcs (the LSTM's)", lstm);
  expect.needs(carry_c, "carry_c (the LSTM's)", lstm);
  expect(c0, "c0", {batch, H});
  expect(cs, "cs", {batch, steps, H});
  expect(tcs, "tcs", {batch, steps, H});
  expect(carry_c, "carry_c", {batch, H});
  check_lengths("cell_scan_backward", lengths, steps, batch);
  const Units whole{0, H};  // one row at a time, all of it
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "cell_scan_backward", [&] {
    const scalar_t *g = gates.data_ptr<scalar_t>(), *s = out ? out->data_ptr<scalar_t>() : nullptr;
    const scalar_t* dy = d_out.data_ptr<scalar_t>();
    const scalar_t *c = cs ? cs->data_ptr<scalar_t>() : nullptr, *tc = tcs ? tcs->data_ptr<scalar_t>() : nullptr;
    scalar_t* d = dz.data_ptr<scalar_t>();
    for (int64_t n = 0; n < batch; ++n) {
      scalar_t* carry_n = carry.data_ptr<scalar_t>() + n * H;
      for (int64_t t = steps_of(lengths, n, steps) - 1, o = n * steps + t; t >= 0; --t, --o) {
        const scalar_t* g_t = g + o * KH;
        const scalar_t* prev = !s ? nullptr : t == 0 ? s0.data_ptr<scalar_t>() + n * H : s + (o - 1) * H;
        switch (scan) {
          case ScanKind::lstm: {
            const scalar_t* c_prev = t == 0 ? c0->data_ptr<scalar_t>() + n * H : c + (o - 1) * H;
            lstm_backward_step<scalar_t>(act, sigma, g_t, c_prev, tc + o * H, dy + o * H, carry_n,
                                         carry_c->data_ptr<scalar_t>() + n * H, d + o * KH, 1, H, whole);
            std::fill(carry_n, carry_n + H, scalar_t(0));  // no step reads h
            break;
          }
          case ScanKind::gru:
            gru_backward_step<scalar_t>(act, sigma, g_t, nullptr, prev, dy + o * H, carry_n, d + o * KH, nullptr, 1, H, whole);
            break;
          case ScanKind::gated:
            gated_backward_step<scalar_t>(kind, act, sigma, g_t, prev, dy + o * H, carry_n, d + o * KH, 1, H, whole);
            break;
        }
      }
    }
  });
}


PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  // last and optional: `bias`, where Zx came without it (the step adds it); `inputs` (T, B, F) and
  // `weight` (K*H, F), where the step computes Zx itself (the gates are then written, not read);
  // `inputs_copy` (T, B, F), where the inputs are a strided view: filled with them, time-major (`Inputs`)
  m.def("lstm_forward", &lstm_forward, "fused LSTM loop, forward", py::arg("act"), py::arg("sigma"), py::arg("gates"),
        py::arg("weight_hh"), py::arg("mask"), py::arg("h0"), py::arg("c0"), py::arg("hs"), py::arg("cs"),
        py::arg("tcs"), py::arg("sizes"), py::arg("bias") = py::none(), py::arg("inputs") = py::none(),
        py::arg("weight") = py::none(), py::arg("inputs_copy") = py::none());
  m.def("lstm_backward", &lstm_backward, "fused LSTM loop, backward");
  m.def("gated_forward", &gated_forward, "fused loop of the gated ladder cells, forward", py::arg("kind"),
        py::arg("act"), py::arg("sigma"), py::arg("gates"), py::arg("weight_hh"), py::arg("mask"), py::arg("s0"),
        py::arg("states"), py::arg("sizes"), py::arg("bias") = py::none(), py::arg("inputs") = py::none(),
        py::arg("weight") = py::none(), py::arg("inputs_copy") = py::none());
  m.def("gated_backward", &gated_backward, "fused loop of the gated ladder cells, backward");
  m.def("gru_forward", &gru_forward, "fused GRU loop, forward", py::arg("act"), py::arg("sigma"), py::arg("gates"),
        py::arg("weight_hh"), py::arg("bias_hh"), py::arg("mask"), py::arg("s0"), py::arg("hs"), py::arg("zhs"),
        py::arg("sizes"), py::arg("bias") = py::none(), py::arg("inputs") = py::none(),
        py::arg("weight") = py::none(), py::arg("inputs_copy") = py::none());
  m.def("gru_backward", &gru_backward, "fused GRU loop, backward");
  m.def("set_panels", [](bool on) { panels_on = on; }, "pack step weights in panels (default True; for measuring)");
  m.def("set_split", &set_split, "how steps split over threads: 'rule' (default), 'units' or 'rows' (for measuring)");
  m.def("set_own_barrier", [](bool own) { own_barrier = own; },
        "whether the loops' steps are separated by team.h's barrier or OpenMP's (default True; for measuring)");
  m.def("set_apart", [](bool apart) { steps_apart = apart; },
        "whether loops split by rows without lengths skip the sync between steps (default True; for measuring)");
  m.def("set_least", [](int64_t forward, int64_t backward) { FORWARD_PARALLEL_MACS = forward, PARALLEL_MACS = backward; },
        "the multiply-adds from which a forward / backward step is split over threads (for measuring)");
  m.def("least", [] { return std::pair<int64_t, int64_t>{FORWARD_PARALLEL_MACS, PARALLEL_MACS}; },
        "the multiply-adds from which a forward / backward step is split over threads");
  m.def("set_fault", [](std::optional<int64_t> step) { fault_armed = step.has_value(), fault_step = step.value_or(0); },
        "for testing: step `step` of the next loops throws in the last thread of their team (None: never)");
  m.def("in_parallel_region", [](const py::function& call) {
    // for testing the loops' serial fallback: call() on the first thread of a parallel region of torch's threads
    std::exception_ptr error;
#ifdef _OPENMP
#pragma omp parallel
    {
      if (omp_get_thread_num() == 0) try { call(); } catch (...) { error = std::current_exception(); }
    }
#else
    call();
#endif
    if (error) std::rethrow_exception(error);
  }, "for testing: call() on the first thread of an OpenMP parallel region of torch's threads");
  m.def("product", &product, "a @ b (2-D), through oneDNN for floats where torch has it");
  m.def("linear_scan_forward", &linear_scan_forward, "s_t = f_t s_{t-1} + b_t over dim 1");
  m.def("linear_scan_backward", &linear_scan_backward, "the backward of linear_scan_forward");
  m.def("cell_scan_forward", &cell_scan_forward, "scan of a ladder cell without a state read, forward");
  m.def("cell_scan_backward", &cell_scan_backward, "scan of a ladder cell without a state read, backward");
}
