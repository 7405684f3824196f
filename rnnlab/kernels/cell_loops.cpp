// The time loops of fused_cells.py in C++: the peephole, layer-norm and projected LSTMs. Same buffers,
// same equations, same results as the Python loops there (to rounding); everything elementwise is a
// plain loop over the step's rows. The per-step products are oneDNN's brgemm on raw pointers (no ATen
// dispatch per step), the forwards' split over threads by batch rows. Built at first use by compiled.py
// (module rnnlab_cell_loops); rnnlab works without it.
//
//   peephole    i = s(z_i + p_i c'), f = s(z_f + p_f c'), r = a(z_r), c = f c' + i r,
//               o = s(z_o + p_o c), h = o a(c)
//   layernorm   z = Zx + g_h xhat(V h'); i, f, o, r as the LSTM; c = f c' + i r;
//               h = o a(g_c xhat(c) + b_c)          xhat(v) = (v - mean v) / sqrt(var v + eps), per row
//   projected   z = Zx + V h'; m = o a(c); h = W_hr m   (h: P units)
// where Zx (all steps, one GEMM) is in the gate buffer on entry and the gate values on exit, or (peephole,
// projected) each step computes x_t U^T itself. Without grad, the per-step buffers are rings of one step.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include "activations.h"
#include "checks.h"
#include "lstm.h"
#include "products.h"
#include "team.h"
#include "upstream.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

using at::Tensor;
using c10::optional;

namespace {

int64_t rows_at(const std::vector<int64_t>& sizes, int64_t t, int64_t batch) {
  return sizes.empty() ? batch : sizes[t];  // sequences still running at step t (sorted by length)
}

// --- entry checks: every tensor read through a pointer is checked before any memory is touched ---

constexpr int64_t ANY = -1;

struct Expect {
  const char* where;
  at::ScalarType dtype;

  void operator()(const Tensor& t, const char* name, std::vector<int64_t> shape, bool contiguous = true) const {
    TORCH_CHECK_VALUE(t.defined(), where, ": ", name, " is missing");
    TORCH_CHECK_VALUE(t.device().is_cpu(), where, ": ", name, " must be on the CPU; got ", t.device());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, where, ": ", name, " must be ", dtype, " like the gates; got ",
                     t.scalar_type());
    bool fits = t.dim() == static_cast<int64_t>(shape.size());
    for (size_t d = 0; fits && d < shape.size(); ++d) fits = shape[d] == ANY || t.size(d) == shape[d];
    TORCH_CHECK_VALUE(fits, where, ": ", name, " must be ", at::IntArrayRef(shape), "; got ", t.sizes());
    TORCH_CHECK_VALUE(!contiguous || t.is_contiguous(), where, ": ", name, " must be contiguous");
  }
  void operator()(const optional<Tensor>& t, const char* name, std::vector<int64_t> shape, bool contiguous = true) const {
    if (t) (*this)(*t, name, std::move(shape), contiguous);
  }
};

Expect expect_gates(const char* where, const Tensor& gates) {
  TORCH_CHECK_VALUE(gates.defined() && gates.dim() == 3, where, ": gates must be 3-D");
  TORCH_CHECK_VALUE(gates.device().is_cpu(), where, ": gates must be on the CPU; got ", gates.device());
  TORCH_CHECK_TYPE(gates.scalar_type() == at::kFloat || gates.scalar_type() == at::kDouble, where,
                   ": gates must be float32 or float64; got ", gates.scalar_type());
  TORCH_CHECK_VALUE(gates.is_contiguous(), where, ": gates must be contiguous");
  return Expect{where, gates.scalar_type()};
}

// The lanes of a vector summed: float's by torch's shuffle tree (three adds for 8 lanes, four for 16, where a loop
// over them waits out every lane), double's (the tests' dtype) in a loop
template <typename T>
T lanes_sum(const at::vec::Vectorized<T>& v) {
  using V = at::vec::Vectorized<T>;
  if constexpr (std::is_same_v<T, float>) {
    return at::vec::vec_reduce_all<T>([](const V& a, const V& b) { return a + b; }, v);
  } else {
    T lanes[V::size()];
    v.store(lanes);
    T sum = 0;
    for (int64_t j = 0; j < V::size(); ++j) sum += lanes[j];
    return sum;
  }
}

// The sums of the two parts of term(k) = {a, b} (vectors at k, a vector's first index) over a row of n values
// (scalar(k) for the last few), in one pass: four accumulators each, so that the adds overlap. One
// accumulator (an `omp simd` reduction's) waits out each add's latency, and a pass per sum waits for the
// first sum before the second starts: the layer norms' sums were most of their cost (docs/BENCHMARKS.md,
// "The layer norms' sums").
template <typename T, typename Term, typename Scalar>
std::pair<T, T> row_sums(int64_t n, const Term& term, const Scalar& scalar) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t W = V::size();
  V a[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))}, b[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
  int64_t k = 0;
  for (; k + 4 * W <= n; k += 4 * W) {
    for (int j = 0; j < 4; ++j) {
      const auto [x, y] = term(k + j * W);
      a[j] = a[j] + x;
      b[j] = b[j] + y;
    }
  }
  for (; k + W <= n; k += W) {
    const auto [x, y] = term(k);
    a[0] = a[0] + x;
    b[0] = b[0] + y;
  }
  T sum_a = lanes_sum<T>((a[0] + a[1]) + (a[2] + a[3])), sum_b = lanes_sum<T>((b[0] + b[1]) + (b[2] + b[3]));
  for (; k < n; ++k) {
    const auto [x, y] = scalar(k);
    sum_a += x;
    sum_b += y;
  }
  return {sum_a, sum_b};
}

// A row's mean and 1 / sqrt(var + eps), in one pass: var = E[d^2] - E[d]^2 for d = v - v[0]. Shifted by one
// of the row's own values, E[d]^2 stays within a few var (unshifted, E[v^2] - mean^2 of a row far from 0
// would cancel all of var's bits), so the difference loses a few bits at most.
template <typename T>
std::pair<T, T> moments(const T* __restrict__ v, int64_t n, double eps) {
  using V = at::vec::Vectorized<T>;
  const T shift = v[0];
  const V s(shift);
  const auto [sum, squares] = row_sums<T>(
      n, [&](int64_t k) { const V d = V::loadu(v + k) - s; return std::pair{d, d * d}; },
      [&](int64_t k) { const T d = v[k] - shift; return std::pair{d, d * d}; });
  const T mean_d = sum / T(n), var = std::max(squares / T(n) - mean_d * mean_d, T(0));
  return {shift + mean_d, T(1) / std::sqrt(var + T(eps))};
}

