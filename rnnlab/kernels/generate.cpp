// Free-running generation in one call: for every new token, the cells' step in each layer, the linear
// readout and the choice of the next token (greedy, or sampled at a temperature from the top k), at
// batch 1. What generation.py hands over is already reduced to what one step reads:
//
//   layer 0     zx = T[token]                T = E W_ih^T + b_ih: the embedding (or the fed-back embedding
//                                            through W_yh) and input projection of every token, one row
//                                            per token, so no step reads W_ih
//   layer l>0   zx = W_ih x + b_ih           x: the new output of the layer below
//   every layer zh = W_hh s + b_hh, and the cell's update from zx and zh (below: one function per
//               family, `update` picks it); the layer-norm LSTM normalises W_ih x and W_hh s before
//               adding the biases, and its table rows are already LN_x(E W_ih^T) + b_ih
//   readout     logits = W_out s + b_out     s: the last layer's output (the projected LSTM's P units)
//
// What a family reads beyond those weights comes by name, per layer (`extras`): the peephole LSTM's
// "peephole" (3, H); the layer-norm LSTM's "gain_ih", "shift_ih", "gain_hh", "shift_hh" (4H) and
// "gain_cell", "shift_cell" (H), with their three epsilons in `norm_eps`; the projected LSTM's
// "weight_hr" (P, H).
//
// At batch 1 a step is a few matrix-vector products over weights that do not fit in the core's L2
// cache, so its time is the time to stream the weights from L3: they are packed once into panels
// (P outputs wide, the inputs in order), and each panel is one pass that keeps its P sums in
// registers, reads every weight once and writes nothing in between.
//
// The choice of a token is the Python path's (rnnlab.preprocessing.choose_token and torch.multinomial)
// op for op: <unk> (id 0) masked, logits times 1/temperature (what ATen's division by a scalar
// computes), the top k kept (those >= the k-th largest), softmax in float32, then torch.multinomial's
// own draw for one sample: q ~ Exp(1) per token from the same torch.Generator by ATen's exponential_
// on a (1, V) float tensor, the token argmax_i p_i / q_i (the first on a tie). The generator therefore
// advances exactly as on the Python path.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include "activations.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

using at::Tensor;

namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int64_t kVectors = 8;  // sums per panel, in vectors: 8 accumulators + a broadcast + loads fit any ISA

template <typename T>
constexpr int64_t panel_width() {
  return kVectors * Vec<T>::size();
}

// W (R, C) -> panels: panel p holds rows [p P, p P + w) for every input j in order, w = P but for the
// last (rounded up to whole vectors, zero rows added). Output length: ceil(R / lanes) * lanes * C.
template <typename T>
std::vector<T> pack(const Tensor& weight) {
  const Tensor contiguous = weight.contiguous();
  const T* w = contiguous.data_ptr<T>();
  const int64_t R = weight.size(0), C = weight.size(1), P = panel_width<T>(), lanes = Vec<T>::size();
  const int64_t padded = (R + lanes - 1) / lanes * lanes;
  std::vector<T> out(padded * C, T(0));
  constexpr int64_t kBlock = 16;  // inputs per tile: the tile's writes stay in L1 while its rows are read in order
  for (int64_t start = 0; start < padded; start += P) {
    const int64_t width = std::min(P, padded - start), rows = std::min(width, R - start);
    T* panel = out.data() + start * C;
    for (int64_t j0 = 0; j0 < C; j0 += kBlock) {
      const int64_t j1 = std::min(C, j0 + kBlock);
      for (int64_t k = 0; k < rows; ++k) {
        const T* row = w + (start + k) * C;
        for (int64_t j = j0; j < j1; ++j) panel[j * width + k] = row[j];
      }
    }
  }
  return out;
}

// y[0:w) = init + panel x, for one panel of NV vectors.
template <typename T, int NV>
void panel_product(const T* __restrict__ panel, const T* __restrict__ x, int64_t C, const T* init, T* y) {
  Vec<T> sum[NV];
  for (int v = 0; v < NV; ++v) sum[v] = Vec<T>::loadu(init + v * Vec<T>::size());
  for (int64_t j = 0; j < C; ++j) {
    const Vec<T> xj(x[j]);
    const T* row = panel + j * NV * Vec<T>::size();
    for (int v = 0; v < NV; ++v) sum[v] = at::vec::fmadd(Vec<T>::loadu(row + v * Vec<T>::size()), xj, sum[v]);
  }
  for (int v = 0; v < NV; ++v) sum[v].store(y + v * Vec<T>::size());
}

