// Free-running generation in one call: for every new token, the cells' step in each layer, the linear
// readout and the choice of the next token (greedy, or sampled at a temperature from the top k), at
// batch 1. What generation.py hands over is already reduced to what one step reads:
//
//   layer 0     zx = T[token]                T = E W_ih^T + b_ih: the embedding (or the fed-back embedding
//                                            through W_yh) and input projection of every token, one row
//                                            per token, so no step reads W_ih
//   layer l>0   zx = W_ih x + b_ih           x: the new output of the layer below
//   every layer zh = W_hh s + b_hh, and the cell's update from zx and zh (below: `update`)
//   readout     logits = W_out s + b_out
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
  Tensor c = t.contiguous();
  std::vector<T> out(length, T(0));
  std::copy(c.data_ptr<T>(), c.data_ptr<T>() + c.numel(), out.begin());
  return out;
}

// The cells, as cells.py writes them, from zx = U x + W y + b_ih and zh = V s + b_hh (z = zx + zh):
//   lstm      i, f, o = sigma(z_i, z_f, z_o), r = a(z_r);  c = f c + i r;  s = o a(c)
//   gru       r = sigma(zx_r + zh_r), u = sigma(zx_z + zh_z), n = a(zx_n + r zh_n);  s = (1 - u) n + u s
//   vanilla   s = a(z);   residual  s = s + a(z) (after) or a(z + s) (before)
//   input     s = s + sigma(z_i) a(z_r);   forget  s = sigma(z_f) s + sigma(z_i) a(z_r)
enum class Cell { lstm, gru, vanilla, residual_after, residual_before, input, forget };

Cell cell_named(const std::string& name) {
  static const std::pair<const char*, Cell> names[] = {
      {"lstm", Cell::lstm}, {"gru", Cell::gru}, {"vanilla", Cell::vanilla}, {"residual_after", Cell::residual_after},
      {"residual_before", Cell::residual_before}, {"input", Cell::input}, {"forget", Cell::forget}};
  for (const auto& [key, cell] : names)
    if (name == key) return cell;
  TORCH_CHECK_VALUE(false, "rnnlab generate: unknown cell ", name);
  return Cell::lstm;  // not reached
}

int64_t gates(Cell cell) {
  switch (cell) {
    case Cell::lstm: return 4;
    case Cell::gru: case Cell::forget: return 3;
    case Cell::input: return 2;
    default: return 1;
  }
}

// One layer, packed. Layer 0 reads zx as a row of `table` (tokens x K H); the others compute it from
// the new output of the layer below.
template <typename T>
struct Layer {
  Cell cell = Cell::lstm;
  Act act = Act::tanh;  // a: tanh, or relu (the vanilla and residual cells)
  int64_t H = 0, I = 0, padded = 0;
  std::vector<T> weight_ih, weight_hh, bias_ih, bias_hh, zx, zh, c;
};

// activations.h's, with torch's own tanh for floats too: the tokens must be the Python path's
template <typename T>
void apply(Act a, T* out, const T* in, int64_t n) {
  activate<T, FloatTanh::torch>(a, out, in, n);
}

// s (the layer's output: the LSTM's s_bar) from zx and zh; both are overwritten.
template <typename T>
void update(Layer<T>& layer, T* __restrict__ s) {
  const int64_t H = layer.H, n = gates(layer.cell) * H;
  T* __restrict__ z = layer.zx.data();
  T* __restrict__ zh = layer.zh.data();
  if (layer.cell == Cell::gru) {
#pragma omp simd
    for (int64_t k = 0; k < 2 * H; ++k) z[k] += zh[k];
    apply(Act::sigmoid, z, z, 2 * H);  // r, u
#pragma omp simd
    for (int64_t k = 0; k < H; ++k) z[2 * H + k] += z[k] * zh[2 * H + k];
    apply(layer.act, z + 2 * H, z + 2 * H, H);  // n
#pragma omp simd
    for (int64_t k = 0; k < H; ++k) s[k] = (T(1) - z[H + k]) * z[2 * H + k] + z[H + k] * s[k];
    return;
  }
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) z[k] += zh[k];
  switch (layer.cell) {
    case Cell::lstm: {
      T* __restrict__ c = layer.c.data();
      apply(Act::sigmoid, z, z, 2 * H);  // i, f
      apply(layer.act, z + 2 * H, z + 2 * H, H);
      apply(Act::sigmoid, z + 3 * H, z + 3 * H, H);
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) c[k] = z[H + k] * c[k] + z[k] * z[2 * H + k];
      apply(layer.act, s, c, H);
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) s[k] *= z[3 * H + k];
      return;
    }
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
    case Cell::gru: return;  // above
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