// out = rstd * (d - mean(d) - xhat * mean(d xhat)): dv from d(xhat), per row of n values
template <typename T>
void normalise_backward(const T* __restrict__ d, const T* __restrict__ xhat, T rstd, T* __restrict__ out, int64_t n) {
  using V = at::vec::Vectorized<T>;
  const auto [sum_d, sum_dx] = row_sums<T>(
      n, [&](int64_t k) { const V dk = V::loadu(d + k); return std::pair{dk, dk * V::loadu(xhat + k)}; },
      [&](int64_t k) { return std::pair{d[k], d[k] * xhat[k]}; });
  const T mean_d = sum_d / T(n), mean_dx = sum_dx / T(n);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = rstd * (d[k] - mean_d - xhat[k] * mean_dx);
}

// float or double (expect_gates checked), as a generic lambda: a `#pragma omp simd` may not stand
// inside a macro's argument, as it would in AT_DISPATCH_FLOATING_TYPES
template <typename F>
void dispatch(at::ScalarType type, F&& body) {
  if (type == at::kDouble) {
    body(double{});
  } else {
    body(float{});
  }
}

// --- the forward steps' products, on raw pointers, split over threads by batch rows -------------------
// The forwards below are loops.cpp's scheme: each step's products on raw pointers through oneDNN's
// batch-reduce GEMM (`matmul`, products.h, shared with loops.cpp), the bias added in the step's pass over
// its gates, and buffers that are rings of one step (two for c) where nothing is saved. Each loop is one
// parallel region of a team of threads (`over_steps`, team.h: a sync between steps), each thread taking
// its block of every step's batch rows (`over_rows`): a row's layer norms and its projection need the
// whole row, so these cells are split by rows, not by units.

// A step whose products are smaller than this (multiply-adds) runs on one thread; a forward step of one row
// from FORWARD_PARALLEL_MACS is split by the columns of its product (as loops.cpp's: there by units). Both
// for measuring through `set_least`.
int64_t PARALLEL_MACS = 1 << 18, FORWARD_PARALLEL_MACS = 1 << 15;

// How a step of `rows` rows is split over a team of `threads`: by blocks of rows where there are two or
// more and its products earn it; a forward step of one row (B = 1) by blocks of its product's columns,
// its elementwise work then on the first thread (a row's norms and projection need the whole row).
enum class Split { none, rows, columns };

Split split_of(int64_t threads, int64_t rows, int64_t macs, bool forward) {
  if (threads > 1 && rows >= 2 && macs >= PARALLEL_MACS) return Split::rows;
  if (threads > 1 && forward && rows == 1 && macs >= FORWARD_PARALLEL_MACS) return Split::columns;
  return Split::none;
}

// Every loop here: step(t, team) for t forward (or backward) in time on every thread of one team (team.h:
// one parallel region for the whole loop, a sync between steps), or on one thread where even the
// largest step (`largest` multiply-adds, of `batch` rows) is not split. Where every step has all rows
// (`same_rows`: no lengths) and is split by rows, each thread keeps its block of rows at every step:
// the threads run their steps apart (team.h: `steps_apart`).
template <typename Step>
void over_steps(int64_t steps, bool backward, int64_t batch, int64_t largest, bool same_rows, const Step& step) {
  in_team(split_of(at::get_num_threads(), batch, largest, !backward) != Split::none, [&](Team& team) {
    const bool apart = same_rows && steps_apart && split_of(team.size, batch, largest, !backward) == Split::rows;
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = backward ? steps - 1 - i : i;
      team.run([&] { team.fault_at(t); });
      step(t, team);
      if (!apart) team.sync();
    }
  });
}

// body(r0, r1) for this thread's block of the step's rows [0, rows) (team.h: Team::block) where the step
// is split by rows, else for all of them on the team's first thread.
template <typename Body>
void over_rows(Team& team, Split split, int64_t rows, const Body& body) {
  std::pair<int64_t, int64_t> mine{0, team.index == 0 ? rows : 0};
  if (split == Split::rows) mine = team.block(rows);
  if (mine.second > mine.first) team.run([&] { body(mine.first, mine.second); });
}

// Every forward here: step(t, n, team, split) for step t of n rows, split as its products of
// `macs_per_row` multiply-adds a row earn it.
template <typename Step>
void forward_steps(int64_t steps, int64_t batch, const std::vector<int64_t>& sizes, int64_t macs_per_row,
                   const Step& step) {
  over_steps(steps, false, batch, batch * macs_per_row, sizes.empty(), [&](int64_t t, Team& team) {
    const int64_t n = rows_at(sizes, t, batch);
    step(t, n, team, split_of(team.size, n, n * macs_per_row, true));
  });
}

