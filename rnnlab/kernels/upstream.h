// The gradient reaching a backward loop's outputs, (T, B, W), as autograd hands it over (loops.cpp,
// cell_loops.cpp). compiled.py hashes this header into each including module's build key.
//
// It is rarely contiguous: the gradient of a batch-first (B, T, W) output seen time-major (a readout's),
// or the expanded ones of a sum (strides 0). A contiguous copy of all T steps before the loop cost a
// fresh (T, B, W) buffer, first touched on one thread outside the loop's team (at B 32, H 128, T 100 its
// page faults and copy were a tenth of the vanilla cell's forward+backward, on one thread however many
// the loop had). Here each thread copies its own share of a step's rows when the step needs them, into
// one (B, W) scratch shared by the team (the shares of one step do not overlap; a sync separates steps).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

template <typename T>
class Upstream {
 public:
  explicit Upstream(const at::Tensor& d_out)
      : data_(d_out.data_ptr<T>()),
        st_(d_out.stride(0)),
        sb_(d_out.stride(1)),
        sw_(d_out.stride(2)),
        B_(d_out.size(1)),
        W_(d_out.size(2)),
        contiguous_(d_out.is_contiguous()) {
    if (!contiguous_) scratch_ = at::empty({B_, W_}, d_out.options());
  }
  // p with p[b * W + k] = d_out[t, b, k] for the rows [r0, r1) and columns [k0, k1) of step t (only those:
  // the rest of a non-contiguous step is another thread's, or not read)
  const T* step(int64_t t, int64_t r0, int64_t r1, int64_t k0 = 0, int64_t k1 = -1) const {
    if (contiguous_) return data_ + t * B_ * W_;
    if (k1 < 0) k1 = W_;
    T* out = scratch_.data_ptr<T>();
    for (int64_t b = r0; b < r1; ++b) {
      const T* __restrict__ from = data_ + t * st_ + b * sb_;
      T* __restrict__ to = out + b * W_;
      if (sw_ == 1) {
        std::copy(from + k0, from + k1, to + k0);
      } else {
        for (int64_t k = k0; k < k1; ++k) to[k] = from[k * sw_];
      }
    }
    return out;
  }

 private:
  const T* data_;
  int64_t st_, sb_, sw_, B_, W_;
  bool contiguous_;
  at::Tensor scratch_;
};