// y = init + W x for a packed W of `padded` rows (y and init hold `padded` entries).
template <typename T>
void product(const std::vector<T>& packed, int64_t padded, int64_t C, const T* x, const T* init, T* y) {
  const int64_t P = panel_width<T>(), lanes = Vec<T>::size();
  for (int64_t start = 0; start < padded; start += P) {
    const T* panel = packed.data() + start * C;
    switch (std::min(P, padded - start) / lanes) {
      case 8: panel_product<T, 8>(panel, x, C, init + start, y + start); break;
      case 7: panel_product<T, 7>(panel, x, C, init + start, y + start); break;
      case 6: panel_product<T, 6>(panel, x, C, init + start, y + start); break;
      case 5: panel_product<T, 5>(panel, x, C, init + start, y + start); break;
      case 4: panel_product<T, 4>(panel, x, C, init + start, y + start); break;
      case 3: panel_product<T, 3>(panel, x, C, init + start, y + start); break;
      case 2: panel_product<T, 2>(panel, x, C, init + start, y + start); break;
      default: panel_product<T, 1>(panel, x, C, init + start, y + start); break;
    }
  }
}

int64_t rounded(int64_t n, int64_t lanes) { return (n + lanes - 1) / lanes * lanes; }

template <typename T>
std::vector<T> to_vector(const Tensor& t, int64_t length) {  // zero-padded to `length`
  TORCH_CHECK_VALUE(t.numel() <= length, "rnnlab generate: a vector of ", t.numel(), " values where at most ", length,
                    " fit");
  Tensor c = t.contiguous();
  std::vector<T> out(length, T(0));
  std::copy(c.data_ptr<T>(), c.data_ptr<T>() + c.numel(), out.begin());
  return out;
}

// The cells, as cells.py writes them, from zx = U x + W y + b_ih and zh = V s + b_hh (z = zx + zh):
//   lstm            i, f, o = sigma(z_i, z_f, z_o), r = a(z_r);  c = f c + i r;  s = o a(c)
//   peephole-lstm   i = sigma(z_i + p_i c), f = sigma(z_f + p_f c), r = a(z_r);  c = f c + i r;
//                   o = sigma(z_o + p_o c) (the new c);  s = o a(c)
//   layernorm-lstm  zx = LN_x(U x + W y) + b_ih, zh = LN_h(V s) + b_hh; the LSTM's gates and c;  s = o a(LN_c(c))
//   projected-lstm  the LSTM's gates and c;  s = W_hr (o a(c))   (s: P units, V: (4H, P))
//   gru       r = sigma(zx_r + zh_r), u = sigma(zx_z + zh_z), n = a(zx_n + r zh_n);  s = (1 - u) n + u s
//   vanilla   s = a(z);   residual  s = s + a(z) (after) or a(z + s) (before)
//   input     s = s + sigma(z_i) a(z_r);   forget  s = sigma(z_f) s + sigma(z_i) a(z_r)
enum class Cell {
  lstm, peephole_lstm, layernorm_lstm, projected_lstm, gru, vanilla, residual_after, residual_before, input, forget
};

Cell cell_named(const std::string& name) {
  static const std::pair<const char*, Cell> names[] = {
      {"lstm", Cell::lstm}, {"peephole-lstm", Cell::peephole_lstm}, {"layernorm-lstm", Cell::layernorm_lstm},
      {"projected-lstm", Cell::projected_lstm}, {"gru", Cell::gru}, {"vanilla", Cell::vanilla},
      {"residual_after", Cell::residual_after}, {"residual_before", Cell::residual_before}, {"input", Cell::input},
      {"forget", Cell::forget}};
  for (const auto& [key, cell] : names)
    if (name == key) return cell;
  TORCH_CHECK_VALUE(false, "rnnlab generate: unknown cell ", name);
  return Cell::lstm;  // not reached
}

int64_t gates(Cell cell) {
  switch (cell) {
    case Cell::lstm: case Cell::peephole_lstm: case Cell::layernorm_lstm: case Cell::projected_lstm: return 4;
    case Cell::gru: case Cell::forget: return 3;
    case Cell::input: return 2;
    default: return 1;
  }
}

