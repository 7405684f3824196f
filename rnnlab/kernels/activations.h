// The activations of activations.py in C++, written once for every module (loops.cpp, cell_loops.cpp,
// generate.cpp): forward in place or out of place, backward from the output y. One switch per call,
// outside the loops, so that each loop is a plain (vectorisable) one. compiled.py hashes this header
// into each including module's build key, so editing it rebuilds them.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

enum class Act { tanh, sigmoid, relu, identity, hard_sigmoid, hard_tanh, softsign, elu };

inline Act parse(const std::string& name) {
  static const std::pair<const char*, Act> names[] = {
      {"tanh", Act::tanh}, {"sigmoid", Act::sigmoid}, {"relu", Act::relu}, {"identity", Act::identity},
      {"hard_sigmoid", Act::hard_sigmoid}, {"hard_tanh", Act::hard_tanh}, {"softsign", Act::softsign},
      {"elu", Act::elu}};
  for (const auto& [key, act] : names)
    if (name == key) return act;
  TORCH_CHECK_VALUE(false, "rnnlab C++ loops: unknown activation ", name);
  return Act::identity;  // not reached
}

// tanh of floats in one exp: tanh|x| = 1 - 2 / (exp(2|x|) + 1), and for |x| < 0.625, where that
// subtraction would cancel, tanh's odd Taylor series to x^19 (next term < 1e-8 there). Measured on
// every float in [2^-14, 10] (below, the series is x to the last place; above, 1; negatives by
// symmetry): at most 1.33 units in the last place from the exact value, at x = 0.6283 (SLEEF's, in
// ATen's Vectorized::tanh: 1.0), at 0.55x SLEEF's time (159 vs 292 us for 131k floats, one core of
// these machines). Doubles keep SLEEF's.
inline at::vec::Vectorized<float> fast_tanh(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  static const float series[] = {-443861162.f / 1856156927625.f, 6404582.f / 10854718875.f, -929569.f / 638512875.f,
                                 21844.f / 6081075.f, -1382.f / 155925.f, 62.f / 2835.f, -17.f / 315.f, 2.f / 15.f,
                                 -1.f / 3.f};
  const V a = at::vec::minimum(x.abs(), V(10.f));  // tanh(10) rounds to 1; NaN stays NaN
  const V far = V(1.f) - V(2.f) / ((a + a).exp() + V(1.f));
  const V a2 = a * a;
  V p(series[0]);
  for (int k = 1; k < 9; ++k) p = at::vec::fmadd(p, a2, V(series[k]));
  const V near = at::vec::fmadd(p * a2, a, a);
  return V::blendv(far, near, a < V(0.625f)) | (x & V(-0.f));  // |tanh| with x's sign bit
}

// Whether this torch's Vectorized<float> has exp_u20 (ATen's degree-5 exp for softmax, within 20 units in
// the last place; not in every torch rnnlab supports).
template <typename V, typename = void>
struct has_exp_u20 : std::false_type {};
template <typename V>
struct has_exp_u20<V, std::void_t<decltype(std::declval<V>().exp_u20())>> : std::true_type {};

// The tanh and sigmoid of floats: fast (the time loops: fast_tanh, and the sigmoid's exp by exp_u20, a
// sigmoid within ~1e-6 relative; the activations were most of the elementwise quarter of an LSTM step
// at (32, 128): forward 1.08 -> 1.04x torch.nn.LSTM, docs/BENCHMARKS.md "A faster float sigmoid"), or
// ATen's own (SLEEF's: torch.tanh's and torch.sigmoid's formulas) where results must be the Python
// path's bit for bit (generate.cpp: the same tokens).
enum class FloatMath { fast, torch };

// out = a(in) for n elements (out may be in), with ATen's vectorised functions (SLEEF's exp, tanh,
// expm1: the ones torch's own kernels use, with their NaN and inf semantics), but fast_tanh and
// exp_u20 for floats unless asked for torch's.
template <typename T, FloatMath float_math = FloatMath::fast>
void activate(Act a, T* out, const T* in, int64_t n) {
  using V = at::vec::Vectorized<T>;
  constexpr bool fast = std::is_same_v<T, float> && float_math == FloatMath::fast;
  auto map = [&](auto fn) { at::vec::map(fn, out, in, n); };
  switch (a) {
    case Act::tanh:
      if constexpr (fast) return map(fast_tanh);
      return map([](V v) { return v.tanh(); });
    case Act::sigmoid:
      if constexpr (fast && has_exp_u20<V>::value)  // exp_u20 clamps NaN to a number: NaN is put back (v != v)
        return map([](V v) { return V::blendv((V(1) + v.neg().exp_u20()).reciprocal(), v, v != v); });
      return map([](V v) { return (V(1) + v.neg().exp()).reciprocal(); });
    case Act::relu: return map([](V v) { return at::vec::clamp_min(v, V(0)); });
    case Act::identity:
      if (out != in) std::copy(in, in + n, out);
      return;
    case Act::hard_sigmoid: return map([](V v) { return at::vec::clamp(v + V(3), V(0), V(6)) / V(6); });
    case Act::hard_tanh: return map([](V v) { return at::vec::clamp(v, V(-1), V(1)); });
    case Act::softsign: return map([](V v) { return v / (V(1) + v.abs()); });
    case Act::elu: return map([](V v) { return V::blendv(v.expm1(), v, v > V(0)); });
  }
}

// z = a(z) for n elements.
template <typename T>
void activate(Act a, T* z, int64_t n) {
  activate(a, z, static_cast<const T*>(z), n);
}

// g = g * a'(z), a' written in terms of y = a(z), for n elements.
template <typename T>
void activate_backward(Act a, T* __restrict__ g, const T* __restrict__ y, int64_t n) {
  auto scale = [&](auto derivative) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) g[k] *= derivative(y[k]);
  };
  switch (a) {
    case Act::tanh: return scale([](T v) { return T(1) - v * v; });
    case Act::sigmoid: return scale([](T v) { return v * (T(1) - v); });
    case Act::relu: return scale([](T v) { return v > T(0) ? T(1) : T(0); });
    case Act::identity: return;
    // torch's hardsigmoid_backward scales by the float 1.0f / 6.0f, in double too: the same here
    case Act::hard_sigmoid: return scale([](T v) { return v > T(0) && v < T(1) ? T(1.0f / 6.0f) : T(0); });
    case Act::hard_tanh: return scale([](T v) { return std::abs(v) < T(1) ? T(1) : T(0); });
    case Act::softsign: return scale([](T v) { return (T(1) - std::abs(v)) * (T(1) - std::abs(v)); });
    case Act::elu: return scale([](T v) { return v > T(0) ? T(1) : v + T(1); });
  }
}
