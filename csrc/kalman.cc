// Compiled CPU kernels of the Kalman filter, its log-likelihood and gradient, and the smoother,
// registered with XLA through JAX's foreign function interface (sdessm.compiled loads them).
//
// Model (one sequence, steps t = 0 .. T-1, row-major arrays):
//   x_0 ~ N(mu1, P1),  x_{t+1} = A_t x_t + N(0, Q_t),  y_t = H_t x_t + u_t + N(0, R_t);
// a NaN entry of y_t is missing: the step uses the observed rows of H_t, u_t and the observed
// block of R_t only. A_t, Q_t hold one matrix (shared) or T-1 (per step); H_t, u_t, R_t one or T.
// Every input may carry leading batch dimensions (one sequence each, same sizes on all inputs).
//
// Gradient of log p(y) (Fisher's identity in the form of the backward recursion of de Jong
// (1989) and Koopman & Shephard (1992); Durbin & Koopman, "Time Series Analysis by State Space
// Methods", 2nd ed., sections 4.4, 4.5 and 7.3.3). With a_t, P_t the predicted moments, F_t the
// innovation covariance, v_t the innovation, K_t = P_t Z' F_t^{-1} the filter gain (Z the
// observed rows of H_t), L_t = A_t (I - K_t Z) and r_{T-1} = 0, N_{T-1} = 0:
//   r_{t-1} = Z' F^{-1} v + L' r_t,  N_{t-1} = Z' F^{-1} Z + L' N_t L,
//   E[x_t | y] = a_t + P_t r_{t-1},  Var[x_t | y] = P_t - P_t N_{t-1} P_t,
//   Cov[x_{t+1}, x_t | y] = (I - P_{t+1} N_t) A_t P_{t|t},
//   d/dQ_t = (r_t r_t' - N_t) / 2,  d/dA_t = r_t E[x_t | y]' - N_t A_t P_{t|t},
//   e_t = F^{-1} v - (A K)' r_t,  D_t = F^{-1} + (A K)' N_t (A K),
//   d/du_t = e_t,  d/dR_t = (e_t e_t' - D_t) / 2,
//   d/dH_t = e_t E[x_t | y]' - F^{-1} Z P_t + (A K)' N_t A_t P_{t|t},
//   d/dmu1 = r_{-1},  d/dP1 = (r_{-1} r_{-1}' - N_{-1}) / 2,
// on the observed rows and blocks. Nothing is inverted but the innovation covariance (through
// its Cholesky factor), so singular Q_t and P1 (a known initial state) are fine. The gradients
// with respect to the symmetric Q, R and P1 are the symmetric ones.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Buf = ffi::Buffer<ffi::F64>;
using Out = ffi::ResultBuffer<ffi::F64>;

constexpr double kLog2Pi = 1.8378770664093453;

// ----------------------------------------------------------------------------- small matrices
// Row-major; `ld` arguments are not needed: every matrix here is dense and contiguous.

// C (m x n) = A (m x k) B (k x n), or C += when `add`.
inline void gemm_nn(int m, int n, int k, const double* A, const double* B, double* C,
                    bool add = false) {
  for (int i = 0; i < m; ++i) {
    double* c = C + i * n;
    if (!add)
      for (int j = 0; j < n; ++j) c[j] = 0.0;
    for (int l = 0; l < k; ++l) {
      const double a = A[i * k + l];
      const double* b = B + l * n;
      for (int j = 0; j < n; ++j) c[j] += a * b[j];
    }
  }
}

// Bt (n x m) = B' with B (m x n).
inline void transpose(int m, int n, const double* B, double* Bt) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) Bt[j * m + i] = B[i * n + j];
}

// C (m x n) = A (m x k) B' with B (n x k), or C += when `add`: B transposed first, so that the
// inner loop runs along contiguous rows (vectorised without reassociating sums).
inline void gemm_nt(int m, int n, int k, const double* A, const double* B, double* C,
                    bool add = false) {
  thread_local std::vector<double> Bt;
  if (Bt.size() < static_cast<size_t>(n) * k) Bt.resize(static_cast<size_t>(n) * k);
  transpose(n, k, B, Bt.data());
  gemm_nn(m, n, k, A, Bt.data(), C, add);
}

// C (m x n) = A' B with A (k x m), B (k x n), or C += when `add`.
inline void gemm_tn(int m, int n, int k, const double* A, const double* B, double* C,
                    bool add = false) {
  if (!add)
    for (int i = 0; i < m * n; ++i) C[i] = 0.0;
  for (int l = 0; l < k; ++l) {
    const double* a = A + l * m;
    const double* b = B + l * n;
    for (int i = 0; i < m; ++i) {
      const double ai = a[i];
      double* c = C + i * n;
      for (int j = 0; j < n; ++j) c[j] += ai * b[j];
    }
  }
}