// What a forward step multiplies: x_t U^T where the step computes its input part itself (`inputs`
// and `weight` given: no (T, B, 4H) buffer of Zx is written and read back), and the state the gates
// read, masked, times V^T. Contiguous transposed copies of the weights, made once per call.
struct StepProduct {
  Tensor ut, vt, mask, scratch, ut_panels, vt_panels;
  const Tensor* inputs = nullptr;
  int64_t F = 0, R = 0, N = 0;  // input width, read width, gate width
  StepProduct(const optional<Tensor>& inputs_in, const optional<Tensor>& weight, const optional<Tensor>& weight_hh,
              const optional<Tensor>& mask_in, int64_t batch, int64_t read_width, int64_t gate_width)
      : R(read_width), N(gate_width) {
    if (inputs_in)
      inputs = &*inputs_in, ut = transposed(*weight), F = inputs_in->size(2), ut_panels = panels_of(ut);
    if (weight_hh) vt = transposed(*weight_hh), vt_panels = panels_of(vt);
    if (mask_in && weight_hh) mask = mask_in->contiguous(), scratch = at::empty({batch, R}, mask.options());
  }
  int64_t depth() const { return F + (vt.defined() ? R : 0); }
  // out[r0:r1] = (Zx_t, already in out, unless the step computes it) + (s_prev * mask)[r0:r1] V^T
  template <typename T>
  void operator()(int64_t t, int64_t batch, int64_t r0, int64_t r1, const T* s_prev, T* out, bool zx_in_out) const {
    const int64_t rows = r1 - r0;
    if (inputs)
      multiply<T>(rows, N, F, inputs->data_ptr<T>() + (t * batch + r0) * F, F, ut.data_ptr<T>(), panel_ptr<T>(ut_panels),
                  out + r0 * N, N, false);
    if (!vt.defined()) return;
    const T* read = s_prev + r0 * R;
    if (mask.defined()) {
      T* __restrict__ s = scratch.data_ptr<T>() + r0 * R;
      const T* __restrict__ m = mask.data_ptr<T>() + r0 * R;
      for (int64_t k = 0; k < rows * R; ++k) s[k] = read[k] * m[k];
      read = s;
    }
    multiply<T>(rows, N, R, read, R, vt.data_ptr<T>(), panel_ptr<T>(vt_panels), out + r0 * N, N, zx_in_out || inputs);
  }
  // The same for all n rows, each thread of the team its block of the N columns (Split::columns); the
  // caller syncs before reading `out`.
  template <typename T>
  void columns(Team& team, int64_t t, int64_t batch, int64_t n, const T* s_prev, T* out, bool zx_in_out) const {
    const T* read = s_prev;
    if (vt.defined() && mask.defined()) {  // masked once, by the first thread, for every thread's product
      T* s = scratch.data_ptr<T>();
      if (team.index == 0) team.run([&] {
        for (int64_t k = 0; k < n * R; ++k) s[k] = s_prev[k] * mask.data_ptr<T>()[k];
      });
      team.sync();
      read = s;
    }
    const auto [c0, c1] = team.block(N, 16);
    if (c1 <= c0) return;
    team.run([&] {
      if (inputs)
        matmul<T>(n, c1 - c0, F, inputs->data_ptr<T>() + t * batch * F, F, ut.data_ptr<T>() + c0, N, out + c0, N,
                  false);
      if (vt.defined())
        matmul<T>(n, c1 - c0, R, read, R, vt.data_ptr<T>() + c0, N, out + c0, N, zx_in_out || inputs);
    });
  }
};

template <typename T>
const T* maybe(const optional<Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// steps from hs (T, B, .); gates (T, or a ring of any length where the step computes Zx from `inputs`)
void expect_forward(const Expect& expect, const Tensor& gates, const optional<Tensor>& bias,
                    const optional<Tensor>& inputs, const optional<Tensor>& weight, int64_t steps, int64_t batch,
                    int64_t H) {
  TORCH_CHECK_VALUE(static_cast<bool>(inputs) == static_cast<bool>(weight), expect.where,
                    ": inputs and weight come together");
  expect(gates, "gates", {inputs ? -1 : steps, batch, 4 * H});
  TORCH_CHECK_VALUE(!inputs || gates.size(0) >= 1, expect.where, ": gates must hold at least one step");
  expect(bias, "bias", {4 * H});
  expect(inputs, "inputs", {steps, batch, -1});
  if (inputs) expect(*weight, "weight", {4 * H, inputs->size(2)}, false);
}

// a ring buffer (R >= min_ring steps of `width`), or T steps
void expect_ring(const Expect& expect, const Tensor& t, const char* name, int64_t steps, int64_t batch, int64_t width,
                 int64_t min_ring = 1) {
  TORCH_CHECK_VALUE(t.defined() && t.dim() >= 2 && t.size(0) >= min_ring && t.size(0) <= steps, expect.where, ": ",
                    name, " must hold between ", min_ring, " and ", steps, " steps");
  if (width < 0) expect(t, name, {t.size(0), batch}); else expect(t, name, {t.size(0), batch, width});
}

// carry[:n] = (dz_t[:n] V) * mask on raw pointers (V (KH x R) contiguous, or null: zeros): the gradient
// reaching the state the gates read (these LSTMs have no direct term). No ATen dispatch per step.
template <typename T>
void carry_back(T* carry, const T* dz_t, const T* v, const T* mask, int64_t n, int64_t KH, int64_t R) {
  if (n == 0) return;
  if (!v) return std::fill(carry, carry + n * R, T(0));
  matmul<T>(n, R, KH, dz_t, KH, v, R, carry, R, false);
  if (mask)
    for (int64_t k = 0; k < n * R; ++k) carry[k] *= mask[k];
}

// V and the mask, contiguous, for carry_back
struct Backward {
  Tensor v, mask;
  Backward(const optional<Tensor>& weight_hh, const optional<Tensor>& mask_in) {
    if (weight_hh) v = weight_hh->contiguous();
    if (mask_in) mask = mask_in->contiguous();
  }
  template <typename T> const T* v_ptr() const { return v.defined() ? v.data_ptr<T>() : nullptr; }
  // the mask from row r0 (rows R wide), or null
  template <typename T> const T* mask_at(int64_t r0, int64_t R) const {
    return mask.defined() ? mask.data_ptr<T>() + r0 * R : nullptr;
  }
};

// A forward step t of n rows, split `split`: its products (each of `into`'s: product, where it writes,
// or a null product: none), then rows(r0, r1), the elementwise work of each thread's block of rows. Split
// by rows (or not at all), each thread multiplies its block's rows before its work on them; by columns
// (one row), every thread its block of the products' columns, a sync, then the row on the first thread.
template <typename T, typename Rows>
void products_then_rows(Team& team, Split split, int64_t t, int64_t batch, int64_t n, const T* s_prev,
                        std::initializer_list<std::pair<const StepProduct*, T*>> into, bool zx_in_out,
                        const Rows& rows) {
  if (split == Split::columns) {
    for (const auto& [product, out] : into)
      if (product) product->columns(team, t, batch, n, s_prev, out, zx_in_out);
    team.sync();
  }
  over_rows(team, split, n, [&](int64_t r0, int64_t r1) {
    if (split != Split::columns)
      for (const auto& [product, out] : into)
        if (product) (*product)(t, batch, r0, r1, s_prev, out, zx_in_out);
    rows(r0, r1);
  });
}

// Every backward here, t from T-1 down to 0: on each thread's block [r0, r1) of the n_t rows still running,
// rows(t, r0, r1, the thread's index), their elementwise work, then the gradient they pass to the state the
// gates read, carry (rows R wide) = (product_dz_t V) * mask (`carry_back`; product_dz: the gradient of
// the recurrent product's output, 4H a row).
template <typename T, typename Rows>
void backward_steps(int64_t steps, int64_t batch, const std::vector<int64_t>& sizes, int64_t macs_per_row,
                    const Backward& back, const T* product_dz, T* carry, int64_t H, int64_t R, const Rows& rows) {
  over_steps(steps, true, batch, batch * macs_per_row, sizes.empty(), [&](int64_t t, Team& team) {
    const int64_t n = rows_at(sizes, t, batch);
    if (n == 0) return;
    over_rows(team, split_of(team.size, n, n * macs_per_row, false), n, [&](int64_t r0, int64_t r1) {  // each row's own
      rows(t, r0, r1, team.index);
      carry_back<T>(carry + r0 * R, product_dz + (t * batch + r0) * 4 * H, back.v_ptr<T>(), back.mask_at<T>(r0, R),
                    r1 - r0, 4 * H, R);
    });
  });
}

}  // namespace

