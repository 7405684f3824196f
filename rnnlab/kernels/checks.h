// Argument checks shared by the C++ time loops (loops.cpp, cell_loops.cpp), written once.
// compiled.py hashes this header into each including module's build key.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

// sizes: empty, or the rows still running at each of the T steps, non-increasing within [0, B].
inline void check_sizes(const char* where, const std::vector<int64_t>& sizes, int64_t steps, int64_t batch) {
  if (sizes.empty()) return;
  TORCH_CHECK_VALUE(static_cast<int64_t>(sizes.size()) == steps, where, ": sizes must hold one row count per step (",
                    steps, "); got ", sizes.size());
  for (size_t t = 0; t < sizes.size(); ++t)
    TORCH_CHECK_VALUE(sizes[t] >= 0 && sizes[t] <= batch && (t == 0 || sizes[t] <= sizes[t - 1]), where,
                      ": sizes must be non-increasing row counts in [0, ", batch, "]; got ", sizes[t], " at step ", t);
}