// torch.nn.LayerNorm over n units: gain (v - mean v) / sqrt(var v + eps) + shift (empty: no normalisation)
template <typename T>
struct Norm {
  std::vector<T> gain, shift;
  double eps = 0;

  bool on() const { return !gain.empty(); }

  // v = LN(v) in place; the moments summed in double: the values agree with torch.nn.LayerNorm's to rounding
  void apply(T* __restrict__ v, int64_t n) const {
    double mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
    for (int64_t k = 0; k < n; ++k) mean += v[k];
    mean /= static_cast<double>(n);
#pragma omp simd reduction(+ : var)
    for (int64_t k = 0; k < n; ++k) var += (v[k] - mean) * (v[k] - mean);
    const T m = static_cast<T>(mean), rstd = static_cast<T>(1 / std::sqrt(var / static_cast<double>(n) + eps));
    const T *__restrict__ g = gain.data(), *__restrict__ b = shift.data();
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) v[k] = (v[k] - m) * rstd * g[k] + b[k];
  }
};

// One layer, packed. Layer 0 reads zx as a row of `table` (tokens x K H); the others compute it from
// the new output of the layer below. H: the cell's units (of c); out: its output's (H; P when projected).
template <typename T>
struct Layer {
  Cell cell = Cell::lstm;
  Act act = Act::tanh;  // a: tanh, or relu
  int64_t H = 0, out = 0, I = 0, padded = 0;
  std::vector<T> weight_ih, weight_hh, bias_ih, bias_hh, zx, zh, c;
  std::vector<T> peephole;                        // peephole-lstm: p_i, p_f, p_o, H each
  Norm<T> norm_ih, norm_hh, norm_cell;            // layernorm-lstm (norm_ih: layers above the first)
  std::vector<T> weight_hr, m;                    // projected-lstm: W_hr packed (P, H), and o a(c) (H)
};

// activations.h's, with torch's own tanh for floats too: the tokens must be the Python path's
template <typename T>
void apply(Act a, T* out, const T* in, int64_t n) {
  activate<T, FloatMath::torch>(a, out, in, n);
}

// z = W x + b, or LN(W x) + b where the layer normalises (z: `padded` entries, `n` of them the layer's)
template <typename T>
void project(const std::vector<T>& packed, int64_t padded, int64_t C, const T* x, const std::vector<T>& bias,
             const Norm<T>& norm, const std::vector<T>& zeros, int64_t n, T* __restrict__ z) {
  if (!norm.on()) return product<T>(packed, padded, C, x, bias.data(), z);
  product<T>(packed, padded, C, x, zeros.data(), z);
  norm.apply(z, n);
  const T* __restrict__ b = bias.data();
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) z[k] += b[k];
}

// --- the updates: s (the layer's output) from z = zx + zh (the GRU: zx and zh apart), one per family ---

// The LSTMs' shared part: i, f = sigma(z_i, z_f), r = a(z_r) in place, and c = f c + i r
template <typename T>
void lstm_cell_state(Layer<T>& layer, T* __restrict__ z) {
  const int64_t H = layer.H;
  T* __restrict__ c = layer.c.data();
  apply(Act::sigmoid, z, z, 2 * H);
  apply(layer.act, z + 2 * H, z + 2 * H, H);
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) c[k] = z[H + k] * c[k] + z[k] * z[2 * H + k];
}

template <typename T>
void lstm_update(Layer<T>& layer, T* __restrict__ z, T* __restrict__ s) {
  const int64_t H = layer.H;
  lstm_cell_state(layer, z);
  apply(Act::sigmoid, z + 3 * H, z + 3 * H, H);
  apply(layer.act, s, layer.c.data(), H);
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) s[k] *= z[3 * H + k];
}

template <typename T>
void peephole_update(Layer<T>& layer, T* __restrict__ z, T* __restrict__ s) {
  const int64_t H = layer.H;
  T* __restrict__ c = layer.c.data();
  const T *__restrict__ p_i = layer.peephole.data(), *__restrict__ p_f = p_i + H, *__restrict__ p_o = p_i + 2 * H;
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) {  // i and f read the old c
    z[k] += p_i[k] * c[k];
    z[H + k] += p_f[k] * c[k];
  }
  lstm_cell_state(layer, z);
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) z[3 * H + k] += p_o[k] * c[k];  // o reads the new one
  apply(Act::sigmoid, z + 3 * H, z + 3 * H, H);
  apply(layer.act, s, c, H);
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) s[k] *= z[3 * H + k];
}