inline void symmetrize(int n, double* S) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) {
      const double s = 0.5 * (S[i * n + j] + S[j * n + i]);
      S[i * n + j] = s;
      S[j * n + i] = s;
    }
}

// Lower Cholesky factor of S (n x n) in place (upper part zeroed); false if not positive.
inline bool cholesky(int n, double* S) {
  for (int j = 0; j < n; ++j) {
    double s = S[j * n + j];
    for (int l = 0; l < j; ++l) s -= S[j * n + l] * S[j * n + l];
    if (!(s > 0.0)) return false;
    const double c = std::sqrt(s);
    S[j * n + j] = c;
    for (int i = j + 1; i < n; ++i) {
      double t = S[i * n + j];
      for (int l = 0; l < j; ++l) t -= S[i * n + l] * S[j * n + l];
      S[i * n + j] = t / c;
    }
    for (int i = 0; i < j; ++i) S[i * n + j] = 0.0;
  }
  return true;
}

// X (n x m) := C^{-1} X, C lower (n x n).
inline void forward_solve(int n, int m, const double* C, double* X) {
  for (int i = 0; i < n; ++i) {
    double* x = X + i * m;
    for (int l = 0; l < i; ++l) {
      const double c = C[i * n + l];
      const double* xl = X + l * m;
      for (int j = 0; j < m; ++j) x[j] -= c * xl[j];
    }
    const double inv = 1.0 / C[i * n + i];
    for (int j = 0; j < m; ++j) x[j] *= inv;
  }
}

// X (n x m) := C'^{-1} X, C lower (n x n).
inline void backward_solve(int n, int m, const double* C, double* X) {
  for (int i = n - 1; i >= 0; --i) {
    double* x = X + i * m;
    for (int l = i + 1; l < n; ++l) {
      const double c = C[l * n + i];
      const double* xl = X + l * m;
      for (int j = 0; j < m; ++j) x[j] -= c * xl[j];
    }
    const double inv = 1.0 / C[i * n + i];
    for (int j = 0; j < m; ++j) x[j] *= inv;
  }
}

// ----------------------------------------------------------------------------- one sequence

// Relative change below which a covariance recursion counts as converged: sdessm.recursion's
// STEADY_RTOL. With time-invariant parameters and the same entries observed, a step whose
// predicted covariance repeats the previous one to this tolerance repeats all of its covariance
// work: the later steps share it (the filter's steady state), and the backward pass shares its
// products once N_t has converged too. The means are recomputed at every step.
constexpr double kSteadyRtol = 1e-13;

struct Model {
  const double *A, *Q, *H, *u, *R, *mu1, *P1;
  int64_t nA, nQ, nH, nu, nR;  // 1 (shared) or the number of steps
  // the covariance recursion is time-invariant (u moves the means only)
  bool shared() const { return nA == 1 && nQ == 1 && nH == 1 && nR == 1; }
};

struct Sizes {
  int T, p, d;
};

// The covariance side of a step; steps in a steady state point to one of them.
struct Cov {
  double* P;      // predicted covariance (d x d)
  double* Pf;     // filtered covariance (d x d)
  double* C;      // Cholesky factor of the innovation covariance F (n x n)
  double* Fi;     // F^{-1} (n x n)
  double* K;      // filter gain P Z' F^{-1} (d x n)
  double logdet;  // log|F| / 2
};

// What the forward pass keeps of step t for the backward pass.
struct Step {
  int n;       // observed entries
  int* obs;    // their indices (p)
  double* a;   // predicted mean (d)
  double* af;  // filtered mean (d)
  double* Fv;  // F^{-1} v (n)
  Cov own;     // this step's covariances, when computed
  Cov* cov;    // &own, or the steady state's
};

struct Storage {
  std::vector<int> obs;
  std::vector<double> data;
  std::vector<Step> steps;
  Storage(const Sizes& s, bool all) {
    const int keep = all ? s.T : 1;
    const size_t d = s.d, p = s.p;
    const size_t per = 2 * d + p + 2 * d * d + 2 * p * p + d * p;
    obs.resize(static_cast<size_t>(keep) * p);
    data.resize(static_cast<size_t>(keep) * per);
    steps.resize(keep);
    for (int t = 0; t < keep; ++t) {
      Step& st = steps[t];
      double* x = data.data() + static_cast<size_t>(t) * per;
      st.obs = obs.data() + static_cast<size_t>(t) * p;
      st.a = x;
      st.af = st.a + d;
      st.Fv = st.af + d;
      st.own.P = st.Fv + p;
      st.own.Pf = st.own.P + d * d;
      st.own.C = st.own.Pf + d * d;
      st.own.Fi = st.own.C + p * p;
      st.own.K = st.own.Fi + p * p;
      st.cov = &st.own;
    }
  }
  Step& at(int t) { return steps.size() == 1 ? steps[0] : steps[t]; }
};

