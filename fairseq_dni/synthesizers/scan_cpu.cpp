// The one-layer scan synthesizer's recurrence on a CPU: one pass over the rows forward, one in reverse.
//
// Built on first use by torch.utils.cpp_extension.load (scan.py: cpu_kernels). Plain C++ loops over
// contiguous CPU tensors (float or double), no intrinsics, no fast-math: IEEE arithmetic, which the
// compiler vectorises over the H units of a row. Rows are time-major: row r = t S + s is step t of
// sequence s (S sequences of T steps, N = T S rows). `gates` (3, N, H) holds the activated gates
// zs = sigmoid(2 x_z), fs = sigmoid(x_f), os = sigmoid(x_o); per row (Bradbury et al. 2017, eq. 3,
// as torchqrnn's ForgetMult computes it):
//
//     z = 2 zs - 1                          (= tanh(x_z))
//     m = draw >= threshold ? 1 : 0         (zoneout's keep mask, from one int32 draw per unit; without
//                                            draws m = scale: 1 - zoneout in eval mode, else 1)
//     f = fs m
//     c_t = (1 - f) c_{t-1} + f z           (c_{-1} = c0)
//     y = sum_j os_j c_j w_j + bias         (h = o c and the decoder Linear(H, 1))
//
// The reverse pass runs the adjoint g~_t = gh_t o_t + (1 - f_{t+1}) g~_{t+1} (gh = dy w = dL/dh)
// and, per row, d loss / d pre-activation: dz = f g~ (1 - z^2), df = (z - c_{t-1}) g~ m fs (1 - fs),
// do = gh c os (1 - os); through the gate products (x = columns kernel, plus start on the rows of
// step 0) it accumulates kernel's and start's gradients, and columns' when asked.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// m for one row: the keep mask from the draws, or `scale` everywhere
template <typename T>
inline void row_mask(const int32_t* __restrict__ draws, int32_t threshold, T scale, int64_t H, T* __restrict__ m) {
  if (draws) {
    for (int64_t j = 0; j < H; ++j) m[j] = draws[j] >= threshold ? T(1) : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) m[j] = scale;
  }
}

template <typename T>
__attribute__((noinline)) void forward_rows(const T* __restrict__ gates, const int32_t* __restrict__ draws,
                                            int32_t threshold, T scale, const T* __restrict__ c0,
                                            const T* __restrict__ w, T bias, int64_t steps, int64_t seqs,
                                            int64_t H, T* __restrict__ y, T* __restrict__ cells,
                                            T* __restrict__ last) {
  std::vector<T> state(c0, c0 + seqs * H), h(H), mask(H);
  T* __restrict__ m = mask.data();
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t s = 0; s < seqs; ++s) {
      const int64_t r = t * seqs + s;
      const T* __restrict__ zs = gates + r * H;
      const T* __restrict__ fs = zs + steps * seqs * H;
      const T* __restrict__ os = fs + steps * seqs * H;
      T* __restrict__ c = state.data() + s * H;
      row_mask(draws ? draws + r * H : nullptr, threshold, scale, H, m);
      for (int64_t j = 0; j < H; ++j) {
        const T f = fs[j] * m[j];
        c[j] = (1 - f) * c[j] + f * (2 * zs[j] - 1);
        h[j] = os[j] * c[j] * w[j];
      }
      T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};   // eight running sums, in a fixed order
      int64_t j = 0;
      for (; j + 8 <= H; j += 8)
        for (int k = 0; k < 8; ++k) part[k] += h[j + k];
      for (; j < H; ++j) part[j % 8] += h[j];
      y[r] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7])) + bias;
      if (cells) std::copy(c, c + H, cells + r * H);
    }
  }
  std::copy(state.begin(), state.end(), last);
}