template <typename T>
void layernorm_update(Layer<T>& layer, T* __restrict__ z, T* __restrict__ s) {
  const int64_t H = layer.H;
  lstm_cell_state(layer, z);
  apply(Act::sigmoid, z + 3 * H, z + 3 * H, H);
  std::copy(layer.c.begin(), layer.c.end(), s);
  layer.norm_cell.apply(s, H);
  apply(layer.act, s, s, H);
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) s[k] *= z[3 * H + k];
}

template <typename T>
void projected_update(Layer<T>& layer, T* __restrict__ z, T* __restrict__ s, const std::vector<T>& zeros) {
  const int64_t H = layer.H;
  T* __restrict__ m = layer.m.data();
  lstm_cell_state(layer, z);
  apply(Act::sigmoid, z + 3 * H, z + 3 * H, H);
  apply(layer.act, m, layer.c.data(), H);
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) m[k] *= z[3 * H + k];
  product<T>(layer.weight_hr, rounded(layer.out, Vec<T>::size()), H, m, zeros.data(), s);  // s = W_hr m
}

template <typename T>
void gru_update(Layer<T>& layer, T* __restrict__ z, const T* __restrict__ zh, T* __restrict__ s) {
  const int64_t H = layer.H;
#pragma omp simd
  for (int64_t k = 0; k < 2 * H; ++k) z[k] += zh[k];
  apply(Act::sigmoid, z, z, 2 * H);  // r, u
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) z[2 * H + k] += z[k] * zh[2 * H + k];
  apply(layer.act, z + 2 * H, z + 2 * H, H);  // n
#pragma omp simd
  for (int64_t k = 0; k < H; ++k) s[k] = (T(1) - z[H + k]) * z[2 * H + k] + z[H + k] * s[k];
}

// vanilla, residual, input and forget: one state, at most two gates
template <typename T>
void simple_update(Layer<T>& layer, T* __restrict__ z, T* __restrict__ s) {
  const int64_t H = layer.H;
  switch (layer.cell) {
    case Cell::vanilla: return apply(layer.act, s, z, H);
    case Cell::residual_after:
      apply(layer.act, z, z, H);
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) s[k] += z[k];
      return;
    case Cell::residual_before:
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) z[k] += s[k];
      return apply(layer.act, s, z, H);
    case Cell::input:
      apply(Act::sigmoid, z, z, H);
      apply(layer.act, z + H, z + H, H);
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) s[k] += z[k] * z[H + k];
      return;
    case Cell::forget:
      apply(Act::sigmoid, z, z, 2 * H);
      apply(layer.act, z + 2 * H, z + 2 * H, H);
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) s[k] = z[H + k] * s[k] + z[k] * z[2 * H + k];
      return;
    default: TORCH_CHECK(false, "rnnlab generate: simple_update of a gated LSTM or GRU");
  }
}

// s (the layer's output) from zx and zh; both are overwritten. `zeros`: at least padded and P entries.
template <typename T>
void update(Layer<T>& layer, T* __restrict__ s, const std::vector<T>& zeros) {
  T* __restrict__ z = layer.zx.data();
  if (layer.cell == Cell::gru) return gru_update(layer, z, layer.zh.data(), s);
  const T* __restrict__ zh = layer.zh.data();
  const int64_t n = gates(layer.cell) * layer.H;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) z[k] += zh[k];
  switch (layer.cell) {
    case Cell::lstm: return lstm_update(layer, z, s);
    case Cell::peephole_lstm: return peephole_update(layer, z, s);
    case Cell::layernorm_lstm: return layernorm_update(layer, z, s);
    case Cell::projected_lstm: return projected_update(layer, z, s, zeros);
    default: return simple_update(layer, z, s);
  }
}