inline const double* pick(const double* base, int64_t n, int t, size_t size) {
  return n == 1 ? base : base + static_cast<size_t>(t) * size;
}

inline bool converged(size_t n, const double* previous, const double* current) {
  double diff = 0.0, size = 0.0;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(current[i] - previous[i]));
    size = std::max(size, std::abs(current[i]));
  }
  return diff <= kSteadyRtol * size;
}

// The covariance work of one step with n > 0 observed entries Z (n x d): C, F^{-1}, K, Pf and
// log|F| / 2 into `c`, from c.P. False when F is not positive definite. `work` holds
// 3 p d + d d + p p doubles.
//
// Pf in the Joseph form (I - K Z) P (I - K Z)' + K R K' = M + (K R - M Z') K', M = P - K Z P
// the conventional update, in O(d^2 n): in exact arithmetic M Z' = K R, and in floating point
// the correction removes the cancellation error of M in the observed directions (a filtered
// variance of 1e-10 beside entries of 0.1 keeps 1e-16 of itself instead of 1e-7).
bool update_cov(int n, int d, const double* Z, const double* R, const int* obs, int p, Cov& c,
                double* work) {
  double* PZ = work;       // P Z' (d x n)
  double* W = PZ + n * d;  // C^{-1} Z P (n x d)
  double* E = W + n * d;   // K R - M Z' (d x n)
  double* Ro = E + n * d;  // observed block of R (n x n)
  double* tmp = Ro + n * n;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) Ro[i * n + j] = R[obs[i] * p + obs[j]];
  gemm_nt(d, n, d, c.P, Z, PZ);
  gemm_nn(n, n, d, Z, PZ, c.C);
  for (int i = 0; i < n * n; ++i) c.C[i] += Ro[i];
  symmetrize(n, c.C);
  if (!cholesky(n, c.C)) return false;
  c.logdet = 0.0;
  for (int i = 0; i < n; ++i) c.logdet += std::log(c.C[i * n + i]);
  transpose(d, n, PZ, W);
  forward_solve(n, d, c.C, W);
  gemm_tn(d, d, n, W, W, tmp);  // M = P - W' W
  for (int i = 0; i < d * d; ++i) c.Pf[i] = c.P[i] - tmp[i];
  backward_solve(n, d, c.C, W);  // K' = C'^{-1} C^{-1} Z P
  transpose(n, d, W, c.K);
  gemm_nn(d, n, n, c.K, Ro, E);            // K R
  gemm_nt(d, n, d, c.Pf, Z, tmp);          // M Z'
  for (int i = 0; i < d * n; ++i) E[i] -= tmp[i];
  gemm_nt(d, d, n, E, c.K, c.Pf, true);    // M + (K R - M Z') K'
  symmetrize(d, c.Pf);
  for (int i = 0; i < n * n; ++i) c.Fi[i] = 0.0;
  for (int i = 0; i < n; ++i) c.Fi[i * n + i] = 1.0;
  forward_solve(n, n, c.C, c.Fi);
  backward_solve(n, n, c.C, c.Fi);
  symmetrize(n, c.Fi);
  return true;
}

