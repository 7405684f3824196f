// The time loops of fused_cells.py in C++: the peephole, layer-norm and projected LSTMs. Same buffers,
// same equations, same results as the Python loops there; the matrix products stay ATen's, everything
// elementwise is a plain loop over the step's rows. Built at first use by compiled.py (module
// rnnlab_cell_loops); rnnlab works without it.
//
//   peephole    i = s(z_i + p_i c'), f = s(z_f + p_f c'), r = a(z_r), c = f c' + i r,
//               o = s(z_o + p_o c), h = o a(c)
//   layernorm   z = Zx + g_h xhat(V h'); i, f, o, r as the LSTM; c = f c' + i r;
//               h = o a(g_c xhat(c) + b_c)          xhat(v) = (v - mean v) / sqrt(var v + eps), per row
//   projected   z = Zx + V h'; m = o a(c); h = W_hr m   (h: P units)
// where Zx (all steps, one GEMM) is in the gate buffer on entry and the gate values on exit.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include "activations.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

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

void check_sizes(const char* where, const std::vector<int64_t>& sizes, int64_t steps, int64_t batch) {
  if (sizes.empty()) return;
  TORCH_CHECK_VALUE(static_cast<int64_t>(sizes.size()) == steps, where, ": sizes must hold one row count per step (",
                    steps, "); got ", sizes.size());
  for (size_t t = 0; t < sizes.size(); ++t)
    TORCH_CHECK_VALUE(sizes[t] >= 0 && sizes[t] <= batch && (t == 0 || sizes[t] <= sizes[t - 1]), where,
                      ": sizes must be non-increasing row counts in [0, ", batch, "]; got ", sizes[t], " at step ", t);
}

// z_t[:n] += (h_prev[:n] * mask) V^T: the step's one matrix product (views only here: a dispatch each)
void add_recurrent_input(Tensor g_t, const Tensor& h_prev, const optional<Tensor>& vt, const optional<Tensor>& mask,
                         int64_t n) {
  if (!vt || n == 0) return;
  Tensor read = h_prev.narrow(0, 0, n);
  if (mask) read = read * mask->narrow(0, 0, n);
  g_t.narrow(0, 0, n).addmm_(read, *vt);
}

// carry[:n] = (dz_t[:n] V) * mask: the gradient reaching the state the gates read
void recurrent_carry(Tensor carry, const Tensor& dz_t, const optional<Tensor>& weight_hh, const optional<Tensor>& mask,
                     int64_t n) {
  if (n == 0) return;
  Tensor ch = carry.narrow(0, 0, n);
  if (!weight_hh) {
    ch.zero_();
  } else if (mask) {
    ch.copy_(at::mm(dz_t.narrow(0, 0, n), *weight_hh).mul_(mask->narrow(0, 0, n)));
  } else {
    at::mm_out(ch, dz_t.narrow(0, 0, n), *weight_hh);
  }
}

// (v - mean) * rstd over n values, into out; returns rstd
template <typename T>
T normalise(const T* __restrict__ v, T* __restrict__ out, int64_t n, double eps) {
  T mean = 0;
#pragma omp simd reduction(+ : mean)
  for (int64_t k = 0; k < n; ++k) mean += v[k];
  mean /= T(n);
  T var = 0;
#pragma omp simd reduction(+ : var)
  for (int64_t k = 0; k < n; ++k) var += (v[k] - mean) * (v[k] - mean);
  const T rstd = T(1) / std::sqrt(var / T(n) + T(eps));
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = (v[k] - mean) * rstd;
  return rstd;
}

// out = rstd * (d - mean(d) - xhat * mean(d xhat)): dv from d(xhat), per row of n values
template <typename T>
void normalise_backward(const T* __restrict__ d, const T* __restrict__ xhat, T rstd, T* __restrict__ out, int64_t n) {
  T mean_d = 0, mean_dx = 0;
#pragma omp simd reduction(+ : mean_d, mean_dx)
  for (int64_t k = 0; k < n; ++k) {
    mean_d += d[k];
    mean_dx += d[k] * xhat[k];
  }
  mean_d /= T(n);
  mean_dx /= T(n);
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

}  // namespace