// The next token from `logits` (V entries; changed in place), as choose_token + torch.multinomial.
template <typename T>
int64_t choose(T* logits, int64_t V, double temperature, int64_t top_k, std::vector<T>& scratch,
               std::vector<float>& probs, Tensor& q, const c10::optional<at::Generator>& generator) {
  logits[0] = -std::numeric_limits<T>::infinity();  // <unk>: no character at all
  if (temperature == 0) {  // torch.argmax: the first maximum, where a NaN counts as the largest
    const T* nan = std::find_if(logits, logits + V, [](T v) { return std::isnan(v); });
    return (nan != logits + V ? nan : std::max_element(logits, logits + V)) - logits;
  }
  const T scale = T(1) / static_cast<T>(temperature);
  for (int64_t k = 0; k < V; ++k) logits[k] *= scale;
  if (top_k > 0) {
    const int64_t k = std::min(top_k, V);
    scratch.assign(logits, logits + V);
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<T>());
    const T kth = scratch[k - 1];
    for (int64_t i = 0; i < V; ++i)
      if (logits[i] < kth) logits[i] = -std::numeric_limits<T>::infinity();
  }
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) top = std::max(top, probs[i] = static_cast<float>(logits[i]));
  float total = 0;
  for (int64_t i = 0; i < V; ++i) total += probs[i] = std::exp(probs[i] - top);
  bool valid = true;
  for (int64_t i = 0; i < V; ++i) valid &= (probs[i] /= total) >= 0 && probs[i] < std::numeric_limits<float>::infinity();
  TORCH_CHECK(valid, "probability tensor contains either `inf`, `nan` or element < 0");  // torch.multinomial's check
  q.exponential_(1.0, generator);  // torch.multinomial's draw: one call on a (1, V) float tensor
  const float* e = q.data_ptr<float>();
  int64_t best = 0;
  float best_value = -1;
  for (int64_t i = 0; i < V; ++i) {
    const float value = probs[i] / e[i];
    if (value > best_value) best = i, best_value = value;
  }
  return best;
}

using Named = std::map<std::string, Tensor>;

// extras[name], which the layer's family needs, of exactly `numel` values
const Tensor& named(const Named& extras, const char* name, int64_t numel, int64_t l, const std::string& cell) {
  const auto found = extras.find(name);
  TORCH_CHECK_VALUE(found != extras.end(), "rnnlab generate: layer ", l, " (", cell, ") needs the extra ", name);
  TORCH_CHECK_VALUE(found->second.numel() == numel, "rnnlab generate: layer ", l, ": ", name, " must hold ", numel,
                    " values; got ", found->second.numel());
  return found->second;
}

// Layer l, packed, with the cell state c0 (the LSTMs'); its input weights only above the first layer.
template <typename T>
Layer<T> build_layer(int64_t l, const std::string& name, bool relu, const Tensor& weight_ih, const Tensor& weight_hh,
                     const Tensor& bias_ih, const Tensor& bias_hh, const Tensor& c0, const Named& extras,
                     const std::vector<double>& eps) {
  Layer<T> layer;
  layer.cell = cell_named(name);
  layer.act = relu ? Act::relu : Act::tanh;
  const int64_t K = gates(layer.cell), lanes = Vec<T>::size();
  TORCH_CHECK_VALUE(weight_hh.dim() == 2 && weight_hh.size(0) % K == 0, "rnnlab generate: layer ", l,
                    ": weight_hh must have ", K, " H rows for ", name);
  layer.H = weight_hh.size(0) / K;
  layer.out = weight_hh.size(1);  // what the gates read: the layer's output
  TORCH_CHECK_VALUE(layer.cell == Cell::projected_lstm || layer.out == layer.H, "rnnlab generate: layer ", l,
                    ": weight_hh must be (", K, " H, H) for ", name);
  layer.padded = rounded(K * layer.H, lanes);
  layer.weight_hh = pack<T>(weight_hh);
  layer.bias_hh = to_vector<T>(bias_hh, layer.padded);
  if (l > 0) {
    TORCH_CHECK_VALUE(weight_ih.dim() == 2 && weight_ih.size(0) == K * layer.H, "rnnlab generate: layer ", l,
                      ": weight_ih must have ", K * layer.H, " rows");
    layer.I = weight_ih.size(1);
    layer.weight_ih = pack<T>(weight_ih);
    layer.bias_ih = to_vector<T>(bias_ih, layer.padded);
  }
  layer.zx.assign(layer.padded, T(0));
  layer.zh.assign(layer.padded, T(0));
  if (K == 4) layer.c = to_vector<T>(c0, layer.H);
  const int64_t H = layer.H;
  switch (layer.cell) {
    case Cell::peephole_lstm: layer.peephole = to_vector<T>(named(extras, "peephole", 3 * H, l, name), 3 * H); break;
    case Cell::layernorm_lstm: {
      TORCH_CHECK_VALUE(eps.size() == 3, "rnnlab generate: layer ", l, ": norm_eps must hold the epsilons of "
                        "LN_x, LN_h and LN_c");
      auto norm = [&](Norm<T>& into, const char* gain, const char* shift, int64_t n, double e) {
        into.gain = to_vector<T>(named(extras, gain, n, l, name), n);
        into.shift = to_vector<T>(named(extras, shift, n, l, name), n);
        into.eps = e;
      };
      if (l > 0) norm(layer.norm_ih, "gain_ih", "shift_ih", 4 * H, eps[0]);  // layer 0's is in the table
      norm(layer.norm_hh, "gain_hh", "shift_hh", 4 * H, eps[1]);
      norm(layer.norm_cell, "gain_cell", "shift_cell", H, eps[2]);
      break;
    }
    case Cell::projected_lstm: {
      const Tensor& weight_hr = named(extras, "weight_hr", layer.out * H, l, name);
      TORCH_CHECK_VALUE(weight_hr.dim() == 2 && weight_hr.size(0) == layer.out, "rnnlab generate: layer ", l,
                        ": weight_hr must be (P, H) = (", layer.out, ", ", H, ")");
      layer.weight_hr = pack<T>(weight_hr);
      layer.m.assign(H, T(0));
      break;
    }
    default: break;
  }
  return layer;
}