// Forward pass; returns log p(y), or NaN when an innovation covariance is not positive
// definite. Fills `store` (every step when it holds T steps, else the current one) and, when
// given, the filter's outputs. With `base` (the full store of an earlier sequence with the
// same covariance parameters and NaN mask) only the means are computed: the covariances, gains
// and factors are that sequence's.
double forward(const Model& m, const Sizes& s, const double* y, Storage& store, double* out_a,
               double* out_P, double* out_af, double* out_Pf, Storage* base = nullptr) {
  const int T = s.T, p = s.p, d = s.d;
  const size_t dd = static_cast<size_t>(d) * d, pd = static_cast<size_t>(p) * d;
  const bool shared = m.shared();
  std::vector<double> work(4 * pd + 2 * p + 3 * dd + static_cast<size_t>(p) * p +
                           std::max(dd, pd));
  double* Z = work.data();  // observed rows of H (n x d)
  double* v = Z + pd;       // innovation (n)
  double* Wv = v + p;       // C^{-1} v (n)
  double* P = Wv + p;       // predicted covariance of the coming step (d x d)
  double* tmp = P + dd;     // (d x d)
  double* scratch = tmp + dd;
  std::vector<int> obs(p), steady_obs(p);
  int steady_n = -1;
  Cov* steady = nullptr;  // the steady state's covariances, once converged
  std::vector<double> a(m.mu1, m.mu1 + d);
  std::copy(m.P1, m.P1 + dd, P);
  double ll = 0.0;
  for (int t = 0; t < T; ++t) {
    Step& st = store.at(t);
    const double* yt = y + static_cast<size_t>(t) * p;
    const double* H = pick(m.H, m.nH, t, pd);
    const double* u = pick(m.u, m.nu, t, p);
    int n = 0;
    for (int i = 0; i < p; ++i)
      if (!std::isnan(yt[i])) obs[n++] = i;
    const bool in_steady = base != nullptr ||
                           (steady != nullptr && n == steady_n &&
                            std::equal(obs.begin(), obs.begin() + n, steady_obs.begin()));
    st.n = n;
    std::copy(obs.begin(), obs.begin() + n, st.obs);
    std::copy(a.begin(), a.end(), st.a);
    for (int i = 0; i < n; ++i) std::copy(H + obs[i] * d, H + obs[i] * d + d, Z + i * d);
    if (base != nullptr) {
      st.cov = base->at(t).cov;
    } else if (in_steady) {
      st.cov = steady;
    } else {
      steady = nullptr;
      st.cov = &st.own;
      std::copy(P, P + dd, st.own.P);
      if (n > 0) {
        const double* R = pick(m.R, m.nR, t, static_cast<size_t>(p) * p);
        if (!update_cov(n, d, Z, R, obs.data(), p, st.own, scratch)) return std::nan("");
      } else {
        std::copy(P, P + dd, st.own.Pf);
      }
    }
    const Cov& c = *st.cov;
    std::copy(a.begin(), a.end(), st.af);
    if (n > 0) {
      for (int i = 0; i < n; ++i) {
        double zi = 0.0;
        for (int j = 0; j < d; ++j) zi += Z[i * d + j] * a[j];
        v[i] = yt[obs[i]] - zi - u[obs[i]];
      }
      std::copy(v, v + n, Wv);
      forward_solve(n, 1, c.C, Wv);
      double quad = 0.0;
      for (int i = 0; i < n; ++i) quad += Wv[i] * Wv[i];
      ll -= 0.5 * (n * kLog2Pi + quad) + c.logdet;
      std::copy(Wv, Wv + n, st.Fv);
      backward_solve(n, 1, c.C, st.Fv);
      gemm_nn(d, 1, n, c.K, v, st.af, true);  // af = a + K v
    }
    if (out_a) {
      const size_t off = static_cast<size_t>(t);
      std::copy(st.a, st.a + d, out_a + off * d);
      std::copy(c.P, c.P + dd, out_P + off * dd);
      std::copy(st.af, st.af + d, out_af + off * d);
      std::copy(c.Pf, c.Pf + dd, out_Pf + off * dd);
    }
    if (t + 1 < T) {
      const double* A = pick(m.A, m.nA, t, dd);
      gemm_nn(d, 1, d, A, st.af, a.data());
      if (!in_steady) {  // P = A Pf A' + Q
        const double* Q = pick(m.Q, m.nQ, t, dd);
        gemm_nn(d, d, d, A, c.Pf, tmp);
        gemm_nt(d, d, d, tmp, A, P);
        for (size_t i = 0; i < dd; ++i) P[i] += Q[i];
        symmetrize(d, P);
        if (shared && converged(dd, c.P, P)) {
          steady = st.cov;
          steady_n = n;
          std::copy(obs.begin(), obs.begin() + n, steady_obs.begin());
        }
      }
    }
  }
  return ll;
}

struct Gradient {
  double *A, *Q, *H, *u, *R, *mu1, *P1;  // shaped as the inputs
};

struct Smoothed {
  double *mean, *cov, *cross;  // (T, d), (T, d, d), (T - 1, d, d)
};

