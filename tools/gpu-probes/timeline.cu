// Where a phase of a dependent chain of lean batch-one GEMVs goes (RESULTS logs 47 and 50): 400
// GEMVs of k = 2048 (the 1B's o shape, 2048 rows, or its q/k/v, 3072 rows), y = W x / 26,
// the next phase's x is this phase's y, graph-replayed with programmatic dependent launch,
// matrices rotating over 8 copies (past the 50 MB L2). A warp a row, 8 chunks of 16 B a lane,
// four 8-warp blocks a multiprocessor, as qrt's lean `gemv_one`. Variants (see `gemv` and
// `main`): how many of a lane's 8 chunks are loaded into registers before the wait, how the
// rest are requested into L2 before it, where the next kernel is let in, how x is staged and
// how the weights are loaded, and how a phase learns that the previous one is done (the grid's
// completion, a counter in memory, or tagged words); "lean" is the form of qrt's lean kernel
// (all 8 early, trigger after the wait).
// Every block of phases 200-203 records clock64 at its start, after the wait, after staging
// x, after warp 0's products and at its end, and globaltimer at its start and end; a line
// prints the medians over the blocks of the steps between them, the period of the wait's
// release, when the next phase's first block starts after a release and how long before the
// next release the last block ends (globaltimer ticks in steps of about 85 ns).
// To read which scoreboards the loads use (where x waits for the weights), disassemble the
// cubin with control bits: nvcc -cubin, then nvdisasm -hex (bits 116-121 of an instruction:
// the scoreboards it waits on; 110-112: the one it sets on completion).
// Build and run on the GPU machine: nvcc -O2 -arch=sm_90 -o timeline timeline.cu && ./timeline
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "probe.cuh"

#include <algorithm>
#include <cstdio>
#include <vector>

constexpr int K = 2048, COPIES = 8, THREADS = 256, WARPS = 8, PHASES = 400;
constexpr int REC_FIRST = 200, REC_PHASES = 4, REC_FIELDS = 7;

__device__ __forceinline__ unsigned long long gtimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// 16 bytes of weights: through the non-coherent path, bypassing L1 (NC, as qrt loads them),
// or evicted first from L2 (ld.global.cs).
template <bool NC>
__device__ __forceinline__ uint4 load_weights(const uint4* p) {
    uint4 v;
    if (NC)
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(p));
    else
        asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(p));
    return v;
}

// EARLY chunks a lane loaded into registers before the wait; the rest (8 - EARLY) requested
// into L2 before it (PF 1: prefetch.global.L2 a lane a 128-byte line, PF 2: one bulk
// prefetch a row, PF 0: not at all) and loaded after x is staged; PF 3: the rest of the row
// copied into shared memory by one bulk copy (lane 0 of the row's warp, completion on the
// warp's mbarrier), read from there after x is staged (at most 40 registers, so that three
// kernels' blocks fit on a multiprocessor). TRIG: where the next kernel
// is let in (0 after the wait, 1 after staging x, 2 after x's loads are issued). NC: the
// weights through the non-coherent path instead of ld.global.cs. XA: x staged by cp.async
// (its completion counted apart from the weight loads) instead of loads into registers.
// CTR: instead of griddepcontrol.wait, thread 0 spins on the previous phase's counter (every
// block of a phase adds one to its counter, a release, after writing its rows; the counters
// only grow, the target is (epoch + 1) blocks, the epoch bumped after each replay), CTR 2
// with a 32 ns sleep a poll; TRIG 3: the next kernel is let in at the block's start. CTR 3
// ("ll"): no wait and no counter; each output also goes out as a 64-bit word, the value's bits
// and a tag (epoch * PHASES + phase + 1) stored together without a fence, and the next phase
// polls the words of its x until every tag is the one it expects (CTR 4: a 256 ns sleep before
// each poll after the first).
template <int EARLY, int PF, int TRIG, bool NC = false, bool XA = false, int CTR = 0>
__global__ void __launch_bounds__(THREADS, PF == 3 ? 6 : 4)
    gemv(const __half* w, const float* x, float* y, unsigned long long* rec, int phase,
         unsigned* cnt, const unsigned* epoch, const unsigned long long* llx,
         unsigned long long* lly) {
    __shared__ float xs[K];
    __shared__ alignas(128) uint4 ws[PF == 3 ? WARPS : 1][PF == 3 ? 32 * (8 - EARLY) : 1];
    __shared__ alignas(8) unsigned long long wbar[WARPS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row = blockIdx.x * WARPS + warp;
    const bool record = rec != nullptr && threadIdx.x == 0 && phase >= REC_FIRST &&
                        phase < REC_FIRST + REC_PHASES;
    const unsigned long long c0 = clock64(), g0 = gtimer();
    const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)row * K);
    if (TRIG == 3) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    uint4 a[8];
