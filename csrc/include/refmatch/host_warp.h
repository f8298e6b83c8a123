// One warp on the host: 32 threads in lockstep, with the warp_ops.h interface, so
// that the device epilogues (match_epilogue.cuh) run unchanged in the CPU tests.
//
// Every shuffle or vote is a barrier of the 32 threads: each publishes its value,
// all wait, each reads the one it asked for, all wait again before the slots are
// reused. As on the device, every lane must reach every warp operation. One warp
// runs at a time (the slots are shared); run() returns when all 32 lanes are done.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace refmatch {

class HostWarp {
 public:
  static constexpr int kLanes = 32;

  template <class T>
  static T shfl_xor(T value, int lane_mask) { return exchange(value, lane_ ^ lane_mask); }
  template <class T>
  static T shfl(T value, int source_lane) { return exchange(value, source_lane); }
  static bool any(bool predicate) {
    slots_[lane_] = predicate;
    barrier();
    bool found = false;
    for (const uint64_t slot : slots_) found |= slot != 0;
    barrier();
    return found;
  }
  static void sync() { barrier(); }

  // body(lane) on 32 threads, one per lane; one warp at a time.
  template <class Body>
  static void run(Body body) {
    static std::mutex one_warp;
    const std::lock_guard<std::mutex> running(one_warp);
    std::vector<std::thread> lanes;
    for (int lane = 0; lane < kLanes; ++lane) {
      lanes.emplace_back([&body, lane] {
        lane_ = lane;
        body(lane);
      });
    }
    for (auto& thread : lanes) thread.join();
  }

 private:
  template <class T>
  static T exchange(T value, int source_lane) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "a warp slot holds 8 bytes");
    std::memcpy(&slots_[lane_], &value, sizeof(T));
    barrier();
    T received;
    std::memcpy(&received, &slots_[source_lane], sizeof(T));
    barrier();  // every lane has read before the next exchange overwrites
    return received;
  }

  static void barrier() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == kLanes) {
      arrived_ = 0;
      ++generation_;
      all_arrived_.notify_all();
    } else {
      all_arrived_.wait(lock, [generation] { return generation_ != generation; });
    }
  }

  static inline thread_local int lane_ = 0;
  static inline uint64_t slots_[kLanes] = {};
  static inline std::mutex mutex_;
  static inline std::condition_variable all_arrived_;
  static inline int arrived_ = 0;
  static inline uint64_t generation_ = 0;
};

}  // namespace refmatch