template <typename T>
__attribute__((noinline)) void backward_rows(const T* __restrict__ gy, const T* __restrict__ gates,
                                             const int32_t* __restrict__ draws, int32_t threshold, T scale,
                                             const T* __restrict__ cells, const T* __restrict__ c0,
                                             const T* __restrict__ w, const T* __restrict__ columns,
                                             const T* __restrict__ kernel, int64_t steps, int64_t seqs, int64_t H,
                                             T* __restrict__ gk, T* __restrict__ gstart, T* __restrict__ gcolumns,
                                             T* __restrict__ gw, T* __restrict__ gc0) {
  // per sequence: the adjoint g~_{t+1} and 1 - f_{t+1}; per row: the mask and d [dz | df | do]
  std::vector<T> adjoint(seqs * H, 0), next_a(seqs * H, 0), mask(H), grads(3 * H);
  T* __restrict__ m = mask.data();
  T* __restrict__ d = grads.data();
  std::fill(gw, gw + H, T(0));
  std::fill(gk, gk + 4 * 3 * H, T(0));
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t s = 0; s < seqs; ++s) {
      const int64_t r = t * seqs + s;
      const T* __restrict__ zs = gates + r * H;
      const T* __restrict__ fs = zs + steps * seqs * H;
      const T* __restrict__ os = fs + steps * seqs * H;
      const T* __restrict__ c = cells + r * H;
      const T* __restrict__ before = t > 0 ? cells + (r - seqs) * H : c0 + s * H;
      T* __restrict__ g = adjoint.data() + s * H;
      T* __restrict__ a = next_a.data() + s * H;
      row_mask(draws ? draws + r * H : nullptr, threshold, scale, H, m);
      const T dy = gy[r];
      for (int64_t j = 0; j < H; ++j) {
        const T f = fs[j] * m[j], z = 2 * zs[j] - 1, gh = dy * w[j];
        gw[j] += dy * os[j] * c[j];
        const T adj = gh * os[j] + a[j] * g[j];
        g[j] = adj;
        a[j] = 1 - f;
        d[j] = f * adj * (1 - z * z);
        d[H + j] = (z - before[j]) * adj * m[j] * fs[j] * (1 - fs[j]);
        d[2 * H + j] = gh * c[j] * os[j] * (1 - os[j]);
      }
      const T* __restrict__ col = columns + r * 4;
      for (int k = 0; k < 4; ++k) {
        T* __restrict__ row = gk + k * 3 * H;
        const T ck = col[k];
        for (int64_t j = 0; j < 3 * H; ++j) row[j] += ck * d[j];
      }
      if (t == 0) std::copy(d, d + 3 * H, gstart + s * 3 * H);
      if (gcolumns) {
        for (int k = 0; k < 4; ++k) {
          T sum = 0;
          for (int64_t j = 0; j < 3 * H; ++j) sum += kernel[k * 3 * H + j] * d[j];
          gcolumns[r * 4 + k] = sum;
        }
      }
    }
  }
  for (int64_t i = 0; i < seqs * H; ++i) gc0[i] = next_a[i] * adjoint[i];
}

void check(const torch::Tensor& x, c10::ScalarType dtype, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.scalar_type() == dtype, "scan_cpu: ", name,
              " must be a contiguous CPU tensor of dtype ", dtype, ", got ", x.scalar_type());
}

const int32_t* draws_of(const c10::optional<torch::Tensor>& draws, int64_t numel) {
  if (!draws) return nullptr;
  check(*draws, torch::kInt32, "draws");
  TORCH_CHECK(draws->numel() == numel, "scan_cpu: draws must hold one int32 per unit");
  return draws->data_ptr<int32_t>();
}

}  // namespace