// --- peephole LSTM ---------------------------------------------------------------------------------
// gates: Zx (T, B, 4H) on entry (its bias in `bias` or already in it), the gate values on exit; or,
// with `inputs` (T, B, F) and `weight` (4H, F), written only: each step computes x_t U^T itself, and
// the gates may be a ring of one step. cs: T steps or a ring of >= 2; tcs: T steps or a ring.

void peephole_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                      const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& peep,
                      const Tensor& h0, const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, std::vector<int64_t> sizes,
                      const optional<Tensor>& bias, const optional<Tensor>& inputs, const optional<Tensor>& weight) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("peephole_forward", gates);
  const int64_t batch = gates.size(1), H = c0.size(-1);
  TORCH_CHECK_VALUE(hs.dim() == 3, "peephole_forward: hs must be (T, B, H)");
  const int64_t steps = hs.size(0);
  expect_forward(expect, gates, bias, inputs, weight, steps, batch, H);
  expect(peep, "peep", {3, H});
  expect(h0, "h0", {batch, H}, false);
  expect(c0, "c0", {batch, H});
  expect(hs, "hs", {steps, batch, H});
  expect_ring(expect, cs, "cs", steps, batch, H, std::min<int64_t>(steps, 2));
  expect_ring(expect, tcs, "tcs", steps, batch, H);
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  check_sizes("peephole_forward", sizes, steps, batch);
  const StepProduct product(inputs, weight, weight_hh, mask, batch, H, 4 * H);
  const Tensor h0c = h0.contiguous();
  const int64_t step = batch * H, ring_g = gates.size(0), ring_c = cs.size(0), ring_t = tcs.size(0);
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    const T *p_i = peep.data_ptr<T>(), *p_f = p_i + H, *p_o = p_i + 2 * H, *bi = maybe<T>(bias);
    forward_steps(steps, batch, sizes, 4 * H * product.depth(), [&](int64_t t, int64_t n, Team& team, Split split) {
      const T* h_prev = t == 0 ? h0c.data_ptr<T>() : h + (t - 1) * step;
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + ((t - 1) % ring_c) * step;
      T *g_t = g + (t % ring_g) * 4 * step, *c_t = c + (t % ring_c) * step, *tc_t = tc + (t % ring_t) * step;
      products_then_rows<T>(team, split, t, batch, n, h_prev, {{&product, g_t}}, true, [&](int64_t r0, int64_t r1) {
        for (int64_t b = r0; b < r1; ++b) {
          T* __restrict__ gb = g_t + b * 4 * H;
          const T* __restrict__ cp = c_prev + b * H;
          T *__restrict__ cn = c_t + b * H, *__restrict__ tn = tc_t + b * H, *__restrict__ hn = h + t * step + b * H;
          if (bi) add_bias(gb, bi, 4 * H);
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) {
            gb[k] += p_i[k] * cp[k];
            gb[H + k] += p_f[k] * cp[k];
          }
          activate(sigma, gb, 2 * H);
          activate(act, gb + 2 * H, H);
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) {
            cn[k] = tn[k] = gb[H + k] * cp[k] + gb[k] * gb[2 * H + k];
            gb[3 * H + k] += p_o[k] * cn[k];
          }
          activate(sigma, gb + 3 * H, H);
          activate(act, tn, H);
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) hn[k] = gb[3 * H + k] * tn[k];
        }
      });
    });
  });
}