// Backward recursion over a full `store`: the gradient and/or the smoothed moments.
void backward(const Model& m, const Sizes& s, Storage& store, const Gradient* g,
              const Smoothed* sm) {
  const int T = s.T, p = s.p, d = s.d;
  const size_t dd = static_cast<size_t>(d) * d, pd = static_cast<size_t>(p) * d;
  const bool shared = m.shared();
  std::vector<double> r(d, 0.0), N(dd, 0.0), r_prev(d), N_prev(dd);
  std::vector<double> work(5 * dd + 6 * pd + static_cast<size_t>(p) * p + d + p +
                           std::max(dd, pd));
  double* Z = work.data();  // observed rows of H (n x d)
  double* AK = Z + pd;      // A K (d x n)
  double* NA = AK + pd;     // N A (d x d)
  double* NAPf = NA + dd;   // N A Pf (d x d)
  double* NAK = NAPf + dd;  // N A K (d x n)
  double* L = NAK + pd;     // L = A - A K Z (d x d)
  double* NL = L + dd;      // N L (d x d)
  double* LNL = NL + dd;    // L' N L (d x d)
  double* e = LNL + dd;     // (n)
  double* D = e + p;        // (n x n)
  double* FZ = D + static_cast<size_t>(p) * p;  // F^{-1} Z (n x d)
  double* HP = FZ + pd;                          // F^{-1} Z P, (A K)' N A Pf (2 x n x d)
  double* xhat = HP + 2 * pd;                    // (d)
  double* tmp = xhat + d;                        // (d x d) or (n x d)
  if (g) {
    auto zero = [](double* x, size_t n) { std::fill(x, x + n, 0.0); };
    zero(g->A, m.nA * dd);
    zero(g->Q, m.nQ * dd);
    zero(g->H, m.nH * pd);
    zero(g->u, m.nu * p);
    zero(g->R, m.nR * static_cast<size_t>(p) * p);
  }
  const Cov* cached = nullptr;  // the covariances whose products Z, F^{-1} Z, A K, L are held
  bool n_steady = false;        // N has converged: N's products are held too
  bool copied = false;          // the previous step's smoothed covariances can be copied
  for (int t = T - 1; t >= 0; --t) {
    Step& st = store.at(t);
    const Cov& c = *st.cov;
    const int n = st.n;
    const bool last = t == T - 1;
    const double* A = last ? nullptr : pick(m.A, m.nA, t, dd);
    const double* H = pick(m.H, m.nH, t, pd);
    const bool reuse = shared && !last && st.cov == cached;
    if (!reuse) {
      n_steady = false;
      cached = nullptr;
      for (int i = 0; i < n; ++i) std::copy(H + st.obs[i] * d, H + st.obs[i] * d + d, Z + i * d);
      if (n > 0) {
        gemm_nn(n, d, n, c.Fi, Z, FZ);
        gemm_nn(n, d, d, FZ, c.P, HP);  // F^{-1} Z P
      }
      if (!last) {
        if (n > 0) {
          gemm_nn(d, n, d, A, c.K, AK);  // A K
          gemm_nn(d, d, n, AK, Z, tmp);
          for (size_t i = 0; i < dd; ++i) L[i] = A[i] - tmp[i];
        } else {
          std::copy(A, A + dd, L);
        }
        cached = st.cov;
      }
    }
    // the products with N (held once N has converged)
    if (!last && !n_steady) {
      gemm_nn(d, d, d, N.data(), A, NA);
      gemm_nn(d, d, d, NA, c.Pf, NAPf);
      gemm_nn(d, d, d, N.data(), L, NL);
      gemm_tn(d, d, d, L, NL, LNL);
      if (n > 0) {
        gemm_nn(d, n, d, N.data(), AK, NAK);
        gemm_tn(n, d, d, AK, NAPf, HP + static_cast<size_t>(n) * d);  // (A K)' N A Pf
        std::copy(c.Fi, c.Fi + n * n, D);
        gemm_tn(n, n, d, AK, NAK, D, true);  // D = F^{-1} + (A K)' N A K
      }
    }
    // r_prev = Z' F^{-1} v + L' r, N_prev = Z' F^{-1} Z + L' N L
    std::fill(r_prev.begin(), r_prev.end(), 0.0);
    if (n > 0) gemm_tn(d, 1, n, Z, st.Fv, r_prev.data());
    if (!last) gemm_tn(d, 1, d, L, r.data(), r_prev.data(), true);
    const bool was_steady = n_steady;
    if (n_steady) {
      std::copy(N.begin(), N.end(), N_prev.begin());
    } else {
      std::fill(N_prev.begin(), N_prev.end(), 0.0);
      if (n > 0) gemm_tn(d, d, n, Z, FZ, N_prev.data());
      if (!last)
        for (size_t i = 0; i < dd; ++i) N_prev[i] += LNL[i];
      symmetrize(d, N_prev.data());
      if (reuse && converged(dd, N.data(), N_prev.data())) n_steady = true;
    }
    // E[x_t | y] = a + P r_prev
    std::copy(st.a, st.a + d, xhat);
    gemm_nn(d, 1, d, c.P, r_prev.data(), xhat, true);
    if (sm) {
      std::copy(xhat, xhat + d, sm->mean + static_cast<size_t>(t) * d);
      double* V = sm->cov + static_cast<size_t>(t) * dd;
      double* X = last ? nullptr : sm->cross + static_cast<size_t>(t) * dd;
      if (was_steady && copied) {  // as at step t + 1
        std::copy(V + dd, V + 2 * dd, V);
        std::copy(X + dd, X + 2 * dd, X);
      } else {
        gemm_nn(d, d, d, c.P, N_prev.data(), tmp);  // V = P - P N_prev P
        gemm_nn(d, d, d, tmp, c.P, V);
        for (size_t i = 0; i < dd; ++i) V[i] = c.P[i] - V[i];
        symmetrize(d, V);
        if (!last) {  // Cov[x_{t+1}, x_t | y] = A Pf - P_{t+1} N A Pf
          gemm_nn(d, d, d, A, c.Pf, X);
          gemm_nn(d, d, d, store.at(t + 1).cov->P, NAPf, tmp);
          for (size_t i = 0; i < dd; ++i) X[i] -= tmp[i];
        }
      }
      copied = was_steady;
    }
    if (g) {
      if (n > 0) {
        // e = F^{-1} v - (A K)' r, D = F^{-1} + (A K)' N (A K)
        std::copy(st.Fv, st.Fv + n, e);
        if (last) {
          std::copy(c.Fi, c.Fi + n * n, D);
        } else {
          for (int i = 0; i < n; ++i) {
            double s2 = 0.0;
            for (int j = 0; j < d; ++j) s2 += AK[j * n + i] * r[j];
            e[i] -= s2;
          }
        }
        double* gu = g->u + (m.nu == 1 ? 0 : static_cast<size_t>(t) * p);
        double* gR = g->R + (m.nR == 1 ? 0 : static_cast<size_t>(t) * p * p);
        double* gH = g->H + (m.nH == 1 ? 0 : static_cast<size_t>(t) * pd);
        for (int i = 0; i < n; ++i) {
          const int oi = st.obs[i];
          gu[oi] += e[i];
          for (int j = 0; j < n; ++j)
            gR[oi * p + st.obs[j]] += 0.5 * (e[i] * e[j] - D[i * n + j]);
        }
        // d/dH = e xhat' - F^{-1} Z P + (A K)' N A Pf, on the observed rows
        for (int i = 0; i < n; ++i) {
          double* row = gH + static_cast<size_t>(st.obs[i]) * d;
          const double* h1 = HP + i * d;
          const double* h2 = HP + static_cast<size_t>(n) * d + i * d;
          for (int j = 0; j < d; ++j) row[j] += e[i] * xhat[j] - h1[j] + (last ? 0.0 : h2[j]);
        }
      }
      if (!last) {
        double* gA = g->A + (m.nA == 1 ? 0 : static_cast<size_t>(t) * dd);
        double* gQ = g->Q + (m.nQ == 1 ? 0 : static_cast<size_t>(t) * dd);
        for (int i = 0; i < d; ++i)
          for (int j = 0; j < d; ++j) {
            gA[i * d + j] += r[i] * xhat[j] - NAPf[i * d + j];
            gQ[i * d + j] += 0.5 * (r[i] * r[j] - N[i * d + j]);
          }
      }
    }
    r.swap(r_prev);
    N.swap(N_prev);
  }
  if (g) {
    for (int i = 0; i < d; ++i) g->mu1[i] = r[i];
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) g->P1[i * d + j] = 0.5 * (r[i] * r[j] - N[i * d + j]);
  }
}