// --- peephole LSTM ---------------------------------------------------------------------------------

void peephole_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                      const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& peep,
                      const Tensor& h0, const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("peephole_forward", gates);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(-1);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(peep, "peep", {3, H});
  expect(h0, "h0", {batch, H}, false);
  expect(c0, "c0", {batch, H});
  for (auto [t, name] : {std::pair{&hs, "hs"}, {&cs, "cs"}, {&tcs, "tcs"}}) expect(*t, name, {steps, batch, H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  check_sizes("peephole_forward", sizes, steps, batch);
  optional<Tensor> vt;
  if (weight_hh) vt = weight_hh->t();
  const int64_t step = batch * H;
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    const T *p_i = peep.data_ptr<T>(), *p_f = p_i + H, *p_o = p_i + 2 * H;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = rows_at(sizes, t, batch);
      add_recurrent_input(gates.select(0, t), t == 0 ? h0 : hs.select(0, t - 1), vt, mask, n);
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      for (int64_t b = 0; b < n; ++b) {
        T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        const T* __restrict__ cp = c_prev + b * H;
        T *__restrict__ cn = c + t * step + b * H, *__restrict__ tn = tc + t * step + b * H;
        T* __restrict__ hn = h + t * step + b * H;
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
    }
  });
}

// Fills dz (T, B, 4H); carry_h, carry_c: the final state's gradients on entry, the initial state's on exit.
void peephole_backward(const std::string& act_name, const std::string& sigma_name, const Tensor& gates,
                       const Tensor& cs, const Tensor& tcs, const Tensor& c0, const Tensor& d_out,
                       const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& peep,
                       Tensor carry_h, Tensor carry_c, Tensor dz, std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("peephole_backward", gates);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(-1);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(dz, "dz", {steps, batch, 4 * H});
  for (auto [t, name] : {std::pair{&cs, "cs"}, {&tcs, "tcs"}, {&d_out, "d_out"}}) expect(*t, name, {steps, batch, H});
  expect(c0, "c0", {batch, H});
  expect(carry_h, "carry_h", {batch, H});
  expect(carry_c, "carry_c", {batch, H});
  expect(peep, "peep", {3, H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  check_sizes("peephole_backward", sizes, steps, batch);
  const int64_t step = batch * H;
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>(), *dout = d_out.data_ptr<T>();
    const T *p_i = peep.data_ptr<T>(), *p_f = p_i + H, *p_o = p_i + 2 * H;
    T *ch = carry_h.data_ptr<T>(), *cc = carry_c.data_ptr<T>(), *d = dz.data_ptr<T>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t n = rows_at(sizes, t, batch);
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      for (int64_t b = 0; b < n; ++b) {
        const T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        T* __restrict__ db = d + (t * batch + b) * 4 * H;
        const T *__restrict__ cp = c_prev + b * H, *__restrict__ tb = tc + t * step + b * H;
        const T* __restrict__ dy = dout + t * step + b * H;
        T *__restrict__ chb = ch + b * H, *__restrict__ ccb = cc + b * H;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          const T dh = chb[k] + dy[k];
          db[3 * H + k] = dh * tb[k];
          db[2 * H + k] = dh * gb[3 * H + k];  // the r slot holds dh o until dc is known
        }
        activate_backward(sigma, db + 3 * H, gb + 3 * H, H);
        activate_backward(act, db + 2 * H, tb, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          const T dc = ccb[k] + db[2 * H + k] + db[3 * H + k] * p_o[k];
          db[k] = dc * gb[2 * H + k];
          db[H + k] = dc * cp[k];
          db[2 * H + k] = dc * gb[k];
          ccb[k] = dc * gb[H + k];
        }
        activate_backward(sigma, db, gb, 2 * H);
        activate_backward(act, db + 2 * H, gb + 2 * H, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) ccb[k] += db[k] * p_i[k] + db[H + k] * p_f[k];
      }
      recurrent_carry(carry_h, dz.select(0, t), weight_hh, mask, n);
    }
  });
}