// Fills dz (T, B, 4H); carry_h, carry_c: the final state's gradients on entry, the initial state's on exit.
// d_peep (3, H), where given: the peepholes' gradients, sum over steps and rows of dz_i c', dz_f c', dz_o c,
// summed per thread as the loop goes (in double) while the rows are in cache: after the loop they cost a
// shifted copy of c and three (T, B, H) products, allocated and reduced outside the loop's team.
void peephole_backward(const std::string& act_name, const std::string& sigma_name, const Tensor& gates,
                       const Tensor& cs, const Tensor& tcs, const Tensor& c0, const Tensor& d_out,
                       const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& peep,
                       Tensor carry_h, Tensor carry_c, Tensor dz, std::vector<int64_t> sizes,
                       const optional<Tensor>& d_peep) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("peephole_backward", gates);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(-1);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(dz, "dz", {steps, batch, 4 * H});
  for (auto [t, name] : {std::pair{&cs, "cs"}, {&tcs, "tcs"}}) expect(*t, name, {steps, batch, H});
  expect(d_out, "d_out", {steps, batch, H}, false);  // any strides (upstream.h)
  expect(c0, "c0", {batch, H});
  expect(carry_h, "carry_h", {batch, H});
  expect(carry_c, "carry_c", {batch, H});
  expect(peep, "peep", {3, H});
  expect(d_peep, "d_peep", {3, H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  check_sizes("peephole_backward", sizes, steps, batch);
  const int64_t step = batch * H;
  const Backward back(weight_hh, mask);
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    const Upstream<T> dout(d_out);
    const T *p_i = peep.data_ptr<T>(), *p_f = p_i + H, *p_o = p_i + 2 * H;
    T *ch = carry_h.data_ptr<T>(), *cc = carry_c.data_ptr<T>(), *d = dz.data_ptr<T>();
    const int64_t threads = at::get_num_threads();
    std::vector<double> sums(d_peep ? threads * 3 * H : 0);  // per thread: i, f, o
    backward_steps<T>(steps, batch, sizes, 4 * H * H, back, d, ch, H, H,
                      [&](int64_t t, int64_t r0, int64_t r1, int64_t me) {
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      const T* dy_t = dout.step(t, r0, r1);
      double* sum_i = d_peep ? sums.data() + me * 3 * H : nullptr;
      for (int64_t b = r0; b < r1; ++b) {
        const T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        T* __restrict__ db = d + (t * batch + b) * 4 * H;
        const T *__restrict__ cp = c_prev + b * H, *__restrict__ tb = tc + t * step + b * H;
        const T* __restrict__ dy = dy_t + b * H;
        T *__restrict__ chb = ch + b * H, *__restrict__ ccb = cc + b * H;
        lstm_output_backward(act, sigma, gb, tb, db, db + 2 * H, H, H, [&](int64_t k) { return chb[k] + dy[k]; });
        lstm_cell_backward(act, sigma, gb, cp, ccb, db, H, H,
                           [&](int64_t k) { return ccb[k] + db[2 * H + k] + db[3 * H + k] * p_o[k]; });
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) ccb[k] += db[k] * p_i[k] + db[H + k] * p_f[k];
        if (sum_i) {
          double *__restrict__ si = sum_i, *__restrict__ sf = sum_i + H, *__restrict__ so = sum_i + 2 * H;
          const T* __restrict__ cb = c + t * step + b * H;
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) {
            si[k] += double(db[k]) * double(cp[k]);
            sf[k] += double(db[H + k]) * double(cp[k]);
            so[k] += double(db[3 * H + k]) * double(cb[k]);
          }
        }
      }
    });
    if (d_peep) {
      for (int64_t me = 1; me < threads; ++me)
        for (int64_t k = 0; k < 3 * H; ++k) sums[k] += sums[me * 3 * H + k];
      T* out = d_peep->data_ptr<T>();
      for (int64_t k = 0; k < 3 * H; ++k) out[k] = T(sums[k]);
    }
  });
}

// --- projected LSTM --------------------------------------------------------------------------------

void projected_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                       const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& weight_hr,
                       const Tensor& h0, const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, Tensor ms,
                       std::vector<int64_t> sizes, const optional<Tensor>& bias, const optional<Tensor>& inputs,
                       const optional<Tensor>& weight) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("projected_forward", gates);
  const int64_t batch = gates.size(1), H = c0.size(-1), P = h0.size(-1);
  TORCH_CHECK_VALUE(hs.dim() == 3, "projected_forward: hs must be (T, B, P)");
  const int64_t steps = hs.size(0);
  expect_forward(expect, gates, bias, inputs, weight, steps, batch, H);
  expect(weight_hr, "weight_hr", {P, H}, false);
  expect(h0, "h0", {batch, P}, false);
  expect(c0, "c0", {batch, H});
  expect(hs, "hs", {steps, batch, P});
  expect_ring(expect, cs, "cs", steps, batch, H, std::min<int64_t>(steps, 2));
  expect_ring(expect, tcs, "tcs", steps, batch, H);
  expect_ring(expect, ms, "ms", steps, batch, H);
  expect(weight_hh, "weight_hh", {4 * H, P}, false);
  expect(mask, "mask", {batch, P}, false);
  check_sizes("projected_forward", sizes, steps, batch);
  const StepProduct product(inputs, weight, weight_hh, mask, batch, P, 4 * H);
  const Tensor rt = transposed(weight_hr), h0c = h0.contiguous();  // W_hr^T (H, P)
  const int64_t step = batch * H, ring_g = gates.size(0), ring_c = cs.size(0), ring_t = tcs.size(0);
  const int64_t ring_m = ms.size(0);
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    T* m = ms.data_ptr<T>();
    const T *bi = maybe<T>(bias), *r = rt.data_ptr<T>();
    forward_steps(steps, batch, sizes, H * (4 * product.depth() + P), [&](int64_t t, int64_t n, Team& team, Split split) {
      const T* h_prev = t == 0 ? h0c.data_ptr<T>() : h + (t - 1) * batch * P;
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + ((t - 1) % ring_c) * step;
      T *g_t = g + (t % ring_g) * 4 * step, *c_t = c + (t % ring_c) * step, *tc_t = tc + (t % ring_t) * step;
      T *m_t = m + (t % ring_m) * step, *h_t = h + t * batch * P;
      products_then_rows<T>(team, split, t, batch, n, h_prev, {{&product, g_t}}, true, [&](int64_t r0, int64_t r1) {
        const int64_t at = r0 * H;  // the LSTM's step, whose h is m = o a(c) here
        lstm_forward_step<T>(act, sigma, g_t + 4 * at, bi, c_prev + at, c_t + at, tc_t + at, m_t + at, r1 - r0, H,
                             Units{0, H});
        matmul<T>(r1 - r0, P, H, m_t + r0 * H, H, r, P, h_t + r0 * P, P, false);  // h = m W_hr^T
      });
    });
  });
}