#pragma unroll
    for (int j = 0; j < EARLY; ++j) a[j] = load_weights<NC>(wr + lane + 32 * j);
    unsigned target = 0;
    if (CTR && CTR < 3 && phase > 0 && threadIdx.x == 0)
        target = (*reinterpret_cast<const volatile unsigned*>(epoch) + 1) * gridDim.x;
    const unsigned tag = CTR >= 3 ? *reinterpret_cast<const volatile unsigned*>(epoch) * PHASES : 0;
    if (PF == 1) {
        // Lanes 0, 8, 16, 24 of chunk group j cover its four 128-byte lines.
#pragma unroll
        for (int j = EARLY; j < 8; ++j)
            if (lane % 8 == 0)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + lane + 32 * j));
    }
    const unsigned bar = static_cast<unsigned>(__cvta_generic_to_shared(&wbar[warp]));
    if (PF == 3 && lane == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n"
                     "fence.mbarrier_init.release.cluster;\n"
                     "fence.proxy.async.shared::cta;" ::"r"(bar)
                     : "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar),
                     "r"((8 - EARLY) * 512)
                     : "memory");
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                static_cast<unsigned>(__cvta_generic_to_shared(&ws[warp][0]))),
            "l"(wr + 32 * EARLY), "r"((8 - EARLY) * 512), "r"(bar)
            : "memory");
    }
    if (PF == 2 && EARLY < 8 && lane == 0)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(wr + 32 * EARLY),
                     "r"((8 - EARLY) * 512)
                     : "memory");
    if (CTR == 0 || phase == 0) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
    } else if (CTR >= 3) {
        // x's tagged words, polled until each carries the previous phase's tag (phase 0 reads x
        // in the plain way below).
        unsigned long long v[K / THREADS];
#pragma unroll
        for (int j = 0; j < K / THREADS; ++j)
            asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];"
                         : "=l"(v[j])
                         : "l"(llx + threadIdx.x + j * THREADS)
                         : "memory");