// ----------------------------------------------------------------------------- FFI boundary

struct Layout {
  Sizes s;
  int64_t batch;
  Model m;  // batch element 0
};

ffi::Error layout(const Buf& A, const Buf& Q, const Buf& H, const Buf& u, const Buf& R,
                  const Buf& mu1, const Buf& P1, const Buf& y, Layout& out) {
  auto yd = y.dimensions();
  auto md = mu1.dimensions();
  if (yd.size() < 2 || md.size() < 1)
    return ffi::Error::InvalidArgument("sdessm kernel: y needs (T, p), mu1 (d,)");
  const int64_t T = yd[yd.size() - 2], p = yd[yd.size() - 1], d = md[md.size() - 1];
  if (T < 1 || p < 1 || d < 1)
    return ffi::Error::InvalidArgument("sdessm kernel: empty y or state");
  const int64_t batch = static_cast<int64_t>(y.element_count()) / (T * p);
  auto lead = [&](const Buf& b, int64_t core) -> int64_t {
    return static_cast<int64_t>(b.element_count()) / (batch * core);
  };
  out.s = Sizes{static_cast<int>(T), static_cast<int>(p), static_cast<int>(d)};
  out.batch = batch;
  if (batch == 0) return ffi::Error::Success();  // nothing to do
  const int64_t steps = T > 1 ? T - 1 : 1;
  auto ok = [](int64_t n, int64_t full) { return n == 1 || n == full; };
  Model& m = out.m;
  m = Model{A.typed_data(), Q.typed_data(), H.typed_data(), u.typed_data(), R.typed_data(),
            mu1.typed_data(), P1.typed_data(), lead(A, d * d), lead(Q, d * d), lead(H, p * d),
            lead(u, p), lead(R, p * p)};
  if (!ok(m.nA, steps) || !ok(m.nQ, steps) || !ok(m.nH, T) || !ok(m.nu, T) || !ok(m.nR, T) ||
      static_cast<int64_t>(mu1.element_count()) != batch * d ||
      static_cast<int64_t>(P1.element_count()) != batch * d * d)
    return ffi::Error::InvalidArgument("sdessm kernel: inconsistent shapes");
  return ffi::Error::Success();
}