// --- projected LSTM --------------------------------------------------------------------------------

void projected_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                       const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const Tensor& weight_hr,
                       const Tensor& h0, const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, Tensor ms,
                       std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("projected_forward", gates);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(-1), P = h0.size(-1);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(weight_hr, "weight_hr", {P, H}, false);
  expect(h0, "h0", {batch, P}, false);
  expect(c0, "c0", {batch, H});
  expect(hs, "hs", {steps, batch, P});
  for (auto [t, name] : {std::pair{&cs, "cs"}, {&tcs, "tcs"}, {&ms, "ms"}}) expect(*t, name, {steps, batch, H});
  expect(weight_hh, "weight_hh", {4 * H, P}, false);
  expect(mask, "mask", {batch, P}, false);
  check_sizes("projected_forward", sizes, steps, batch);
  optional<Tensor> vt;
  if (weight_hh) vt = weight_hh->t();
  const Tensor rt = weight_hr.t();
  const int64_t step = batch * H;
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>(), *m = ms.data_ptr<T>();
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = rows_at(sizes, t, batch);
      add_recurrent_input(gates.select(0, t), t == 0 ? h0 : hs.select(0, t - 1), vt, mask, n);
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      for (int64_t b = 0; b < n; ++b) {
        T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        const T* __restrict__ cp = c_prev + b * H;
        T *__restrict__ cn = c + t * step + b * H, *__restrict__ tn = tc + t * step + b * H;
        T* __restrict__ mn = m + t * step + b * H;
        activate(sigma, gb, 2 * H);
        activate(act, gb + 2 * H, H);
        activate(sigma, gb + 3 * H, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) cn[k] = tn[k] = gb[H + k] * cp[k] + gb[k] * gb[2 * H + k];
        activate(act, tn, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) mn[k] = gb[3 * H + k] * tn[k];
      }
      if (n > 0) {
        Tensor h_t = hs.select(0, t).narrow(0, 0, n);
        at::mm_out(h_t, ms.select(0, t).narrow(0, 0, n), rt);  // h = W_hr m
      }
    }
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
  expect(d_out, "d_out", {steps, batch, P});
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
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    T *cc = carry_c.data_ptr<T>(), *d = dz.data_ptr<T>(), *dmp = dm.data_ptr<T>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t n = rows_at(sizes, t, batch);
      if (n == 0) continue;
      Tensor dh = dh_all.select(0, t).narrow(0, 0, n);
      at::add_out(dh, carry_h.narrow(0, 0, n), d_out.select(0, t).narrow(0, 0, n));
      Tensor dm_n = dm.narrow(0, 0, n);
      at::mm_out(dm_n, dh, weight_hr);  // dL/dm = dh W_hr
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      for (int64_t b = 0; b < n; ++b) {
        const T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        T* __restrict__ db = d + (t * batch + b) * 4 * H;
        const T *__restrict__ cp = c_prev + b * H, *__restrict__ tb = tc + t * step + b * H;
        const T* __restrict__ dmb = dmp + b * H;
        T* __restrict__ ccb = cc + b * H;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          db[3 * H + k] = dmb[k] * tb[k];
          db[2 * H + k] = dmb[k] * gb[3 * H + k];
        }
        activate_backward(sigma, db + 3 * H, gb + 3 * H, H);
        activate_backward(act, db + 2 * H, tb, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          const T dc = ccb[k] + db[2 * H + k];
          db[k] = dc * gb[2 * H + k];
          db[H + k] = dc * cp[k];
          db[2 * H + k] = dc * gb[k];
          ccb[k] = dc * gb[H + k];
        }
        activate_backward(sigma, db, gb, 2 * H);
        activate_backward(act, db + 2 * H, gb + 2 * H, H);
      }
      recurrent_carry(carry_h, dz.select(0, t), weight_hh, mask, n);
    }
  });
}

// --- layer-norm LSTM ---------------------------------------------------------------------------------
// xh (T, B, 4H), rh (T, B): xhat and rstd of V h' (absent without a state read); xc, rc: of c.

