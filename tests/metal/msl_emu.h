// msl_emu.h: runs a subset of the Metal Shading Language on the CPU, so that the Radar Metal kernels
// (native/files/ggml/src/ggml-metal/kernels/radar.metal) can be tested on machines without Metal.
// C++17; include it, then the .metal source, then msl_emu_end.h (which drops the address-space macros
// again so that the rest of the file can use the standard library).
//
// What it maps:
//   - address spaces (device, constant, thread) and `kernel` are empty macros, threadgroup is `volatile`
//     (see below); the [[...]] argument attributes are ignored attributes (the caller passes the built-ins
//     positionally);
//   - half is _Float16 (IEEE binary16, round to nearest even like Metal's float->half conversion);
//     uint3 / ushort3 / float2 / float4 / half4 are small structs with .x .y .z (.w) and [];
//   - math functions (exp, log, tanh, sqrt, pow, fabs, round, max, min, isnan, ...) are the C++ ones in f32;
//     as_type reinterprets bits; FLT_MAX comes from <cfloat>;
//   - a dispatch runs the threadgroups one after another in a shuffled order, each with its threads as real
//     concurrent std::threads (one per thread of the threadgroup); threadgroup memory is one buffer per
//     threadgroup, filled with 0xff bytes (NaN, -1) before each so that reads of unwritten memory show;
//   - threadgroup_barrier waits for all threads of the threadgroup, simdgroup_barrier for the 32 of the
//     simdgroup (a futex barrier on Linux); simd_sum / simd_max / simd_min / simd_shuffle / simd_broadcast /
//     simd_prefix_exclusive_sum exchange values through the simdgroup with a barrier (so every lane must
//     reach them, as on a GPU where divergent lanes would not contribute).
//
// What it cannot emulate faithfully (the tests cannot check these):
//   - MSL's type rules: a missing address space on a pointer, an implicit conversion Metal rejects, a
//     function Metal lacks (e.g. log1p) or C++-only syntax compiles here but not with the Metal compiler;
//     `threadgroup` arrays declared inside a kernel body would be per thread here (the kernels take all
//     threadgroup memory as an argument);
//   - real SIMD scheduling: lanes here are threads that meet at every simd_* call; a kernel whose lanes
//     diverge around a simd_* call deadlocks or misbehaves here and is undefined on the GPU, but a race
//     that only shows with lockstep execution or with concurrent threadgroups is not seen (threadgroups
//     run one at a time; only their order is shuffled); a missing barrier shows only when the threads happen
//     to interleave badly (`volatile` threadgroup accesses are not reordered by the C++ compiler);
//   - floating point: f32 arithmetic here is IEEE with the C library's exp/log/tanh; Metal compiles with
//     fast math by default (approximate exp/log/tanh/pow, no guarantees for inf/NaN: comparisons with
//     INFINITY may be folded away there while they work here, so the Radar kernels use a finite floor and
//     test the mask's bits; their one isnan, for a NaN score, is as upstream's argsort uses it; a different
//     summation order in simd_sum), and its half conversions are the same RNE but not checked on hardware;
//   - performance, occupancy, threadgroup memory limits and alignment (only sizes are asserted).
#ifndef MSL_EMU_H
#define MSL_EMU_H

#include <algorithm>
#include <atomic>
#include <climits>
#include <cfloat>
#include <cmath>
#include <math.h>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#pragma GCC diagnostic ignored "-Wattributes"
#pragma GCC diagnostic ignored "-Wunused-parameter"

namespace msl {

// a reusable barrier for n threads (C++17 has no std::barrier): on Linux the waiters sleep on a futex of the
// generation counter (no mutex for the woken threads to queue on), elsewhere on a condition variable
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "the futex word");