// Fills dz (T, B, 4H) and dh_all (T, B, P: dL/dh^t, for dW_hr); carries as peephole_backward.
void projected_backward(const std::string& act_name, const std::string& sigma_name, const Tensor& gates,
                        const Tensor& cs, const Tensor& tcs, const Tensor& c0, const Tensor& d_out,
                        const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& weight_hr,
                        Tensor carry_h, Tensor carry_c, Tensor dz, Tensor dh_all, std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("projected_backward", gates);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(-1), P = weight_hr.size(0);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(dz, "dz", {steps, batch, 4 * H});
  for (auto [t, name] : {std::pair{&cs, "cs"}, {&tcs, "tcs"}}) expect(*t, name, {steps, batch, H});
  expect(d_out, "d_out", {steps, batch, P}, false);  // any strides (upstream.h)
  expect(dh_all, "dh_all", {steps, batch, P});
  expect(c0, "c0", {batch, H});
  expect(carry_h, "carry_h", {batch, P});
  expect(carry_c, "carry_c", {batch, H});
  expect(weight_hr, "weight_hr", {P, H}, false);
  expect(weight_hh, "weight_hh", {4 * H, P}, false);
  expect(mask, "mask", {batch, P}, false);
  check_sizes("projected_backward", sizes, steps, batch);
  const int64_t step = batch * H;
  Tensor dm = at::empty({batch, H}, gates.options());
  const Tensor whr = weight_hr.contiguous();
  const Backward back(weight_hh, mask);
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>(), *w = whr.data_ptr<T>();
    T *cc = carry_c.data_ptr<T>(), *d = dz.data_ptr<T>(), *dmp = dm.data_ptr<T>(), *ch = carry_h.data_ptr<T>();
    const Upstream<T> dout(d_out);
    backward_steps<T>(steps, batch, sizes, 4 * H * P, back, d, ch, H, P,
                      [&](int64_t t, int64_t r0, int64_t r1, int64_t) {
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      T* __restrict__ dh = dh_all.data_ptr<T>() + (t * batch + r0) * P;
      const T* __restrict__ dy = dout.step(t, r0, r1) + r0 * P;
      const T* __restrict__ chr = ch + r0 * P;
#pragma omp simd
      for (int64_t k = 0; k < (r1 - r0) * P; ++k) dh[k] = chr[k] + dy[k];
      matmul<T>(r1 - r0, H, P, dh, P, w, H, dmp + r0 * H, H, false);  // dL/dm = dh W_hr
      for (int64_t b = r0; b < r1; ++b) {
        const T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        T* __restrict__ db = d + (t * batch + b) * 4 * H;
        const T *__restrict__ cp = c_prev + b * H, *__restrict__ tb = tc + t * step + b * H;
        const T* __restrict__ dmb = dmp + b * H;
        T* __restrict__ ccb = cc + b * H;
        lstm_output_backward(act, sigma, gb, tb, db, db + 2 * H, H, H, [&](int64_t k) { return dmb[k]; });
        lstm_cell_backward(act, sigma, gb, cp, ccb, db, H, H, [&](int64_t k) { return ccb[k] + db[2 * H + k]; });
      }
    });
  });
}

// --- layer-norm LSTM ---------------------------------------------------------------------------------
// xh (T, B, 4H), rh (T, B): xhat and rstd of V h' (absent without a state read); xc, rc: of c.

void layernorm_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                       const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const optional<Tensor>& gain_h,
                       const Tensor& gain_c, const Tensor& shift_c, double eps_h, double eps_c, const Tensor& h0,
                       const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, Tensor xc, Tensor rc,
                       const optional<Tensor>& xh, const optional<Tensor>& rh, std::vector<int64_t> sizes,
                       const optional<Tensor>& inputs, const optional<Tensor>& weight,
                       const optional<Tensor>& gain_x, const optional<Tensor>& shift_x, double eps_x) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("layernorm_forward", gates);
  const int64_t batch = gates.size(1), H = c0.size(-1);
  TORCH_CHECK_VALUE(hs.dim() == 3, "layernorm_forward: hs must be (T, B, H)");
  const int64_t steps = hs.size(0);
  expect_forward(expect, gates, optional<Tensor>(), inputs, weight, steps, batch, H);
  TORCH_CHECK_VALUE(static_cast<bool>(gain_x) == static_cast<bool>(shift_x) && (!inputs || gain_x),
                    "layernorm_forward: gain_x and shift_x come together, and with inputs");
  expect(gain_x, "gain_x", {4 * H});
  expect(shift_x, "shift_x", {4 * H});
  expect(h0, "h0", {batch, H}, false);
  expect(c0, "c0", {batch, H});
  expect(hs, "hs", {steps, batch, H});
  expect_ring(expect, cs, "cs", steps, batch, H, std::min<int64_t>(steps, 2));
  expect_ring(expect, tcs, "tcs", steps, batch, H);
  expect_ring(expect, xc, "xc", steps, batch, H);
  expect_ring(expect, rc, "rc", steps, batch, -1);
  expect(gain_c, "gain_c", {H});
  expect(shift_c, "shift_c", {H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  const bool reads = static_cast<bool>(weight_hh);
  TORCH_CHECK_VALUE(reads == static_cast<bool>(gain_h) && reads == static_cast<bool>(xh) &&
                        reads == static_cast<bool>(rh),
                    "layernorm_forward: gain_h, xh and rh are needed exactly with weight_hh");
  expect(gain_h, "gain_h", {4 * H});
  if (reads) expect_ring(expect, *xh, "xh", steps, batch, 4 * H), expect_ring(expect, *rh, "rh", steps, batch, -1);
  check_sizes("layernorm_forward", sizes, steps, batch);
  const StepProduct product(optional<Tensor>(), optional<Tensor>(), weight_hh, mask, batch, H, 4 * H);
  // with the inputs, each step computes its rows of Zx = LN_x(x_t U^T) itself (no (T, B, 4H) buffer of Zx)
  const StepProduct input_product(inputs, weight, optional<Tensor>(), optional<Tensor>(), batch, 0, 4 * H);
  const Tensor h0c = h0.contiguous();
  const int64_t step = batch * H, ring_c = cs.size(0), ring_t = tcs.size(0), ring_x = xc.size(0);
  const int64_t ring_g = gates.size(0);
  const int64_t ring_r = rc.size(0), ring_xh = reads ? xh->size(0) : 1, ring_rh = reads ? rh->size(0) : 1;
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    T *xcp = xc.data_ptr<T>(), *rcp = rc.data_ptr<T>();
    const T *gc = gain_c.data_ptr<T>(), *bc = shift_c.data_ptr<T>(), *gh = maybe<T>(gain_h);
    const T *gx = maybe<T>(gain_x), *sx = maybe<T>(shift_x);
    T *xhp = reads ? xh->data_ptr<T>() : nullptr, *rhp = reads ? rh->data_ptr<T>() : nullptr;
    forward_steps(steps, batch, sizes, 4 * H * H, [&](int64_t t, int64_t n, Team& team, Split split) {
      const T* h_prev = t == 0 ? h0c.data_ptr<T>() : h + (t - 1) * step;
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + ((t - 1) % ring_c) * step;
      T *c_t = c + (t % ring_c) * step, *tc_t = tc + (t % ring_t) * step, *xc_t = xcp + (t % ring_x) * step;
      T *rc_t = rcp + (t % ring_r) * batch, *xh_t = reads ? xhp + (t % ring_xh) * 4 * step : nullptr;
      T* rh_t = reads ? rhp + (t % ring_rh) * batch : nullptr;
      T* g_t = g + (t % ring_g) * 4 * step;
      // xh = V h' (masked) and x_t U^T, each normalised per row below
      products_then_rows<T>(team, split, t, batch, n, h_prev,
                            {{reads ? &product : nullptr, xh_t}, {inputs ? &input_product : nullptr, g_t}}, false,
                            [&](int64_t r0, int64_t r1) {
        for (int64_t b = r0; b < r1; ++b) {
          T* __restrict__ gb = g_t + b * 4 * H;
          if (gx) {  // gb = LN_x(x_t U^T), gain and shift in the same pass (x_t U^T the step's, or given in gb)
            const auto [mean, rstd] = moments(gb, 4 * H, eps_x);
#pragma omp simd
            for (int64_t k = 0; k < 4 * H; ++k) gb[k] = gx[k] * ((gb[k] - mean) * rstd) + sx[k];
          }
          if (reads) {  // xhat of V h', kept for the backward, and its gained share of z
            T* __restrict__ xb = xh_t + b * 4 * H;
            const auto [mean, rstd] = moments(xb, 4 * H, eps_h);
            rh_t[b] = rstd;
#pragma omp simd
            for (int64_t k = 0; k < 4 * H; ++k) {
              xb[k] = (xb[k] - mean) * rstd;
              gb[k] += gh[k] * xb[k];
            }
          }
          const T* __restrict__ cp = c_prev + b * H;
          T *__restrict__ cn = c_t + b * H, *__restrict__ tn = tc_t + b * H;
          T *__restrict__ xcb = xc_t + b * H, *__restrict__ hn = h + t * step + b * H;
          activate(sigma, gb, 2 * H);
          activate(act, gb + 2 * H, H);
          activate(sigma, gb + 3 * H, H);
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) cn[k] = gb[H + k] * cp[k] + gb[k] * gb[2 * H + k];
          const auto [mean, rstd] = moments(cn, H, eps_c);
          rc_t[b] = rstd;
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) {
            xcb[k] = (cn[k] - mean) * rstd;
            tn[k] = gc[k] * xcb[k] + bc[k];
          }
          activate(act, tn, H);
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) hn[k] = gb[3 * H + k] * tn[k];
        }
      });
    });
  });
}

