// Paged attention on the CPU that reads K/V where they lie in the pool: no gathered copy, no
// padding, no mask. One call per layer serves every row of a step (decodes, prefill chunks,
// a speculating sequence's 1 + k rows): row r belongs to sequence seq_of_row[r], sits at
// absolute position positions[r], and sees that sequence's keys 0..positions[r] (causal),
// found through its block table: key j lives in slot table[j / bs] * bs + j % bs.
//
// Work is split over (row, K/V head) pairs with at::parallel_for (torch's thread count). For
// one pair the query heads that share the K/V head (GQA) are done together, so each key and
// value vector is read once for all of them. Two passes over the keys: scores (and their
// maximum), then exp-weights and the weighted sum of values; accumulation in float32 whatever
// the storage type (float32, bfloat16, float16). The dot products and the weighted sums are
// 16-lane AVX-512 instructions where the compiler targets it (the build is -march=native) and
// the head dim is a multiple of 16; plain loops elsewhere (tested equal).
//
// Shapes: N rows, H query heads, Hkv K/V heads, D head dim, S pool slots, B sequences,
// M blocks per table.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// exp for float32 by range reduction and a polynomial (the Cephes library's expf
// coefficients): no branches and no library call, so the loops that use it vectorise
// (std::exp is a scalar call per element). Clamped to [-87.3, 88]: below, about 1e-38 instead
// of 0; the softmax only passes values <= 0.
inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.33654f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);  // x = n ln2 + r, |r| <= ln2 / 2
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

constexpr int kLanes = 16;  // partial sums per dot product: the compiler keeps them in vectors

#if defined(__AVX512F__)
// With AVX-512 (the build is -march=native): 16 lanes per instruction, storage type converted
// in the register (bf16: the top half of a float32's bits; fp16: the F16C conversion). The
// portable loops below are the reference and the path of every other CPU.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif
template <typename T>  // the storage types with a 16-lane load (double takes the loops)
constexpr bool kLoad16 = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> ||
                         std::is_same_v<T, c10::Half>;

template <typename T>
inline float dot(const float* q, const T* k, int64_t d) {
#if defined(__AVX512F__)
  if constexpr (kLoad16<T>) {
    if (d % 16 == 0) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t i = 0; i < d; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(k + i), acc);
      return _mm512_reduce_add_ps(acc);
    }
  }
#endif
  float acc[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes)
    for (int u = 0; u < kLanes; ++u) acc[u] += q[i + u] * static_cast<float>(k[i + u]);
  float s = 0.f;
  for (; i < d; ++i) s += q[i] * static_cast<float>(k[i]);
  for (int u = 0; u < kLanes; ++u) s += acc[u];
  return s;
}

template <typename T>
inline void axpy(float w, const T* v, float* out, int64_t d) {
#if defined(__AVX512F__)
  if constexpr (kLoad16<T>) {
    if (d % 16 == 0) {
      const __m512 wv = _mm512_set1_ps(w);
      for (int64_t i = 0; i < d; i += 16)
        _mm512_storeu_ps(out + i, _mm512_fmadd_ps(wv, load16(v + i), _mm512_loadu_ps(out + i)));
      return;
    }
  }
#endif
  for (int64_t i = 0; i < d; ++i) out[i] += w * static_cast<float>(v[i]);
}

template <typename T>
void attend_rows(const T* q, const T* k, const T* v, const int64_t* tables,
                 const int64_t* seq_of_row, const int64_t* positions, T* out, int64_t N,
                 int64_t H, int64_t Hkv, int64_t D, int64_t M, int64_t bs, float scale) {
  const int64_t G = H / Hkv;  // query heads per K/V head
  at::parallel_for(0, N * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), scores, maxes(G), sums(G);
    std::vector<int64_t> slots;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / Hkv, g = task % Hkv;
      const int64_t* table = tables + seq_of_row[r] * M;
      const int64_t L = positions[r] + 1;  // keys this row sees
      slots.resize(L);
      for (int64_t j = 0, b = 0; j < L; ++b)  // block by block: no division per key
        for (int64_t o = 0, base = table[b] * bs; o < bs && j < L; ++o) slots[j++] = base + o;
      for (int64_t h = 0; h < G; ++h) {  // this row's query heads of K/V head g, scaled
        const T* qh = q + (r * H + g * G + h) * D;
        for (int64_t i = 0; i < D; ++i) qf[h * D + i] = static_cast<float>(qh[i]) * scale;
      }
      scores.resize(G * L);
      std::fill(maxes.begin(), maxes.end(), -std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < L; ++j) {  // pass 1: q . k for every key, in place in the pool
        const T* kj = k + (slots[j] * Hkv + g) * D;
        for (int64_t h = 0; h < G; ++h) {
          const float s = dot(qf.data() + h * D, kj, D);
          scores[h * L + j] = s;
          maxes[h] = std::max(maxes[h], s);
        }
      }
      for (int64_t h = 0; h < G; ++h) {  // softmax weights, unnormalised
        float sum = 0.f;
        float* sh = scores.data() + h * L;
        for (int64_t j = 0; j < L; ++j) {
          sh[j] = exp_poly(sh[j] - maxes[h]);
          sum += sh[j];
        }
        sums[h] = sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < L; ++j) {  // pass 2: the weighted sum of the values
        const T* vj = v + (slots[j] * Hkv + g) * D;
        for (int64_t h = 0; h < G; ++h) axpy(scores[h * L + j], vj, acc.data() + h * D, D);
      }
      for (int64_t h = 0; h < G; ++h) {
        T* oh = out + (r * H + g * G + h) * D;
        const float inv = 1.f / sums[h];
        for (int64_t i = 0; i < D; ++i) oh[i] = static_cast<T>(acc[h * D + i] * inv);
      }
    }
  });
}