class barrier {
  public:
    explicit barrier(int n) : n_(n) {}
    void arrive_and_wait() {
        const uint32_t gen = gen_.load(std::memory_order_acquire);
        if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
            count_.store(0, std::memory_order_relaxed);
#ifdef __linux__
            gen_.fetch_add(1, std::memory_order_release);
            syscall(SYS_futex, reinterpret_cast<uint32_t *>(&gen_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
#else
            std::lock_guard<std::mutex> lk(mu_);
            gen_.fetch_add(1, std::memory_order_release);
            cv_.notify_all();
#endif
            return;
        }
#ifdef __linux__
        while (gen_.load(std::memory_order_acquire) == gen) {
            syscall(SYS_futex, reinterpret_cast<uint32_t *>(&gen_), FUTEX_WAIT_PRIVATE, gen, nullptr, nullptr, 0);
        }
#else
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != gen; });
#endif
    }

  private:
    std::atomic<uint32_t>   gen_{ 0 };
    std::atomic<int>        count_{ 0 };
    int                     n_;
#ifndef __linux__
    std::mutex              mu_;
    std::condition_variable cv_;
#endif
};

// the exchange slots of one simdgroup: two banks used alternately, so one barrier per simd_* call suffices
// (a lane can write bank b again only after every lane has passed the next call's barrier, i.e. has read)
struct simdgroup_state {
    barrier  bar{ 32 };
    uint64_t slot[2][32] = {};
};

struct thread_state {
    simdgroup_state * sg = nullptr;
    barrier *         tg = nullptr;
    int               lane = 0;
    int               bank = 0;
};

inline thread_local thread_state tls;

template <typename T> inline uint64_t to_bits(T x) {
    uint64_t b = 0;
    std::memcpy(&b, &x, sizeof(T));
    return b;
}

template <typename T> inline T from_bits(uint64_t b) {
    T x;
    std::memcpy(&x, &b, sizeof(T));
    return x;
}

// every lane writes x, then reads all lanes' values
template <typename T, typename F> inline auto simd_exchange(T x, F && f) {
    thread_state & t = tls;
    uint64_t *     s = t.sg->slot[t.bank];
    s[t.lane] = to_bits(x);
    t.sg->bar.arrive_and_wait();
    t.bank ^= 1;
    T v[32];
    for (int i = 0; i < 32; ++i) {
        v[i] = from_bits<T>(s[i]);
    }
    return f(v, 32, t.lane);
}

// Runs grid.x*grid.y*grid.z threadgroups of n_threads threads (a multiple of 32), with shmem_bytes of
// threadgroup memory each. fn(tgpig, tid, shmem) runs one thread of one threadgroup; ids within a
// simdgroup: tid % 32, simdgroup: tid / 32.
struct dim3 {
    uint32_t x, y, z;
};

inline void dispatch(dim3 grid, int n_threads, size_t shmem_bytes,
                     const std::function<void(dim3, int, void *)> & fn, uint32_t order_seed = 1) {
    if (n_threads <= 0 || n_threads % 32 != 0 || n_threads > 1024) {
        throw std::invalid_argument("msl::dispatch: threads per threadgroup must be a multiple of 32, at most 1024");
    }
    if (shmem_bytes > 32768) {
        throw std::invalid_argument("msl::dispatch: more than 32 KiB of threadgroup memory");
    }
    const size_t n_groups = (size_t) grid.x*grid.y*grid.z;
    if (n_groups == 0) {
        return;
    }
    std::vector<size_t> order(n_groups);
    for (size_t i = 0; i < n_groups; ++i) {
        order[i] = i;
    }
    std::mt19937 rng(order_seed);
    std::shuffle(order.begin(), order.end(), rng); // threadgroups run in no particular order on a GPU

    const int                     n_sg = n_threads/32;
    std::vector<unsigned char>    shmem(std::max<size_t>(shmem_bytes, 16));
    barrier                       tg(n_threads);
    std::vector<simdgroup_state *> sgs;
    for (int i = 0; i < n_sg; ++i) {
        sgs.push_back(new simdgroup_state());
    }
    std::vector<std::thread> threads;
    std::exception_ptr       err;
    std::mutex               err_mu;
    for (int tid = 0; tid < n_threads; ++tid) {
        threads.emplace_back([&, tid] {
            tls.sg   = sgs[tid/32];
            tls.tg   = &tg;
            tls.lane = tid%32;
            tls.bank = 0;
            for (size_t g : order) {
                if (tid == 0) {
                    std::memset(shmem.data(), 0xff, shmem.size()); // uninitialized threadgroup memory
                }
                tg.arrive_and_wait();
                const dim3 tgpig = { (uint32_t) (g % grid.x), (uint32_t) ((g/grid.x) % grid.y), (uint32_t) (g/((size_t) grid.x*grid.y)) };
                try {
                    fn(tgpig, tid, shmem.data());
                } catch (...) {
                    std::lock_guard<std::mutex> lk(err_mu);
                    err = std::current_exception();
                }
                tg.arrive_and_wait(); // the next threadgroup reuses the memory
            }
        });
    }
    for (auto & t : threads) {
        t.join();
    }
    for (auto * s : sgs) {
        delete s;
    }
    if (err) {
        std::rethrow_exception(err);
    }
}

} // namespace msl