template <typename T>
Tensor generate_typed(const std::vector<std::string>& cells, const std::vector<bool>& relu, const Tensor& table,
                      const std::vector<Tensor>& weight_ih, const std::vector<Tensor>& weight_hh,
                      const std::vector<Tensor>& bias_ih, const std::vector<Tensor>& bias_hh,
                      const std::vector<Tensor>& s0, const std::vector<Tensor>& c0, const std::vector<Named>& extras,
                      const std::vector<std::vector<double>>& norm_eps, const Tensor& readout_weight,
                      const Tensor& readout_bias, const Tensor& first_logits, int64_t length, double temperature,
                      int64_t top_k, c10::optional<at::Generator> generator) {
  const int64_t L = static_cast<int64_t>(weight_hh.size()), lanes = Vec<T>::size();
  const int64_t V = readout_weight.size(0), Hout = readout_weight.size(1);
  std::vector<Layer<T>> layers;
  std::vector<std::vector<T>> s(L);  // each layer's output, padded: the projection writes whole vectors
  int64_t widest = 0;
  for (int64_t l = 0; l < L; ++l) {
    layers.push_back(build_layer<T>(l, cells[l], relu[l], weight_ih[l], weight_hh[l], bias_ih[l], bias_hh[l], c0[l],
                                    extras[l], norm_eps[l]));
    const Layer<T>& layer = layers.back();
    TORCH_CHECK_VALUE(l == 0 || layer.I == layers[l - 1].out, "rnnlab generate: layer ", l, " reads ", layer.I,
                      " inputs; the layer below gives ", layers[l - 1].out);
    s[l] = to_vector<T>(s0[l], rounded(layer.out, lanes));
    widest = std::max({widest, layer.padded, rounded(layer.out, lanes)});
  }
  const std::vector<T> zeros(widest, T(0));  // the products' start where the biases come after a step
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(1) == gates(layers[0].cell) * layers[0].H, "rnnlab generate: the "
                    "table's rows must be layer 0's K H input pre-activations");
  TORCH_CHECK_VALUE(Hout == layers[L - 1].out, "rnnlab generate: the readout reads ", Hout, " inputs; the last layer "
                    "gives ", layers[L - 1].out);
  const int64_t Vpadded = rounded(V, lanes);
  const std::vector<T> readout = pack<T>(readout_weight), readout_b = to_vector<T>(readout_bias, Vpadded);
  const Tensor rows = table.contiguous();
  const T* table_data = rows.data_ptr<T>();
  const int64_t table_width = rows.size(1), tokens = rows.size(0);
  std::vector<T> logits = to_vector<T>(first_logits, Vpadded), scratch;
  std::vector<float> probs(V);
  Tensor q = at::empty({1, V}, at::kFloat);
  Tensor chosen = at::empty({length}, at::kLong);
  int64_t* out = chosen.data_ptr<int64_t>();
  for (int64_t t = 0; t < length; ++t) {
    const int64_t token = choose<T>(logits.data(), V, temperature, top_k, scratch, probs, q, generator);
    out[t] = token;
    if (t + 1 == length) break;  // the last choice needs no step after it
    TORCH_CHECK(token >= 0 && token < tokens, "rnnlab generate: token ", token, " outside the table");
    for (int64_t l = 0; l < L; ++l) {
      Layer<T>& layer = layers[l];
      const int64_t n = gates(layer.cell) * layer.H;
      if (l == 0) {
        const T* row = table_data + token * table_width;
        std::copy(row, row + table_width, layer.zx.begin());
      } else {
        project<T>(layer.weight_ih, layer.padded, layer.I, s[l - 1].data(), layer.bias_ih, layer.norm_ih, zeros, n,
                   layer.zx.data());
      }
      project<T>(layer.weight_hh, layer.padded, layer.out, s[l].data(), layer.bias_hh, layer.norm_hh, zeros, n,
                 layer.zh.data());
      update<T>(layer, s[l].data(), zeros);
    }
    product<T>(readout, Vpadded, Hout, s[L - 1].data(), readout_b.data(), logits.data());
  }
  return chosen;
}

