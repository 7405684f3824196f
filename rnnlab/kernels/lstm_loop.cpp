// The LSTM time loop of `fused` in C++, for the sizes where Python's per-operation overhead is the
// cost (small batches, long sequences). Same buffers, same equations, same results as the Python
// loop in fused.py (_LSTM), for the standard activations (tanh candidate, sigmoid gates):
//   forward   i, f, o = sigma(z_i, z_f, z_o), r = tanh(z_r);  c = f c' + i r;  h = o tanh(c)
//   backward  dz_o = dh tanh(c) o (1 - o);   dc = dc' + dh o (1 - tanh(c)^2)
//             dz_i = dc r i (1 - i);  dz_f = dc c' f (1 - f);  dz_r = dc i (1 - r^2);  dc' = dc f
// The elementwise work is one plain loop per step; the matrix products stay ATen's (MKL, oneDNN).
// Built at first use by torch.utils.cpp_extension; rnnlab works without it.
#include <torch/extension.h>

#include <cmath>
#include <vector>

using at::Tensor;

namespace {

template <typename T>
inline T sigmoid(T z) { return T(1) / (T(1) + std::exp(-z)); }

int64_t rows_at(const std::vector<int64_t>& sizes, int64_t t, int64_t batch) {
  return sizes.empty() ? batch : sizes[t];  // sequences still running at step t (sorted by length)
}

// __restrict__ and `omp simd` let the compiler vectorise, exp and tanh included (libmvec).
template <typename T>
void forward_step(T* __restrict__ g, const T* __restrict__ c_prev, T* __restrict__ c, T* __restrict__ tc,
                  T* __restrict__ h, int64_t rows, int64_t H) {
  for (int64_t b = 0; b < rows; ++b) {
    T* __restrict__ gb = g + b * 4 * H;
#pragma omp simd
    for (int64_t k = 0; k < H; ++k) {
      T i = sigmoid(gb[k]), f = sigmoid(gb[H + k]), r = std::tanh(gb[2 * H + k]), o = sigmoid(gb[3 * H + k]);
      gb[k] = i; gb[H + k] = f; gb[2 * H + k] = r; gb[3 * H + k] = o;
      T cn = f * c_prev[b * H + k] + i * r;
      T tn = std::tanh(cn);
      c[b * H + k] = cn; tc[b * H + k] = tn; h[b * H + k] = o * tn;
    }
  }
}

template <typename T>
void backward_step(const T* __restrict__ g, const T* __restrict__ c_prev, const T* __restrict__ tc,
                   const T* __restrict__ d_out, const T* __restrict__ carry_h, T* __restrict__ carry_c,
                   T* __restrict__ dz, int64_t rows, int64_t H) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict__ gb = g + b * 4 * H;
    T* __restrict__ db = dz + b * 4 * H;
#pragma omp simd
    for (int64_t k = 0; k < H; ++k) {
      int64_t j = b * H + k;
      T i = gb[k], f = gb[H + k], r = gb[2 * H + k], o = gb[3 * H + k], t = tc[j];
      T dh = carry_h[j] + d_out[j];
      T dc = carry_c[j] + dh * o * (T(1) - t * t);
      db[3 * H + k] = dh * t * o * (T(1) - o);
      db[k] = dc * r * i * (T(1) - i);
      db[H + k] = dc * c_prev[j] * f * (T(1) - f);
      db[2 * H + k] = dc * i * (T(1) - r * r);
      carry_c[j] = dc * f;
    }
  }
}

Tensor read(const Tensor& h, const c10::optional<Tensor>& mask, int64_t rows) {
  return mask ? h * mask->narrow(0, 0, rows) : h;
}

}  // namespace

// gates (T, B, 4H): Zx on entry, the gate values on exit. cs has T steps, or a ring of 2 when not
// saving. Returns nothing: hs, cs, tcs are filled (hs and tcs rows of finished sequences untouched).
void lstm_forward(Tensor gates, const c10::optional<Tensor>& weight_hh, const c10::optional<Tensor>& mask,
                  const Tensor& h0, const Tensor& c0, Tensor hs, Tensor cs, Tensor tcs, std::vector<int64_t> sizes) {
  const int64_t steps = gates.size(0), batch = gates.size(1), H = h0.size(1);
  const int64_t ring_c = cs.size(0), ring_t = tcs.size(0);
  c10::optional<Tensor> vt;
  if (weight_hh) vt = weight_hh->t();
  const int64_t step = batch * H;  // elements of one step of hs, cs, tcs
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward", [&] {
    scalar_t *g = gates.data_ptr<scalar_t>(), *h = hs.data_ptr<scalar_t>();
    scalar_t *c = cs.data_ptr<scalar_t>(), *tc = tcs.data_ptr<scalar_t>();
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = rows_at(sizes, t, batch);
      if (vt) {  // the one matrix product of the step; views only here, they cost a dispatch each
        Tensor h_prev = t == 0 ? h0 : hs.select(0, t - 1);
        Tensor g_t = gates.select(0, t);
        if (n < batch) h_prev = h_prev.narrow(0, 0, n), g_t = g_t.narrow(0, 0, n);
        g_t.addmm_(read(h_prev, mask, n), *vt);
      }
      const scalar_t* c_prev = t == 0 ? c0.data_ptr<scalar_t>() : c + ((t - 1) % ring_c) * step;
      forward_step<scalar_t>(g + t * 4 * step, c_prev, c + (t % ring_c) * step, tc + (t % ring_t) * step,
                             h + t * step, n, H);
    }
  });
}

// Fills dz (T, B, 4H) and turns carry_h, carry_c (the gradients of the final state on entry) into
// those of the initial state.
void lstm_backward(const Tensor& gates, const Tensor& cs, const Tensor& tcs, const Tensor& c0, const Tensor& d_out,
                   const c10::optional<Tensor>& weight_hh, const c10::optional<Tensor>& mask, Tensor carry_h,
                   Tensor carry_c, Tensor dz, std::vector<int64_t> sizes) {
  const int64_t steps = gates.size(0), batch = gates.size(1), H = c0.size(1);
  const int64_t step = batch * H;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    const scalar_t *g = gates.data_ptr<scalar_t>(), *c = cs.data_ptr<scalar_t>(), *tc = tcs.data_ptr<scalar_t>();
    const scalar_t* dout = d_out.data_ptr<scalar_t>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t n = rows_at(sizes, t, batch);
      const scalar_t* c_prev = t == 0 ? c0.data_ptr<scalar_t>() : c + (t - 1) * step;
      backward_step<scalar_t>(g + t * 4 * step, c_prev, tc + t * step, dout + t * step, carry_h.data_ptr<scalar_t>(),
                              carry_c.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>() + t * 4 * step, n, H);
      Tensor dz_t = dz.select(0, t), ch = carry_h;
      if (n < batch) dz_t = dz_t.narrow(0, 0, n), ch = ch.narrow(0, 0, n);
      if (!weight_hh) {
        ch.zero_();
      } else if (mask) {
        ch.copy_(at::mm(dz_t, *weight_hh).mul_(mask->narrow(0, 0, n)));
      } else {
        at::mm_out(ch, dz_t, *weight_hh);
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lstm_forward", &lstm_forward, "fused LSTM loop, forward");
  m.def("lstm_backward", &lstm_backward, "fused LSTM loop, backward");
}