// The model of batch element b.
Model element(const Layout& L, int64_t b) {
  const size_t d = L.s.d, p = L.s.p;
  Model m = L.m;
  m.A += b * m.nA * d * d;
  m.Q += b * m.nQ * d * d;
  m.H += b * m.nH * p * d;
  m.u += b * m.nu * p;
  m.R += b * m.nR * p * p;
  m.mu1 += b * d;
  m.P1 += b * d * d;
  return m;
}

// Whether batch element b has element 0's covariance parameters (A, Q, H, R, P1, bit for bit)
// and NaN mask: then its covariance recursion is element 0's, and only its means are computed.
bool shares_covariances(const Layout& L, int64_t b, const double* y) {
  const Model m0 = element(L, 0), mb = element(L, b);
  const size_t d = L.s.d, p = L.s.p, T = L.s.T;
  auto same = [](const double* x, const double* z, size_t n) {
    return std::memcmp(x, z, n * sizeof(double)) == 0;
  };
  if (!same(m0.A, mb.A, L.m.nA * d * d) || !same(m0.Q, mb.Q, L.m.nQ * d * d) ||
      !same(m0.H, mb.H, L.m.nH * p * d) || !same(m0.R, mb.R, L.m.nR * p * p) ||
      !same(m0.P1, mb.P1, d * d))
    return false;
  const double* y0 = y;
  const double* yb = y + b * T * p;
  for (size_t i = 0; i < T * p; ++i)
    if (std::isnan(y0[i]) != std::isnan(yb[i])) return false;
  return true;
}

// Runs the forward pass of every batch element: element 0 into `first` (kept whole when there
// are more, so that later elements with its covariance parameters and mask share it), the
// others into `other`; `each(b, store, value)` follows each element's pass.
template <typename Outputs, typename Each>
void forward_all(const Layout& L, const double* y, bool keep, Outputs outputs, Each each) {
  const size_t Tp = static_cast<size_t>(L.s.T) * L.s.p;
  Storage first(L.s, keep || L.batch > 1);
  Storage other(L.s, keep);
  bool first_ok = false;
  for (int64_t b = 0; b < L.batch; ++b) {
    double* out[4] = {nullptr, nullptr, nullptr, nullptr};
    outputs(b, out);
    const bool share = b > 0 && first_ok && shares_covariances(L, b, y);
    Storage& store = b == 0 ? first : other;
    const double value = forward(element(L, b), L.s, y + b * Tp, store, out[0], out[1], out[2],
                                 out[3], share ? &first : nullptr);
    if (b == 0) first_ok = !std::isnan(value);
    each(b, store, value);
  }
}

ffi::Error LoglikImpl(Buf A, Buf Q, Buf H, Buf u, Buf R, Buf mu1, Buf P1, Buf y, Out ll) {
  Layout L;
  if (auto err = layout(A, Q, H, u, R, mu1, P1, y, L); err.failure()) return err;
  forward_all(
      L, y.typed_data(), false, [](int64_t, double**) {},
      [&](int64_t b, Storage&, double value) { ll->typed_data()[b] = value; });
  return ffi::Error::Success();
}

// NaN in the n doubles at x: the outputs of a sequence whose innovation covariance failed.
inline void poison(double* x, size_t n) { std::fill(x, x + n, std::nan("")); }