// Returns y (N,) and the last cell state (S, H); writes cells (N, H) when given (the regression's call).
std::vector<torch::Tensor> forward(torch::Tensor gates, c10::optional<torch::Tensor> draws, int64_t threshold,
                                   double scale, torch::Tensor c0, torch::Tensor weight, torch::Tensor bias,
                                   c10::optional<torch::Tensor> cells) {
  const auto dtype = gates.scalar_type();
  const int64_t S = c0.size(0), H = c0.size(1), N = gates.size(1);
  TORCH_CHECK(gates.dim() == 3 && gates.size(0) == 3 && gates.size(2) == H && N % S == 0 && weight.numel() == H &&
              bias.numel() == 1, "scan_cpu.forward: gates (3, N, H), c0 (S, H), weight (H,) and bias (1,) do not agree");
  check(gates, dtype, "gates");
  check(c0, dtype, "c0");
  check(weight, dtype, "weight");
  check(bias, dtype, "bias");
  if (cells) check(*cells, dtype, "cells");
  auto y = torch::empty({N}, gates.options());
  auto last = torch::empty({S, H}, gates.options());
  const int32_t* d = draws_of(draws, N * H);
  AT_DISPATCH_FLOATING_TYPES(dtype, "scan_cpu.forward", [&] {
    forward_rows<scalar_t>(gates.data_ptr<scalar_t>(), d, static_cast<int32_t>(threshold),
                           static_cast<scalar_t>(scale), c0.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                           bias.item<scalar_t>(), N / S, S, H, y.data_ptr<scalar_t>(),
                           cells ? cells->data_ptr<scalar_t>() : nullptr, last.data_ptr<scalar_t>());
  });
  return {y, last};
}

// Returns (grad kernel (4, 3H), grad start (S, 3H), grad weight (H,), grad c0 (S, H), grad columns (N, 4)
// when needs_columns, else an undefined tensor).
std::vector<torch::Tensor> backward(torch::Tensor grad_y, torch::Tensor gates, c10::optional<torch::Tensor> draws,
                                    int64_t threshold, double scale, torch::Tensor cells, torch::Tensor c0,
                                    torch::Tensor weight, torch::Tensor columns, torch::Tensor kernel,
                                    bool needs_columns) {
  const auto dtype = gates.scalar_type();
  const int64_t S = c0.size(0), H = c0.size(1), N = gates.size(1);
  TORCH_CHECK(gates.dim() == 3 && gates.size(0) == 3 && gates.size(2) == H && N % S == 0 && grad_y.numel() == N && cells.numel() == N * H &&
              columns.size(0) == N && columns.size(1) == 4 && kernel.size(0) == 4 && kernel.size(1) == 3 * H,
              "scan_cpu.backward: shapes do not agree");
  for (auto* x : {&grad_y, &gates, &cells, &c0, &weight, &columns, &kernel}) check(*x, dtype, "an input");
  auto gk = torch::empty({4, 3 * H}, gates.options());
  auto gstart = torch::empty({S, 3 * H}, gates.options());
  auto gw = torch::empty({H}, gates.options());
  auto gc0 = torch::empty({S, H}, gates.options());
  torch::Tensor gcolumns;
  if (needs_columns) gcolumns = torch::empty({N, 4}, gates.options());
  const int32_t* d = draws_of(draws, N * H);
  AT_DISPATCH_FLOATING_TYPES(dtype, "scan_cpu.backward", [&] {
    backward_rows<scalar_t>(grad_y.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), d,
                            static_cast<int32_t>(threshold), static_cast<scalar_t>(scale),
                            cells.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                            columns.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), N / S, S, H,
                            gk.data_ptr<scalar_t>(), gstart.data_ptr<scalar_t>(),
                            needs_columns ? gcolumns.data_ptr<scalar_t>() : nullptr, gw.data_ptr<scalar_t>(),
                            gc0.data_ptr<scalar_t>());
  });
  return {gk, gstart, gw, gc0, gcolumns};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "the one-layer scan synthesizer's rows, forward (scan_cpu.cpp)");
  m.def("backward", &backward, "their reverse pass: gradients of kernel, start, decoder weight, c0 (and columns)");
}