#pragma unroll
        for (int j = 0; j < K / THREADS; ++j) {
            while (static_cast<unsigned>(v[j] >> 32) != tag + phase) {
                if (CTR == 4) __nanosleep(256);
                asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];"
                             : "=l"(v[j])
                             : "l"(llx + threadIdx.x + j * THREADS)
                             : "memory");
            }
            xs[threadIdx.x + j * THREADS] = __uint_as_float(static_cast<unsigned>(v[j]));
        }
        __syncthreads();
    } else {
        if (threadIdx.x == 0) {
            unsigned v;
            for (;;) {
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];"
                             : "=r"(v)
                             : "l"(cnt + phase - 1)
                             : "memory");
                if (static_cast<int>(v - target) >= 0) break;
                if (CTR == 2) __nanosleep(32);
            }
        }
        __syncthreads();
    }
    const unsigned long long c1 = clock64();
    if (TRIG == 0) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (CTR >= 3 && phase > 0) {
        // x already staged from its tagged words.
    } else if (XA) {
        // x by cp.async: its completion is counted apart from the weights' loads.
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const unsigned dst = static_cast<unsigned>(
                __cvta_generic_to_shared(reinterpret_cast<float4*>(xs) + threadIdx.x + j * THREADS));
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst),
                         "l"(reinterpret_cast<const float4*>(x) + threadIdx.x + j * THREADS)
                         : "memory");
        }
        asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
    } else {
        float4 v[2];
#pragma unroll
        for (int j = 0; j < 2; ++j)
            v[j] = __ldcg(reinterpret_cast<const float4*>(x) + threadIdx.x + j * THREADS);
        if (TRIG == 2) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#pragma unroll
        for (int j = 0; j < 2; ++j) reinterpret_cast<float4*>(xs)[threadIdx.x + j * THREADS] = v[j];
    }
    __syncthreads();
    const unsigned long long c2 = clock64();
    if (TRIG == 1) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (PF == 3) {
        asm volatile(
            "{\n.reg .pred done;\nWAIT_%=:\n"
            "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n"
            "@!done bra WAIT_%=;\n}" ::"r"(bar)
            : "memory");
#pragma unroll
        for (int j = EARLY; j < 8; ++j) a[j] = ws[warp][lane + 32 * (j - EARLY)];
    } else {
#pragma unroll
        for (int j = EARLY; j < 8; ++j) a[j] = load_weights<NC>(wr + lane + 32 * j);
    }
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s += dot8(a[j], xs + 8 * (lane + 32 * j));
    s = warp_sum(s);
    const unsigned long long c3 = clock64();
    if (lane == 0) y[row] = s * (1.f / 26.f);
    if (CTR >= 3 && lane == 0) {
        const unsigned long long word =
            __float_as_uint(s * (1.f / 26.f)) | (static_cast<unsigned long long>(tag + phase + 1) << 32);
        asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(lly + row), "l"(word) : "memory");
    }
    if (CTR == 1 || CTR == 2) {
        __syncthreads();
        if (threadIdx.x == 0)
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(cnt + phase) : "memory");
    }
    if (record) {
        unsigned long long* r =
            rec + ((size_t)(phase - REC_FIRST) * gridDim.x + blockIdx.x) * REC_FIELDS;
        const unsigned long long c4 = clock64(), g4 = gtimer();
        r[0] = c0, r[1] = c1, r[2] = c2, r[3] = c3, r[4] = c4, r[5] = g0, r[6] = g4;
    }
}

template <int EARLY, int PF, int TRIG, bool NC = false, bool XA = false, int CTR = 0>
void launch_phase(cudaStream_t s, int blocks, const __half* w, const float* x, float* y,
                  unsigned long long* rec, int phase, unsigned* cnt, const unsigned* epoch,
                  const unsigned long long* llx, unsigned long long* lly) {
    launch(gemv<EARLY, PF, TRIG, NC, XA, CTR>, blocks, THREADS, 0, s, true, w, x, y, rec, phase,
           cnt, epoch, llx, lly);
}

// After the last phase: the counters' epoch moves on.
__global__ void bump(unsigned* epoch) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    ++*epoch;
}

typedef void (*Launcher)(cudaStream_t, int, const __half*, const float*, float*,
                         unsigned long long*, int, unsigned*, const unsigned*,
                         const unsigned long long*, unsigned long long*);

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