// Fills dz (T, B, 4H), d_ln_c (T, B, H: dL/d(LN_c output)) and, with a state read, dzh (T, B, 4H: dL/d(V h'));
// carries as peephole_backward. The gains' and shift's gradients are summed over the steps here, each row
// while it is in cache (in double), into d_gain_h (4H; with a state read), d_gain_c and d_shift_c (H).
void layernorm_backward(const std::string& act_name, const std::string& sigma_name, const Tensor& gates,
                        const Tensor& cs, const Tensor& tcs, const Tensor& xc, const Tensor& rc,
                        const optional<Tensor>& xh, const optional<Tensor>& rh, const Tensor& c0, const Tensor& d_out,
                        const optional<Tensor>& weight_hh, const optional<Tensor>& mask,
                        const optional<Tensor>& gain_h, const Tensor& gain_c, Tensor carry_h, Tensor carry_c,
                        Tensor dz, Tensor d_ln_c, const optional<Tensor>& dzh, const optional<Tensor>& d_gain_h,
                        Tensor d_gain_c, Tensor d_shift_c, std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("layernorm_backward", gates);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(-1);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(dz, "dz", {steps, batch, 4 * H});
  for (auto [t, name] : {std::pair{&cs, "cs"}, {&tcs, "tcs"}, {&xc, "xc"}, {&d_ln_c, "d_ln_c"}})
    expect(*t, name, {steps, batch, H});
  expect(d_out, "d_out", {steps, batch, H}, false);  // any strides (upstream.h)
  expect(rc, "rc", {steps, batch});
  expect(c0, "c0", {batch, H});
  expect(carry_h, "carry_h", {batch, H});
  expect(carry_c, "carry_c", {batch, H});
  expect(gain_c, "gain_c", {H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  const bool reads = static_cast<bool>(weight_hh);
  TORCH_CHECK_VALUE(reads == static_cast<bool>(gain_h) && reads == static_cast<bool>(xh) &&
                        reads == static_cast<bool>(rh) && reads == static_cast<bool>(dzh),
                    "layernorm_backward: gain_h, xh, rh and dzh are needed exactly with weight_hh");
  expect(gain_h, "gain_h", {4 * H});
  expect(xh, "xh", {steps, batch, 4 * H});
  expect(rh, "rh", {steps, batch});
  expect(dzh, "dzh", {steps, batch, 4 * H});
  TORCH_CHECK_VALUE(reads == static_cast<bool>(d_gain_h), "layernorm_backward: d_gain_h is needed exactly with weight_hh");
  expect(d_gain_h, "d_gain_h", {4 * H});
  expect(d_gain_c, "d_gain_c", {H});
  expect(d_shift_c, "d_shift_c", {H});
  check_sizes("layernorm_backward", sizes, steps, batch);
  const int64_t step = batch * H;
  const Backward back(weight_hh, mask);
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    const Upstream<T> dout(d_out);
    const T *xcp = xc.data_ptr<T>(), *rcp = rc.data_ptr<T>(), *gc = gain_c.data_ptr<T>();
    const T* gh = reads ? gain_h->data_ptr<T>() : nullptr;
    const T* xhp = reads ? xh->data_ptr<T>() : nullptr;
    const T* rhp = reads ? rh->data_ptr<T>() : nullptr;
    T* dzhp = reads ? dzh->data_ptr<T>() : nullptr;
    T *ch = carry_h.data_ptr<T>(), *cc = carry_c.data_ptr<T>(), *d = dz.data_ptr<T>(), *dl = d_ln_c.data_ptr<T>();
    // per thread: scratch rows and the gains' sums (added up after the loop)
    const int64_t threads = at::get_num_threads(), G = reads ? 4 * H : 0;
    std::vector<T> scratch_all(threads * 5 * H);
    std::vector<double> sums(threads * (G + 2 * H));
    // the recurrent product's output is V h', whose gradient is dzh here
    backward_steps<T>(steps, batch, sizes, 4 * H * H, back, reads ? dzhp : d, ch, H, H,
                      [&](int64_t t, int64_t r0, int64_t r1, int64_t me) {
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      T *scratch = scratch_all.data() + me * 5 * H, *dcv = scratch + 4 * H;
      double *sum_gh = sums.data() + me * (G + 2 * H), *sum_gc = sum_gh + G, *sum_bc = sum_gc + H;
      const T* dy_t = dout.step(t, r0, r1);
      for (int64_t b = r0; b < r1; ++b) {
        const T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        T* __restrict__ db = d + (t * batch + b) * 4 * H;
        const T *__restrict__ cp = c_prev + b * H, *__restrict__ tb = tc + t * step + b * H;
        const T* __restrict__ xcb = xcp + t * step + b * H;
        const T* __restrict__ dy = dy_t + b * H;
        T *__restrict__ dlb = dl + t * step + b * H, *__restrict__ s = scratch, *__restrict__ dc = dcv;
        T *__restrict__ chb = ch + b * H, *__restrict__ ccb = cc + b * H;
        lstm_output_backward(act, sigma, gb, tb, db, dlb, H, H, [&](int64_t k) { return chb[k] + dy[k]; });
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          s[k] = dlb[k] * gc[k];
          sum_gc[k] += double(dlb[k]) * double(xcb[k]);
          sum_bc[k] += double(dlb[k]);
        }
        normalise_backward(s, xcb, rcp[t * batch + b], dc, H);
        lstm_cell_backward(act, sigma, gb, cp, ccb, db, H, H, [&](int64_t k) { return dc[k] + ccb[k]; });
        if (reads) {
          const T* __restrict__ xhb = xhp + (t * batch + b) * 4 * H;
#pragma omp simd
          for (int64_t k = 0; k < 4 * H; ++k) {
            s[k] = db[k] * gh[k];
            sum_gh[k] += double(db[k]) * double(xhb[k]);
          }
          normalise_backward(s, xhp + (t * batch + b) * 4 * H, rhp[t * batch + b], dzhp + (t * batch + b) * 4 * H,
                             4 * H);
        }
      }
    });
    for (int64_t me = 1; me < threads; ++me)
      for (int64_t k = 0; k < G + 2 * H; ++k) sums[k] += sums[me * (G + 2 * H) + k];
    T *ogc = d_gain_c.data_ptr<T>(), *obc = d_shift_c.data_ptr<T>();
    for (int64_t k = 0; k < H; ++k) ogc[k] = T(sums[G + k]), obc[k] = T(sums[G + H + k]);
    if (reads) {
      T* ogh = d_gain_h->data_ptr<T>();
      for (int64_t k = 0; k < 4 * H; ++k) ogh[k] = T(sums[k]);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  // last and optional: `bias`, where Zx came without it (the step adds it); `inputs` (T, B, F) and
  // `weight` (4H, F), where the step computes Zx itself (the gates are then written, not read)
  m.def("peephole_forward", &peephole_forward, "fused peephole LSTM loop, forward", py::arg("act"), py::arg("sigma"),
        py::arg("gates"), py::arg("weight_hh"), py::arg("mask"), py::arg("peep"), py::arg("h0"), py::arg("c0"),
        py::arg("hs"), py::arg("cs"), py::arg("tcs"), py::arg("sizes"), py::arg("bias") = py::none(),
        py::arg("inputs") = py::none(), py::arg("weight") = py::none());
  m.def("peephole_backward", &peephole_backward, "fused peephole LSTM loop, backward");
  m.def("projected_forward", &projected_forward, "fused projected LSTM loop, forward", py::arg("act"),
        py::arg("sigma"), py::arg("gates"), py::arg("weight_hh"), py::arg("mask"), py::arg("weight_hr"), py::arg("h0"),
        py::arg("c0"), py::arg("hs"), py::arg("cs"), py::arg("tcs"), py::arg("ms"), py::arg("sizes"),
        py::arg("bias") = py::none(), py::arg("inputs") = py::none(), py::arg("weight") = py::none());
  m.def("projected_backward", &projected_backward, "fused projected LSTM loop, backward");
  // last and optional: `inputs` (T, B, F), `weight` (4H, F), `gain_x`, `shift_x` (4H) and eps_x, where each
  // step computes its Zx = LN_x(x_t U^T) (gain_x, shift_x: LN_x's, the biases in the shift) itself
  m.def("layernorm_forward", &layernorm_forward, "fused layer-norm LSTM loop, forward", py::arg("act"),
        py::arg("sigma"), py::arg("gates"), py::arg("weight_hh"), py::arg("mask"), py::arg("gain_h"), py::arg("gain_c"),
        py::arg("shift_c"), py::arg("eps_h"), py::arg("eps_c"), py::arg("h0"), py::arg("c0"), py::arg("hs"),
        py::arg("cs"), py::arg("tcs"), py::arg("xc"), py::arg("rc"), py::arg("xh"), py::arg("rh"), py::arg("sizes"),
        py::arg("inputs") = py::none(), py::arg("weight") = py::none(), py::arg("gain_x") = py::none(),
        py::arg("shift_x") = py::none(), py::arg("eps_x") = 0.0);
  m.def("layernorm_backward", &layernorm_backward, "fused layer-norm LSTM loop, backward");
  m.def("set_own_barrier", [](bool own) { own_barrier = own; },
        "whether the loops' steps are separated by team.h's barrier or OpenMP's (default True; for measuring)");
  m.def("set_apart", [](bool apart) { steps_apart = apart; },
        "whether loops split by rows without lengths skip the sync between steps (default True; for measuring)");
  m.def("set_least", [](int64_t macs, int64_t forward_macs) { PARALLEL_MACS = macs, FORWARD_PARALLEL_MACS = forward_macs; },
        "the multiply-adds from which a step is split over threads by rows, a forward step of one row by columns "
        "(for measuring)");
  m.def("least", [] { return std::pair<int64_t, int64_t>{PARALLEL_MACS, FORWARD_PARALLEL_MACS}; },
        "the multiply-adds from which a step is split over threads by rows, a forward step of one row by columns");
  m.def("set_fault", [](std::optional<int64_t> step) { fault_armed = step.has_value(), fault_step = step.value_or(0); },
        "for testing: step `step` of the next loops throws in the last thread of their team (None: never)");
}