Tensor generate(const std::vector<std::string>& cells, const std::vector<bool>& relu, const Tensor& table,
                const std::vector<Tensor>& weight_ih, const std::vector<Tensor>& weight_hh,
                const std::vector<Tensor>& bias_ih, const std::vector<Tensor>& bias_hh, const std::vector<Tensor>& s0,
                const std::vector<Tensor>& c0, const std::vector<Named>& extras,
                const std::vector<std::vector<double>>& norm_eps, const Tensor& readout_weight,
                const Tensor& readout_bias, const Tensor& first_logits, int64_t length, double temperature,
                int64_t top_k, c10::optional<at::Generator> generator) {
  const size_t L = weight_hh.size();
  TORCH_CHECK_VALUE(L > 0 && cells.size() == L && relu.size() == L && weight_ih.size() == L && bias_ih.size() == L &&
                        bias_hh.size() == L && s0.size() == L && c0.size() == L && extras.size() == L &&
                        norm_eps.size() == L,
                    "rnnlab generate: one cell, relu, weight_ih, weight_hh, bias_ih, bias_hh, s0, c0, extras and "
                    "norm_eps per layer");
  TORCH_CHECK_VALUE(length >= 0, "rnnlab generate: length must be >= 0; got ", length);
  TORCH_CHECK_VALUE(readout_weight.dim() == 2 && first_logits.numel() == readout_weight.size(0),
                    "rnnlab generate: first_logits must hold one logit per row of readout_weight");
  const auto dtype = readout_weight.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble, "rnnlab generate: float32 or float64 only");
  at::NoGradGuard no_grad;
  pybind11::gil_scoped_release unlocked;  // nothing below touches Python objects
  if (dtype == at::kDouble)
    return generate_typed<double>(cells, relu, table, weight_ih, weight_hh, bias_ih, bias_hh, s0, c0, extras,
                                  norm_eps, readout_weight, readout_bias, first_logits, length, temperature, top_k,
                                  generator);
  return generate_typed<float>(cells, relu, table, weight_ih, weight_hh, bias_ih, bias_hh, s0, c0, extras, norm_eps,
                               readout_weight, readout_bias, first_logits, length, temperature, top_k, generator);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("generate", &generate, "free-running generation at batch 1 (generation.py prepares the arguments)",
        pybind11::arg("cells"), pybind11::arg("relu"), pybind11::arg("table"), pybind11::arg("weight_ih"),
        pybind11::arg("weight_hh"), pybind11::arg("bias_ih"), pybind11::arg("bias_hh"), pybind11::arg("s0"),
        pybind11::arg("c0"), pybind11::arg("extras"), pybind11::arg("norm_eps"), pybind11::arg("readout_weight"),
        pybind11::arg("readout_bias"), pybind11::arg("first_logits"), pybind11::arg("length"),
        pybind11::arg("temperature"), pybind11::arg("top_k"), pybind11::arg("generator") = pybind11::none());
}