// Fused elementwise ops for a block (as vLLM's CPU build has its own): each replaces three to
// five PyTorch ops, and on a small model a step is mostly the cost of calling ops. Rounding
// follows the unfused path: the norm in float32, its result rounded to the storage type and
// then scaled by the weight.
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t N, int64_t C, float eps) {
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      float ss = 0.f;
      for (int64_t i = 0; i < C; ++i) {
        const float f = static_cast<float>(xr[i]);
        ss += f * f;
      }
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(C) + eps);
      for (int64_t i = 0; i < C; ++i)
        yr[i] = static_cast<T>(static_cast<float>(w[i]) *
                               static_cast<float>(static_cast<T>(static_cast<float>(xr[i]) * inv)));
    }
  });
}

template <typename T>
void add_rows(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

}  // namespace

// RMSNorm over the last dim of a (N, C) tensor, as HF's Llama/Qwen compute it.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && w.size(0) == x.size(1), "rms_norm: (N, C), (C,)");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rms_norm: x and w share one dtype");
  x = x.contiguous();
  w = w.contiguous();
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                            x.size(0), x.size(1), static_cast<float>(eps));
  });
  return y;
}

// The residual add and the next norm in one call: s = x + d, then (s, rms_norm(s)).
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor d, torch::Tensor w,
                                        double eps) {
  TORCH_CHECK(x.sizes() == d.sizes() && x.scalar_type() == d.scalar_type(),
              "add_rms_norm: x and d share shape and dtype");
  x = x.contiguous();
  d = d.contiguous();
  auto s = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add", [&] {
    add_rows<scalar_t>(x.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                       x.numel());
  });
  return {s, rms_norm(s, w, eps)};
}

torch::Tensor paged_attention(torch::Tensor q,           // (N, H, D)
                              torch::Tensor k_pool,      // (S, Hkv, D)
                              torch::Tensor v_pool,      // (S, Hkv, D)
                              torch::Tensor tables,      // (B, M) int64
                              torch::Tensor seq_of_row,  // (N,) int64
                              torch::Tensor positions,   // (N,) int64
                              int64_t block_size, double scale) {
  TORCH_CHECK(q.device().is_cpu(), "paged_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 3 && v_pool.dim() == 3, "q and pools are 3-d");
  TORCH_CHECK(q.scalar_type() == k_pool.scalar_type() && k_pool.scalar_type() == v_pool.scalar_type(),
              "q, k_pool and v_pool share one dtype");
  TORCH_CHECK(tables.scalar_type() == at::kLong && seq_of_row.scalar_type() == at::kLong &&
                  positions.scalar_type() == at::kLong,
              "tables, seq_of_row and positions are int64");
  const int64_t N = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_pool.size(1);
  TORCH_CHECK(H % Hkv == 0 && k_pool.size(2) == D, "heads: H a multiple of Hkv, same D");
  TORCH_CHECK(seq_of_row.numel() == N && positions.numel() == N, "one seq and position per row");
  const int64_t S = k_pool.size(0), B = tables.size(0), M = tables.size(1);
  TORCH_CHECK(v_pool.size(0) == S, "k_pool and v_pool hold the same slots");
  {  // the step's metadata is the engine's own; checked anyway: a bad index would read wild
    auto t = tables.contiguous(), so = seq_of_row.contiguous(), po = positions.contiguous();
    const int64_t *tp = t.data_ptr<int64_t>(), *sp = so.data_ptr<int64_t>(), *pp = po.data_ptr<int64_t>();
    for (int64_t i = 0; i < B * M; ++i)
      TORCH_CHECK(tp[i] >= 0 && (tp[i] + 1) * block_size <= S, "block id ", tp[i], " outside the pool");
    for (int64_t r = 0; r < N; ++r)
      TORCH_CHECK(sp[r] >= 0 && sp[r] < B && pp[r] >= 0 && pp[r] < M * block_size,
                  "row ", r, ": sequence ", sp[r], " position ", pp[r], " outside the tables");
  }
  q = q.contiguous();
  k_pool = k_pool.contiguous();
  v_pool = v_pool.contiguous();
  tables = tables.contiguous();
  seq_of_row = seq_of_row.contiguous();
  positions = positions.contiguous();
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
    attend_rows<scalar_t>(q.data_ptr<scalar_t>(), k_pool.data_ptr<scalar_t>(),
                          v_pool.data_ptr<scalar_t>(), tables.data_ptr<int64_t>(),
                          seq_of_row.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
                          out.data_ptr<scalar_t>(), N, H, Hkv, D, tables.size(1), block_size,
                          static_cast<float>(scale));
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention reading K/V in place (CPU)");
  m.def("rms_norm", &rms_norm, "RMSNorm of (N, C) rows, float32 inside");
  m.def("add_rms_norm", &add_rms_norm, "residual add, then RMSNorm: (sum, normed)");
}