void layernorm_forward(const std::string& act_name, const std::string& sigma_name, Tensor gates,
                       const optional<Tensor>& weight_hh, const optional<Tensor>& mask, const optional<Tensor>& gain_h,
                       const Tensor& gain_c, const Tensor& shift_c, double eps_h, double eps_c, const Tensor& h0,
                       const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, Tensor xc, Tensor rc,
                       const optional<Tensor>& xh, const optional<Tensor>& rh, std::vector<int64_t> sizes) {
  const Act act = parse(act_name), sigma = parse(sigma_name);
  const Expect expect = expect_gates("layernorm_forward", gates);
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(-1);
  expect(gates, "gates", {steps, batch, 4 * H});
  expect(h0, "h0", {batch, H}, false);
  expect(c0, "c0", {batch, H});
  for (auto [t, name] : {std::pair{&hs, "hs"}, {&cs, "cs"}, {&tcs, "tcs"}, {&xc, "xc"}})
    expect(*t, name, {steps, batch, H});
  expect(rc, "rc", {steps, batch});
  expect(gain_c, "gain_c", {H});
  expect(shift_c, "shift_c", {H});
  expect(weight_hh, "weight_hh", {4 * H, H}, false);
  expect(mask, "mask", {batch, H}, false);
  const bool reads = static_cast<bool>(weight_hh);
  TORCH_CHECK_VALUE(reads == static_cast<bool>(gain_h) && reads == static_cast<bool>(xh) &&
                        reads == static_cast<bool>(rh),
                    "layernorm_forward: gain_h, xh and rh are needed exactly with weight_hh");
  expect(gain_h, "gain_h", {4 * H});
  expect(xh, "xh", {steps, batch, 4 * H});
  expect(rh, "rh", {steps, batch});
  check_sizes("layernorm_forward", sizes, steps, batch);
  const int64_t step = batch * H;
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    T *g = gates.data_ptr<T>(), *h = hs.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>();
    T *xcp = xc.data_ptr<T>(), *rcp = rc.data_ptr<T>();
    const T *gc = gain_c.data_ptr<T>(), *bc = shift_c.data_ptr<T>();
    const T* gh = reads ? gain_h->data_ptr<T>() : nullptr;
    T* xhp = reads ? xh->data_ptr<T>() : nullptr;
    T* rhp = reads ? rh->data_ptr<T>() : nullptr;
    const Tensor vt = reads ? weight_hh->t() : Tensor();
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = rows_at(sizes, t, batch);
      if (n == 0) continue;
      if (reads) {  // xh_t = V h' (masked), normalised per row below
        Tensor read = (t == 0 ? h0 : hs.select(0, t - 1)).narrow(0, 0, n);
        if (mask) read = read * mask->narrow(0, 0, n);
        Tensor out = xh->select(0, t).narrow(0, 0, n);
        at::mm_out(out, read, vt);
      }
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      for (int64_t b = 0; b < n; ++b) {
        T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        if (reads) {
          T* __restrict__ xb = xhp + (t * batch + b) * 4 * H;
          rhp[t * batch + b] = normalise(xb, xb, 4 * H, eps_h);
#pragma omp simd
          for (int64_t k = 0; k < 4 * H; ++k) gb[k] += gh[k] * xb[k];
        }
        const T* __restrict__ cp = c_prev + b * H;
        T *__restrict__ cn = c + t * step + b * H, *__restrict__ tn = tc + t * step + b * H;
        T *__restrict__ xcb = xcp + t * step + b * H, *__restrict__ hn = h + t * step + b * H;
        activate(sigma, gb, 2 * H);
        activate(act, gb + 2 * H, H);
        activate(sigma, gb + 3 * H, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) cn[k] = gb[H + k] * cp[k] + gb[k] * gb[2 * H + k];
        rcp[t * batch + b] = normalise(cn, xcb, H, eps_c);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) tn[k] = gc[k] * xcb[k] + bc[k];
        activate(act, tn, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) hn[k] = gb[3 * H + k] * tn[k];
      }
    }
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
  for (auto [t, name] : {std::pair{&cs, "cs"}, {&tcs, "tcs"}, {&xc, "xc"}, {&d_out, "d_out"}, {&d_ln_c, "d_ln_c"}})
    expect(*t, name, {steps, batch, H});
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
  dispatch(gates.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *g = gates.data_ptr<T>(), *c = cs.data_ptr<T>(), *tc = tcs.data_ptr<T>(), *dout = d_out.data_ptr<T>();
    const T *xcp = xc.data_ptr<T>(), *rcp = rc.data_ptr<T>(), *gc = gain_c.data_ptr<T>();
    const T* gh = reads ? gain_h->data_ptr<T>() : nullptr;
    const T* xhp = reads ? xh->data_ptr<T>() : nullptr;
    const T* rhp = reads ? rh->data_ptr<T>() : nullptr;
    T* dzhp = reads ? dzh->data_ptr<T>() : nullptr;
    T *ch = carry_h.data_ptr<T>(), *cc = carry_c.data_ptr<T>(), *d = dz.data_ptr<T>(), *dl = d_ln_c.data_ptr<T>();
    std::vector<T> scratch(4 * H), dcv(H);
    std::vector<double> sum_gh(reads ? 4 * H : 0), sum_gc(H), sum_bc(H);
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t n = rows_at(sizes, t, batch);
      if (n == 0) continue;
      const T* c_prev = t == 0 ? c0.data_ptr<T>() : c + (t - 1) * step;
      for (int64_t b = 0; b < n; ++b) {
        const T* __restrict__ gb = g + (t * batch + b) * 4 * H;
        T* __restrict__ db = d + (t * batch + b) * 4 * H;
        const T *__restrict__ cp = c_prev + b * H, *__restrict__ tb = tc + t * step + b * H;
        const T* __restrict__ xcb = xcp + t * step + b * H;
        const T* __restrict__ dy = dout + t * step + b * H;
        T *__restrict__ dlb = dl + t * step + b * H, *__restrict__ s = scratch.data(), *__restrict__ dc = dcv.data();
        T *__restrict__ chb = ch + b * H, *__restrict__ ccb = cc + b * H;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          const T dh = chb[k] + dy[k];
          db[3 * H + k] = dh * tb[k];
          dlb[k] = dh * gb[3 * H + k];
        }
        activate_backward(sigma, db + 3 * H, gb + 3 * H, H);
        activate_backward(act, dlb, tb, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          s[k] = dlb[k] * gc[k];
          sum_gc[k] += double(dlb[k]) * double(xcb[k]);
          sum_bc[k] += double(dlb[k]);
        }
        normalise_backward(s, xcb, rcp[t * batch + b], dc, H);
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          const T dck = dc[k] + ccb[k];
          db[k] = dck * gb[2 * H + k];
          db[H + k] = dck * cp[k];
          db[2 * H + k] = dck * gb[k];
          ccb[k] = dck * gb[H + k];
        }
        activate_backward(sigma, db, gb, 2 * H);
        activate_backward(act, db + 2 * H, gb + 2 * H, H);
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
      recurrent_carry(carry_h, reads ? dzh->select(0, t) : dz.select(0, t), weight_hh, mask, n);
    }
    T *ogc = d_gain_c.data_ptr<T>(), *obc = d_shift_c.data_ptr<T>();
    for (int64_t k = 0; k < H; ++k) ogc[k] = T(sum_gc[k]), obc[k] = T(sum_bc[k]);
    if (reads) {
      T* ogh = d_gain_h->data_ptr<T>();
      for (int64_t k = 0; k < 4 * H; ++k) ogh[k] = T(sum_gh[k]);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("peephole_forward", &peephole_forward, "fused peephole LSTM loop, forward");
  m.def("peephole_backward", &peephole_backward, "fused peephole LSTM loop, backward");
  m.def("projected_forward", &projected_forward, "fused projected LSTM loop, forward");
  m.def("projected_backward", &projected_backward, "fused projected LSTM loop, backward");
  m.def("layernorm_forward", &layernorm_forward, "fused layer-norm LSTM loop, forward");
  m.def("layernorm_backward", &layernorm_backward, "fused layer-norm LSTM loop, backward");
}