template <typename T>
Tensor generate_typed(const std::vector<std::string>& cells, const std::vector<bool>& relu, const Tensor& table,
                      const std::vector<Tensor>& weight_ih, const std::vector<Tensor>& weight_hh,
                      const std::vector<Tensor>& bias_ih, const std::vector<Tensor>& bias_hh,
                      const std::vector<Tensor>& s0, const std::vector<Tensor>& c0, const Tensor& readout_weight,
                      const Tensor& readout_bias, const Tensor& first_logits, int64_t length, double temperature,
                      int64_t top_k, c10::optional<at::Generator> generator) {
  const int64_t L = static_cast<int64_t>(weight_hh.size()), lanes = Vec<T>::size();
  const int64_t V = readout_weight.size(0), Hout = readout_weight.size(1);
  std::vector<Layer<T>> layers(L);
  std::vector<std::vector<T>> s(L);
  for (int64_t l = 0; l < L; ++l) {
    Layer<T>& layer = layers[l];
    layer.cell = cell_named(cells[l]);
    layer.act = relu[l] ? Act::relu : Act::tanh;
    layer.H = weight_hh[l].size(1);
    layer.padded = rounded(gates(layer.cell) * layer.H, lanes);
    TORCH_CHECK_VALUE(weight_hh[l].size(0) == gates(layer.cell) * layer.H, "rnnlab generate: layer ", l,
                      ": weight_hh must have ", gates(layer.cell), " H rows for ", cells[l]);
    layer.weight_hh = pack<T>(weight_hh[l]);
    layer.bias_hh = to_vector<T>(bias_hh[l], layer.padded);
    if (l > 0) {
      layer.I = weight_ih[l].size(1);
      layer.weight_ih = pack<T>(weight_ih[l]);
      layer.bias_ih = to_vector<T>(bias_ih[l], layer.padded);
    }
    layer.zx.assign(layer.padded, T(0));
    layer.zh.assign(layer.padded, T(0));
    if (layer.cell == Cell::lstm) layer.c = to_vector<T>(c0[l], layer.H);
    s[l] = to_vector<T>(s0[l], layer.H);
  }
  TORCH_CHECK_VALUE(table.size(1) == gates(layers[0].cell) * layers[0].H, "rnnlab generate: the table's rows must "
                    "be layer 0's K H input pre-activations");
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
      if (l == 0) {
        const T* row = table_data + token * table_width;
        std::copy(row, row + table_width, layer.zx.begin());
      } else {
        product<T>(layer.weight_ih, layer.padded, layer.I, s[l - 1].data(), layer.bias_ih.data(), layer.zx.data());
      }
      product<T>(layer.weight_hh, layer.padded, layer.H, s[l].data(), layer.bias_hh.data(), layer.zh.data());
      update<T>(layer, s[l].data());
    }
    product<T>(readout, Vpadded, Hout, s[L - 1].data(), readout_b.data(), logits.data());
  }
  return chosen;
}

Tensor generate(const std::vector<std::string>& cells, const std::vector<bool>& relu, const Tensor& table,
                const std::vector<Tensor>& weight_ih, const std::vector<Tensor>& weight_hh,
                const std::vector<Tensor>& bias_ih, const std::vector<Tensor>& bias_hh, const std::vector<Tensor>& s0,
                const std::vector<Tensor>& c0, const Tensor& readout_weight, const Tensor& readout_bias,
                const Tensor& first_logits, int64_t length, double temperature, int64_t top_k,
                c10::optional<at::Generator> generator) {
  const size_t L = weight_hh.size();
  TORCH_CHECK_VALUE(L > 0 && cells.size() == L && relu.size() == L && weight_ih.size() == L && bias_ih.size() == L &&
                        bias_hh.size() == L && s0.size() == L && c0.size() == L,
                    "rnnlab generate: one cell, relu, weight_ih, weight_hh, bias_ih, bias_hh, s0 and c0 per layer");
  TORCH_CHECK_VALUE(length >= 0, "rnnlab generate: length must be >= 0; got ", length);
  TORCH_CHECK_VALUE(first_logits.numel() == readout_weight.size(0), "rnnlab generate: first_logits must hold ",
                    readout_weight.size(0), " logits; got ", first_logits.numel());
  const auto dtype = readout_weight.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble, "rnnlab generate: float32 or float64 only");
  at::NoGradGuard no_grad;
  pybind11::gil_scoped_release unlocked;  // nothing below touches Python objects
  if (dtype == at::kDouble)
    return generate_typed<double>(cells, relu, table, weight_ih, weight_hh, bias_ih, bias_hh, s0, c0, readout_weight,
                                  readout_bias, first_logits, length, temperature, top_k, generator);
  return generate_typed<float>(cells, relu, table, weight_ih, weight_hh, bias_ih, bias_hh, s0, c0, readout_weight,
                               readout_bias, first_logits, length, temperature, top_k, generator);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("generate", &generate, "free-running generation at batch 1 (generation.py prepares the arguments)",
        pybind11::arg("cells"), pybind11::arg("relu"), pybind11::arg("table"), pybind11::arg("weight_ih"),
        pybind11::arg("weight_hh"), pybind11::arg("bias_ih"), pybind11::arg("bias_hh"), pybind11::arg("s0"),
        pybind11::arg("c0"), pybind11::arg("readout_weight"), pybind11::arg("readout_bias"),
        pybind11::arg("first_logits"), pybind11::arg("length"), pybind11::arg("temperature"),
        pybind11::arg("top_k"), pybind11::arg("generator") = pybind11::none());
}