// us a phase (median of 5 replays) and the recorded timeline of phases 200-203.
static void run(const char* name, Launcher launcher, int rows, __half* w, float* xy,
                unsigned long long* rec, unsigned* cnt, unsigned* epoch, unsigned long long* ll,
                cudaStream_t s) {
    const int blocks = rows / WARPS;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
    for (int p = 0; p < PHASES; ++p)
        launcher(s, blocks, w + (size_t)(p % COPIES) * rows * K, xy + (p % 2) * 4096,
                 xy + ((p + 1) % 2) * 4096, rec, p, cnt, epoch, ll + (p % 2) * 4096,
                 ll + ((p + 1) % 2) * 4096);
    launch(bump, 1, 1, 0, s, true, epoch);
    cudaStreamEndCapture(s, &graph);
    cudaGraphInstantiate(&exec, graph, 0);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaGraphLaunch(exec, s);
    std::vector<double> us;
    for (int i = 0; i < 5; ++i) {
        cudaEventRecord(e0, s);
        cudaGraphLaunch(exec, s);
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        us.push_back(ms * 1e3 / PHASES);
    }
    std::vector<unsigned long long> h((size_t)REC_PHASES * blocks * REC_FIELDS);
    cudaMemcpy(h.data(), rec, h.size() * 8, cudaMemcpyDeviceToHost);
    // Cycles to ns from the blocks' own start-to-end spans.
    double cyc = 0, ns = 0;
    for (size_t b = 0; b < h.size() / REC_FIELDS; ++b) {
        cyc += h[b * REC_FIELDS + 4] - h[b * REC_FIELDS + 0];
        ns += h[b * REC_FIELDS + 6] - h[b * REC_FIELDS + 5];
    }
    const double ns_per_cycle = ns / cyc;
    // Per phase, medians over blocks of each step (ns), and block starts / ends relative to
    // the phase's median wait-release time estimated in global time.
    std::vector<double> pre, stage, mult, tail, first_start, last_end, release;
    for (int p = 0; p < REC_PHASES; ++p) {
        std::vector<double> a, b, c, d, st, en, rl;
        for (int i = 0; i < blocks; ++i) {
            const unsigned long long* r = &h[((size_t)p * blocks + i) * REC_FIELDS];
            a.push_back((r[1] - r[0]) * ns_per_cycle);
            b.push_back((r[2] - r[1]) * ns_per_cycle);
            c.push_back((r[3] - r[2]) * ns_per_cycle);
            d.push_back((r[4] - r[3]) * ns_per_cycle);
            st.push_back((double)r[5]);
            en.push_back((double)r[6]);
            rl.push_back(r[5] + (r[1] - r[0]) * ns_per_cycle);
        }
        pre.push_back(median(a));
        stage.push_back(median(b));
        mult.push_back(median(c));
        tail.push_back(median(d));
        release.push_back(median(rl));
        first_start.push_back(*std::min_element(st.begin(), st.end()));
        last_end.push_back(*std::max_element(en.begin(), en.end()));
    }
    double rel_period = 0, start_lag = 0, end_lag = 0;
    for (int p = 0; p + 1 < REC_PHASES; ++p) {
        rel_period += (release[p + 1] - release[p]) / (REC_PHASES - 1);
        // The next phase's first block start after this phase's release; this phase's last
        // end before the next phase's release.
        start_lag += (first_start[p + 1] - release[p]) / (REC_PHASES - 1);
        end_lag += (release[p + 1] - last_end[p]) / (REC_PHASES - 1);
    }
    const double gbs = (double)rows * K * 2 / (median(us) * 1e-6) / 1e9;
    // The last phase's output, summed: equal across variants when every phase read its x
    // only after the previous phase wrote all of it.
    std::vector<float> y(rows);
    cudaMemcpy(y.data(), xy + (PHASES % 2) * 4096, rows * 4, cudaMemcpyDeviceToHost);
    double sum = 0;
    for (float v : y) sum += v;
    printf("%-7s rows %4d  %6.3f us a phase %5.0f GB/s | ns: start->wait %5.0f  stage x %4.0f"
           "  products %4.0f  end %4.0f | release period %5.0f, next start %+5.0f after release,"
           " last end %+5.0f before next release | sum %.6e\n",
           name, rows, median(us), gbs, median(pre), median(stage), median(mult), median(tail),
           rel_period, start_lag, end_lag, sum);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
}