ffi::Error FilterImpl(Buf A, Buf Q, Buf H, Buf u, Buf R, Buf mu1, Buf P1, Buf y, Out ll,
                      Out a, Out P, Out af, Out Pf) {
  Layout L;
  if (auto err = layout(A, Q, H, u, R, mu1, P1, y, L); err.failure()) return err;
  const size_t T = L.s.T, d = L.s.d;
  auto outputs = [&](int64_t b, double** out) {
    out[0] = a->typed_data() + b * T * d;
    out[1] = P->typed_data() + b * T * d * d;
    out[2] = af->typed_data() + b * T * d;
    out[3] = Pf->typed_data() + b * T * d * d;
  };
  forward_all(L, y.typed_data(), false, outputs, [&](int64_t b, Storage&, double value) {
    ll->typed_data()[b] = value;
    if (std::isnan(value)) {
      double* out[4];
      outputs(b, out);
      poison(out[0], T * d);
      poison(out[1], T * d * d);
      poison(out[2], T * d);
      poison(out[3], T * d * d);
    }
  });
  return ffi::Error::Success();
}

ffi::Error SmootherImpl(Buf A, Buf Q, Buf H, Buf u, Buf R, Buf mu1, Buf P1, Buf y, Out ll,
                        Out mean, Out cov, Out cross) {
  Layout L;
  if (auto err = layout(A, Q, H, u, R, mu1, P1, y, L); err.failure()) return err;
  const size_t T = L.s.T, d = L.s.d;
  const size_t steps = T - 1;
  forward_all(
      L, y.typed_data(), true, [](int64_t, double**) {},
      [&](int64_t b, Storage& store, double value) {
        ll->typed_data()[b] = value;
        Smoothed sm{mean->typed_data() + b * T * d, cov->typed_data() + b * T * d * d,
                    cross->typed_data() + b * steps * d * d};
        if (std::isnan(value)) {
          poison(sm.mean, T * d);
          poison(sm.cov, T * d * d);
          poison(sm.cross, steps * d * d);
          return;
        }
        backward(element(L, b), L.s, store, nullptr, &sm);
      });
  return ffi::Error::Success();
}

ffi::Error GradImpl(Buf A, Buf Q, Buf H, Buf u, Buf R, Buf mu1, Buf P1, Buf y, Out ll, Out gA,
                    Out gQ, Out gH, Out gu, Out gR, Out gmu1, Out gP1) {
  Layout L;
  if (auto err = layout(A, Q, H, u, R, mu1, P1, y, L); err.failure()) return err;
  const size_t p = L.s.p, d = L.s.d;
  forward_all(
      L, y.typed_data(), true, [](int64_t, double**) {},
      [&](int64_t b, Storage& store, double value) {
        ll->typed_data()[b] = value;
        Gradient g{gA->typed_data() + b * L.m.nA * d * d, gQ->typed_data() + b * L.m.nQ * d * d,
                   gH->typed_data() + b * L.m.nH * p * d, gu->typed_data() + b * L.m.nu * p,
                   gR->typed_data() + b * L.m.nR * p * p, gmu1->typed_data() + b * d,
                   gP1->typed_data() + b * d * d};
        if (std::isnan(value)) {
          poison(g.A, L.m.nA * d * d);
          poison(g.Q, L.m.nQ * d * d);
          poison(g.H, L.m.nH * p * d);
          poison(g.u, L.m.nu * p);
          poison(g.R, L.m.nR * p * p);
          poison(g.mu1, d);
          poison(g.P1, d * d);
          return;
        }
        backward(element(L, b), L.s, store, &g, nullptr);
      });
  return ffi::Error::Success();
}

}  // namespace

#define SDESSM_ARGS                                                                         \
  ffi::Ffi::Bind()                                                                          \
      .Arg<Buf>()                                                                           \
      .Arg<Buf>()                                                                           \
      .Arg<Buf>()                                                                           \
      .Arg<Buf>()                                                                           \
      .Arg<Buf>()                                                                           \
      .Arg<Buf>()                                                                           \
      .Arg<Buf>()                                                                           \
      .Arg<Buf>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(SdessmLoglik, LoglikImpl, SDESSM_ARGS.Ret<Buf>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SdessmFilter, FilterImpl,
                              SDESSM_ARGS.Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SdessmSmoother, SmootherImpl,
                              SDESSM_ARGS.Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SdessmLoglikGrad, GradImpl,
                              SDESSM_ARGS.Ret<Buf>()
                                  .Ret<Buf>()
                                  .Ret<Buf>()
                                  .Ret<Buf>()
                                  .Ret<Buf>()
                                  .Ret<Buf>()
                                  .Ret<Buf>()
                                  .Ret<Buf>());
