// A time loop's threads as one team for the whole loop (loops.cpp, cell_loops.cpp). compiled.py hashes
// this header into each including module's build key.
//
// Splitting each step over threads with at::parallel_for opens one OpenMP parallel region per step: a
// fork and a join of several microseconds, which the small steps of a recurrent loop (a few tens of
// microseconds at B = 32, H = 128) do not earn back. Here the loop opens ONE region (`in_team`), each
// thread takes its fixed share of every step, and the steps are separated by a barrier (`Team::sync`).
//
// Rules for the code inside: every thread of the team passes the same `sync`s in the same order (so the
// loop's control flow must depend only on what every thread computes alike); only the work inside
// `Team::run` may throw: the first exception is kept, the team's remaining work is skipped (the syncs are
// still passed, so no thread waits forever) and it is rethrown after the region, on the caller's thread;
// no ATen operation inside may itself go parallel (inside the region at::in_parallel_region() is true,
// so ATen runs nested work serially). The team is one thread (no region) where the caller is already
// inside a parallel region (its own parallel code, at::parallel_for), where torch runs one thread, and
// where the module is built without OpenMP (ATen's backend is not OpenMP: compiled.py adds no -fopenmp).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>

#ifdef __linux__
#include <sched.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

// Whether a loop whose threads keep the same block of rows at every step (split by rows, no lengths) runs
// their steps apart, without the sync between steps: a row's recurrence reads only its own row, so nothing
// crosses threads from one step to the next (the loop's region ends with a barrier all the same). A
// barrier per step, and each step waiting for the slower thread, cost the vanilla cell's loops a few
// percent of their two-thread time at (32, 128, 100). The modules' `set_apart`, for measuring.
inline bool steps_apart = true;

// Whether `Team::sync` is the team's own barrier (below) or OpenMP's. The modules' `set_own_barrier`,
// for measuring.
inline bool own_barrier = true;

// For testing that an exception inside the loop surfaces as one error: where `fault_armed`, the step
// `fault_step` (-1: the backward's last) throws in the last thread of the team. The modules' `set_fault`.
inline bool fault_armed = false;
inline int64_t fault_step = 0;

// The barrier between a team's steps. OpenMP's (libgomp's, which torch uses) took 230-245 ns a pass for
// two threads on this machine, this one 35 ns (measured, 200k passes): at B = 1, T = 1000 that is 0.2 ms
// of a 1.3 ms two-thread forward. A counter and a generation: the last thread to arrive resets the
// count and starts the next generation (release); the others wait for it (acquire), which makes every
// thread's writes before the barrier visible to every thread after it. A waiting thread spins a
// while (a step is microseconds), then yields its core, for where the team's threads outnumber the
// free cores (a busy machine): it waits for nothing but the other threads of its team, which pass
// every barrier even after a failure (`Team::run`).
class Barrier {
 public:
  void wait(int64_t size) {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    for (int64_t spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < SPINS) pause(); else std::this_thread::yield();
    }
  }

 private:
  static constexpr int64_t SPINS = 4000;  // about 0.1 ms of pauses before yielding
  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  alignas(64) std::atomic<int64_t> arrived_{0};
  alignas(64) std::atomic<int64_t> generation_{0};  // on its own cache line: the waiters read it
};

// What the threads of one team share: whether a part has failed, the first exception, the barrier.
struct TeamState {
  std::atomic<bool> failed{false};
  std::atomic_flag taken = ATOMIC_FLAG_INIT;
  std::exception_ptr error;
  Barrier barrier;
  void rethrow() const {
    if (error) std::rethrow_exception(error);
  }
};

// One thread of a team: its index among `size`.
class Team {
 public:
  Team(TeamState& state, int64_t size, int64_t index) : size(size), index(index), state_(state) {}
  const int64_t size, index;

  // work(), unless a thread of the team has failed; an exception is kept (the first) and fails the team
  template <typename Work>
  void run(const Work& work) {
    if (state_.failed.load(std::memory_order_relaxed)) return;
    try {
      work();
    } catch (...) {
      if (!state_.taken.test_and_set()) state_.error = std::current_exception();
      state_.failed.store(true);
    }
  }
  // the barrier between the steps (or the phases of one step): every thread of the team passes it
  void sync() const {
#ifdef _OPENMP
    if (size > 1) {
      if (own_barrier) {
        state_.barrier.wait(size);
      } else {
#pragma omp barrier
      }
    }
#endif
  }
  // [begin, end) of this thread's block of n items (blocks of `unit` items, the last one may be short;
  // contiguous, in thread order, as at::parallel_for splits a range)
  std::pair<int64_t, int64_t> block(int64_t n, int64_t unit = 1) const {
    const int64_t units = (n + unit - 1) / unit, per = (units + size - 1) / size;
    const int64_t begin = std::min(n, index * per * unit), end = std::min(n, (index + 1) * per * unit);
    return {begin, end};
  }
  // the step `t` throws here when set_fault(t) asked it to (for testing)
  void fault_at(int64_t t) const {
    TORCH_CHECK(!fault_armed || t != fault_step || index != size - 1, "rnnlab loops: the fault asked for at step ", t,
                " (set_fault), in thread ", index, " of ", size);
  }

 private:
  TeamState& state_;
};

// The CPUs this process may run on (its affinity mask where the system has one).
inline int64_t cpus_available() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// body(team) on every thread of a team of torch's intra-op threads (one region), or on the calling thread
// alone where `parallel` is false or no team can be formed; then the first exception inside is rethrown.
// With more of torch's threads than CPUs (`--threads 4` on two cores), the team is only as large as the
// CPUs: the others leave at once. Threads that meet at a barrier every few microseconds must all be
// running: with twice as many threads as cores, a two-core machine ran the vanilla cell at B = 1, T =
// 1000 in 56 ms with OpenMP's barrier and 225 ms with the team's, against 3 ms on one thread.
// (OpenMP's barrier, `own_barrier` false, needs every thread of the region: there the team is all of them.)
template <typename Body>
void in_team(bool parallel, const Body& body) {
  TeamState state;
#ifdef _OPENMP
  if (parallel && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    // no num_threads clause (as at::parallel_for: it makes GOMP rebuild its pool): torch's threads
    const int64_t cpus = cpus_available();
#pragma omp parallel
    {
      const int64_t size = own_barrier ? std::min<int64_t>(omp_get_num_threads(), cpus) : omp_get_num_threads();
      if (omp_get_thread_num() < size) {
        Team team(state, size, omp_get_thread_num());
        body(team);
      }
    }
    state.rethrow();
    return;
  }
#endif
  Team team(state, 1, 0);
  body(team);
  state.rethrow();
}