int main() {
    int rows_max = 3072;
    __half* w;
    float* xy;
    unsigned long long* rec;
    cudaMalloc(&w, (size_t)COPIES * rows_max * K * 2);
    cudaMalloc(&xy, 2 * 4096 * 4);
    cudaMalloc(&rec, (size_t)REC_PHASES * (rows_max / WARPS) * REC_FIELDS * 8);
    unsigned *cnt, *epoch;
    cudaMalloc(&cnt, PHASES * 4);
    cudaMalloc(&epoch, 4);
    unsigned long long* ll;
    cudaMalloc(&ll, 2 * 4096 * 8);
    // Random halves in [-1, 1) and x of ones.
    std::vector<__half> hw((size_t)rows_max * K);
    unsigned state = 1;
    for (auto& v : hw) {
        state = state * 1664525u + 1013904223u;
        v = __float2half((state >> 9) * (2.0f / 8388608.0f) - 1.0f);
    }
    for (int c = 0; c < COPIES; ++c)
        cudaMemcpy(w + (size_t)c * rows_max * K, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice);
    std::vector<float> ones(2 * 4096, 1.0f);
    cudaMemcpy(xy, ones.data(), ones.size() * 4, cudaMemcpyHostToDevice);
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    // <EARLY, PF, TRIG, NC, XA, CTR>: "-xa" stages x by cp.async, "-nc" loads the weights through
    // the non-coherent path (which the compiler then moved below the wait).
    const struct {
        const char* name;
        Launcher launch;
    } variants[] = {
        {"lean", launch_phase<8, 0, 0>},
        {"late", launch_phase<8, 0, 1>},
        {"xfirst", launch_phase<8, 0, 2>},
        {"e4", launch_phase<4, 0, 0>},
        {"e4pf", launch_phase<4, 1, 0>},
        {"e0pf", launch_phase<0, 1, 0>},
        {"e2bulk", launch_phase<2, 2, 0>},
        {"e4bulk", launch_phase<4, 2, 0>},
        {"e6bulk", launch_phase<6, 2, 0>},
        {"lean-xa", launch_phase<8, 0, 0, false, true>},
        {"e4bulk-xa", launch_phase<4, 2, 0, false, true>},
        {"lean-nc", launch_phase<8, 0, 0, true>},
        {"ctr", launch_phase<8, 0, 0, false, false, 1>},
        {"ctr-sl", launch_phase<8, 0, 0, false, false, 2>},
        {"ctr-t0", launch_phase<8, 0, 3, false, false, 1>},
        {"e4b-ctr", launch_phase<4, 2, 0, false, false, 1>},
        {"ll", launch_phase<8, 0, 0, false, false, 3>},
        {"e4b-ll", launch_phase<4, 2, 0, false, false, 3>},
        {"e4smem", launch_phase<4, 3, 0>},
        {"e2smem", launch_phase<2, 3, 0>},
        {"e6smem", launch_phase<6, 3, 0>},
        {"e0smem", launch_phase<0, 3, 0>},
        {"e0smem-t0", launch_phase<0, 3, 3>},
        {"e4smem-t0", launch_phase<4, 3, 3>},
        {"ll-sl", launch_phase<8, 0, 0, false, false, 4>},
        {"e4b-ll-sl", launch_phase<4, 2, 0, false, false, 4>},
    };
    for (int rep = 0; rep < 2; ++rep)
        for (int rows : {2048, 3072})
            for (const auto& v : variants) {
                // Counters and epoch from zero for each variant (the counters only grow).
                cudaMemset(cnt, 0, PHASES * 4);
                cudaMemset(epoch, 0, 4);
                cudaMemset(ll, 0, 2 * 4096 * 8);
                cudaMemcpy(xy, ones.data(), ones.size() * 4, cudaMemcpyHostToDevice);
                run(v.name, v.launch, rows, w, xy, rec, cnt, epoch, ll, s);
            }
    cudaError_t e = cudaDeviceSynchronize();
    printf("status: %s\n", cudaGetErrorString(e));
    return e == cudaSuccess ? 0 : 1;
}