// ---- the MSL surface ----

using half = _Float16;

template <typename T> struct msl_vec2 {
    T x, y;
    T & operator[](int i) { return (&x)[i]; }
    T operator[](int i) const { return (&x)[i]; }
};
template <typename T> struct msl_vec3 {
    T x, y, z;
    T & operator[](int i) { return (&x)[i]; }
    T operator[](int i) const { return (&x)[i]; }
};
template <typename T> struct msl_vec4 {
    T x, y, z, w;
    T & operator[](int i) { return (&x)[i]; }
    T operator[](int i) const { return (&x)[i]; }
};

using float2  = msl_vec2<float>;
using float4  = msl_vec4<float>;
using half4   = msl_vec4<half>;
using uint3   = msl_vec3<uint32_t>;
using ushort3 = msl_vec3<uint16_t>;
using ushort  = uint16_t;
using uint    = uint32_t;

// reinterprets the bits (MSL's as_type)
template <typename T, typename U> inline T as_type(U x) {
    static_assert(sizeof(T) == sizeof(U), "as_type: sizes differ");
    T r;
    std::memcpy(&r, &x, sizeof(T));
    return r;
}

enum class mem_flags { mem_none, mem_device, mem_threadgroup, mem_texture };

inline void threadgroup_barrier(mem_flags) {
    msl::tls.tg->arrive_and_wait();
}

inline void simdgroup_barrier(mem_flags) {
    msl::thread_state & t = msl::tls;
    t.sg->bar.arrive_and_wait();
}

template <typename T> inline T simd_sum(T x) {
    // lane order; Metal's order is unspecified
    return msl::simd_exchange(x, [](const T * v, int n, int) { T s = v[0]; for (int i = 1; i < n; ++i) s += v[i]; return s; });
}
template <typename T> inline T simd_max(T x) {
    return msl::simd_exchange(x, [](const T * v, int n, int) { T s = v[0]; for (int i = 1; i < n; ++i) s = v[i] > s ? v[i] : s; return s; });
}
template <typename T> inline T simd_min(T x) {
    return msl::simd_exchange(x, [](const T * v, int n, int) { T s = v[0]; for (int i = 1; i < n; ++i) s = v[i] < s ? v[i] : s; return s; });
}
template <typename T> inline T simd_shuffle(T x, ushort lane) {
    return msl::simd_exchange(x, [lane](const T * v, int, int) { return v[lane]; });
}
template <typename T> inline T simd_broadcast(T x, ushort lane) {
    return simd_shuffle(x, lane);
}
template <typename T> inline T simd_prefix_exclusive_sum(T x) {
    return msl::simd_exchange(x, [](const T * v, int, int me) { T s = 0; for (int i = 0; i < me; ++i) s += v[i]; return s; });
}

// math: <math.h> puts the f32 overloads of exp, log, tanh, sqrt, pow, fabs, round (halves away from zero,
// as MSL's), floor, isnan, isinf in the global namespace; Metal's fast-math versions approximate them
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline int   max(int a, int b) { return a > b ? a : b; }
inline int   min(int a, int b) { return a < b ? a : b; }
inline float clamp(float x, float lo, float hi) { return std::fmin(std::fmax(x, lo), hi); }

#define kernel
#define device
#define constant
#define thread
// not empty: `threadgroup` also names the attribute [[threadgroup(0)]], and an attribute token may be a
// keyword, so `volatile` keeps [[volatile(0)]] an (ignored) attribute while qualifying the pointers
#define threadgroup volatile

#endif // MSL_EMU_H
