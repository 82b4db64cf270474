"""Benchmark: our closed-form multi-target Ridge vs scikit-learn's Ridge (not a test; run on demand).

    .venv/bin/python benchmarks/bench_ridge.py --workdir /tmp/bench-ridge --threads 2

Figures go to docs/benchmarks/training.md. For each problem size the parent process writes one seeded
synthetic data set (float64 .npy files), then runs every fit in a FRESH child process. The child loads
the data, records its RSS (the baseline), fits, predicts a held-out block and reports its wall time and
its own peak RSS (VmHWM from /proc/self/status: ru_maxrss is not used because Linux carries the
parent's RSS at fork into the child's ru_maxrss, even across exec). So each memory figure is that fit's.

Fits (one child each):

- ``ours-cv``: ``brainrecon.models.ridge.Ridge().fit`` as shipped: 13 alphas (1 .. 1e6), 5-fold CV,
  then a refit on all rows at the chosen alpha. float64, the default ``RidgeConfig.dtype``.
- ``ours-chol``: ``Ridge(RidgeConfig(alphas=[a])).fit``, which with a single alpha skips the CV and
  solves by Cholesky: what ships, and the like-for-like comparison with sklearn.
- ``ours-1a`` / ``ours-1a-f32``: one alpha through the eigendecomposition path without the CV loop
  (centre, ``_Spectrum.of``, ``project``, ``weights``), kept as a reference for the CV's cost per
  decomposition. f32 is the dtype of the ``nsd-ridge`` preset on a GPU.
- ``sklearn``: ``sklearn.linear_model.Ridge(alpha, solver="auto")`` with ``fit_intercept=True``. On dense
  data with one shared alpha, "auto" resolves to "cholesky" (recorded from ``solver_``): it solves
  ``(X'X + aI) W = X'Y`` when n >= p and the kernel system ``(XX' + aI) D = Y`` when n < p.

The single-alpha fits use the alpha ``ours-cv`` chose where CV ran on that size, else ``--alpha``.
Predictions on 500 held-out rows are compared with sklearn's:
``max|ours - sk| / max|sk|`` and ``||ours - sk||_F / ||sk||_F``.

Data (float64): X = Z A + noise and Y = Z B + noise, with Z a 48-d latent with a decaying spectrum.
So X is correlated, like voxels, and the chosen alpha is not at an edge of the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# (n trials, p voxels, t targets). t = 65 x 128, the simulated world's image tokens.
SIZES = {
    "tiny": (600, 300, 1040),  # for debugging the script
    "tiny-wide": (300, 600, 1040),
    "issue": (3000, 1500, 4000),  # the size of the cross-validation issue's figures (CV vs one fit)
    "tall": (3000, 1500, 40000),  # the issue size with 10x the targets: five target blocks, for the memory model
    "small": (4000, 2000, 8320),  # ~ one simulated-world subject (5,000 train trials x 1,700-2,400 voxels)
    "large": (8000, 4000, 8320),  # 2x trials, 2x voxels: ~0.8 GB of float64 data, a few minutes
    "wide": (2000, 8000, 8320),  # more voxels than trials: the dual (n x n Gram) path
}
N_TEST = 500
LATENT = 48
SEED = 0


# --------------------------------------------------------------------------------------------------
# data


def make_data(n: int, p: int, t: int, out: Path) -> None:
    rng = np.random.default_rng([SEED, n, p, t])
    strength = 1.0 / np.sqrt(1.0 + np.arange(LATENT))
    z = rng.standard_normal((n + N_TEST, LATENT)) * strength
    a = rng.standard_normal((LATENT, p))
    b = rng.standard_normal((LATENT, t)) / np.sqrt(LATENT)
    x = z @ a
    x += 2.0 * rng.standard_normal(x.shape)
    np.save(out / "x.npy", x[:n])
    np.save(out / "x_test.npy", x[n:])
    del x
    y = np.empty((n, t))
    for start in range(0, n, 1000):  # in chunks: the parent's memory is not measured, but keep it small
        stop = min(n, start + 1000)
        y[start:stop] = z[start:stop] @ b + 0.5 * rng.standard_normal((stop - start, t))
    np.save(out / "y.npy", y)


# --------------------------------------------------------------------------------------------------
# child: one fit, measured


def status_mb(field: str) -> float:
    """A /proc/self/status field in MiB. VmHWM is this process image's peak RSS: unlike ru_maxrss it is
    reset by exec, so it does not inherit the parent's RSS at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def time_parts() -> dict:
    """Wrap the steps of ``Ridge.fit`` so that each adds its wall time to the returned dict (filled as it runs)."""
    from brainrecon.models import ridge

    parts: dict[str, float] = {}
    steps = ((ridge._Spectrum, "of", "Gram + eigh"), (ridge._Spectrum, "project", "P = Q'X'Y"),
             (ridge.Ridge, "_centred", "targets read and centred"),
             (ridge._TraceStatistics, "add", "P P', Y_v Y_v', Y_v P'"),
             (ridge._TraceStatistics, "bounded_errors", "per-alpha traces"), (ridge._Spectrum, "weights", "weights"),
             (ridge._OutOfFold, "add", "out-of-fold moments"),
             (ridge._TraceStatistics, "out_of_fold", "out-of-fold squares from the traces"),
             (ridge._GroupMoments, "add", "out-of-fold means"))
    for owner, name, label in steps:
        def timed(*a, _step=getattr(owner, name), _label=label, **k):
            started = time.perf_counter()
            out = _step(*a, **k)
            if k.get("dtype") is not None:  # the traces' float32 screen, apart from their exact passes
                _label += f" ({str(k['dtype']).removeprefix('torch.')} screen)"
            parts[_label] = parts.get(_label, 0.0) + time.perf_counter() - started
            return out
        setattr(owner, name, timed)
    return parts


def child(args) -> None:
    data = Path(args.data)
    info: dict = {"method": args.method}
    # imports first, so that neither the baseline RSS nor the fit time counts them
    if args.method == "sklearn":
        from sklearn.linear_model import Ridge as SkRidge
    elif args.method == "himalaya-cv":  # pip install himalaya (numpy + scikit-learn); its torch backend, our BLAS
        import torch
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV
        from sklearn.model_selection import KFold

        torch.set_num_threads(args.threads)
        set_backend("torch")
        info["himalaya"] = __import__("himalaya").__version__
    else:
        import torch

        from brainrecon.models.ridge import Ridge, RidgeConfig, _Spectrum

        torch.set_num_threads(args.threads)
        info["torch_threads"] = torch.get_num_threads()
    x, y, x_test = (np.load(data / f) for f in ("x.npy", "y.npy", "x_test.npy"))
    info["baseline_mb"] = status_mb("VmRSS")
    started = time.perf_counter()
    if args.method == "sklearn":
        model = SkRidge(alpha=args.alpha, solver="auto", fit_intercept=True).fit(x, y)
        info["fit_s"] = time.perf_counter() - started
        info["solver"] = model.solver_
        started = time.perf_counter()
        pred = model.predict(x_test)
    elif args.method == "himalaya-cv":  # the same grid, 5 shuffled folds, one alpha shared by all targets
        model = RidgeCV(alphas=np.logspace(0, 6, 13), fit_intercept=True, solver_params={"local_alpha": False},
                        cv=KFold(5, shuffle=True, random_state=0)).fit(x, y)
        info["fit_s"] = time.perf_counter() - started
        info["alpha"] = float(np.asarray(model.best_alphas_)[0])
        started = time.perf_counter()
        pred = np.asarray(model.predict(x_test), dtype=np.float64)
    else:
        dtype = "float32" if "-f32" in args.method else "float64"
        if args.method.startswith("ours-cv"):  # ours-cv-before: the same call, on the code before this change
            # ours-cv2: the same CV over two of the grid's alphas, to split the CV's cost into what every alpha
            # shares and what each alpha adds
            grid = {"alphas": (1e4, 1e5)} if args.method == "ours-cv2" else {}
            if args.parts:
                info["parts"] = time_parts()
            ridge = Ridge(RidgeConfig(dtype=dtype, **grid)).fit(x, y)
            info["alpha"] = float(ridge.alpha[0])
            info["cv_errors"] = next(iter(ridge.cv_scores.values()))
            info["cv_screen"] = getattr(ridge, "cv_screen", None)  # None from code before the screen (--before)
        elif args.method == "ours-chol":  # one alpha, one Cholesky solve, nothing else (the CV's yardstick)
            from brainrecon.models.ridge import _CholeskyFit

            ridge = Ridge(RidgeConfig(alphas=(args.alpha,), dtype=dtype))
            xt, yt = ridge._tensor(x), ridge._tensor(y)
            ridge.x_mean, ridge.y_mean = xt.mean(0), yt.mean(0)
            ridge.weight = _CholeskyFit(xt - ridge.x_mean, ridge._tensor([args.alpha])[0]).solve(yt - ridge.y_mean)
            del xt, yt
        else:  # the refit step of Ridge.fit, without its CV loop
            ridge = Ridge(RidgeConfig(alphas=(args.alpha,), dtype=dtype))
            xt, yt = ridge._tensor(x), ridge._tensor(y)
            ridge.x_mean, ridge.y_mean = xt.mean(0), yt.mean(0)
            spectrum = _Spectrum.of(xt - ridge.x_mean)
            alpha = torch.full((yt.shape[1],), args.alpha, dtype=xt.dtype)
            ridge.weight = spectrum.weights(spectrum.project(yt - ridge.y_mean), alpha, [slice(0, yt.shape[1])])
            info["form"] = "dual" if spectrum.dual else "primal"
            del xt, yt, spectrum
        info["fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        pred = ridge.predict(x_test).double().numpy()
    info["predict_s"] = time.perf_counter() - started
    info["peak_mb"] = status_mb("VmHWM")
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = sorted({f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()})
    except ImportError:
        pass
    np.save(Path(args.pred), pred)
    print(json.dumps(info))


# --------------------------------------------------------------------------------------------------
# parent


def run_child(method: str, data: Path, alpha: float, threads: int, pred: Path, before: Path | None = None,
              parts: bool = False) -> dict:
    env = dict(os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                        "MKL_NUM_THREADS")})
    if method.endswith("-before"):
        env["PYTHONPATH"] = str(before)  # a checkout of the code before the change (--before)
    cmd = [sys.executable, __file__, "--child", method, "--data", str(data), "--alpha", repr(alpha),
           "--threads", str(threads), "--pred", str(pred)] + (["--parts"] if parts else [])
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def working_set(n: int, p: int, t: int, cv: bool, block: int = 8192, screened: bool = False) -> int:
    """Elements ``Ridge.fit`` holds at its peak on top of its inputs X (n, p) and Y (n, t), from reading ridge.py.

    m = min(n, p), v = n / 5 rows per fold, b = min(block, t) target columns read at a time.
    Both paths: the centred X (n p); per block the columns read and centred (2 n b) and their products
    (X'Y_b and P_b: p b + m b).
    One alpha (Cholesky): the Gram and its factor (2 m^2, the Gram kept in the dual form), the weights
    (p t) and each fold's (I - H_vv)^-1 (5 v^2).
    Cross-validation: eigh (~5 m^2 while it runs; the m^2 eigenvectors are kept); P = Q'X'Y (m t), which
    becomes the weights in place in the primal form (the dual needs p t more); the CV statistics (P P',
    m^2; Y_v P' over the folds, n m; Y_v Y_v', n v), or, with fewer targets than k, one fold's 13
    (I - H_vv)^-1 (13 v^2) while its residuals are formed block by block; per fold and alpha a few v x m
    and v x v blocks; then, with ``oof_statistics: group`` (the default), one block read again (``read``),
    or with ``target`` the out-of-fold inverses (5 v^2), a block and its fold residuals (3 v b).
    ``screened``: a float64 fit's float32 screen of the traces, while it runs, holds P P' (m^2), a fold's
    statistics and factors (3 v m + v^2) and its per-alpha blocks (4 v m + 4 v^2) at half the element size.
    In the primal form, where m <= b, the CV keeps X Q (n m) from the eigendecomposition to the end.
    """
    m, v, b = min(n, p), n / 5, min(block, t)
    centred, read = n * p, 2 * n * b + (p + m) * b
    if not cv:
        return int(centred + 3 * m * m + p * t + 5 * v * v + read)
    statistics = m * m + n * m + n * v if t > m else 13 * v * v
    screen = (m * m + 7 * v * m + 5 * v * v) / 2 if screened else 0
    gather = m * t + statistics + max(read, 4 * v * m + 4 * v * v, screen)
    weights = m * t + (p * t if n < p else 0) + m * b
    moments = p * t + read + (5 * v * v + 3 * v * b if t <= m else 0)
    rotated = n * m if n >= p and m <= b else 0
    return int(centred + m * m + max(5 * m * m, rotated + max(gather, weights, moments)))


def predicted_extra_mb(n: int, p: int, t: int, method: str, block: int = 8192) -> float | None:
    """Expected peak RSS above the baseline (inputs loaded as float64) for one of our fits."""
    if not method.startswith("ours-cv") or method.endswith("-before"):  # only Ridge.fit as shipped is modelled
        return None
    itemsize = 4 if method.endswith("f32") else 8
    copies = n * p if itemsize == 4 else 0  # the float64 X converted to a float32 tensor (Y is read in blocks)
    return (copies + working_set(n, p, t, cv=True, block=block, screened=itemsize == 8)) * itemsize / 2**20


def compare(pred: np.ndarray, ref: np.ndarray) -> dict:
    return {"max_rel": float(np.abs(pred - ref).max() / np.abs(ref).max()),
            "fro_rel": float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-ridge"))
    parser.add_argument("--sizes", default="small,large,wide")
    parser.add_argument("--cv-sizes", default="small", help="sizes on which ours-cv runs (13 alphas x 5 folds)")
    parser.add_argument("--alpha", type=float, default=1e4, help="alpha where CV did not run on that size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit: its CV runs beside ours "
                                                    "(ours-cv-before) on the CV sizes, e.g. from `git worktree "
                                                    "add /tmp/before f5dacea`")
    parser.add_argument("--alpha-cost", action="store_true", help="also run the CV over 2 alphas on the CV sizes "
                                                                   "(ours-cv2): the CV's cost split into what every "
                                                                   "alpha shares and what each alpha adds")
    parser.add_argument("--parts", action="store_true", help="time the steps of ours-cv (and ours-cv2) in the child")
    parser.add_argument("--pairs", type=int, default=0, help="on the CV sizes, also time this many more pairs of "
                                                             "fits in turn (CV, one Cholesky fit, CV, ...), each in a "
                                                             "fresh child, and print the ratio pair by pair: a ratio "
                                                             "that holds while this VM's speed drifts; with --before, "
                                                             "each turn fits the earlier code's CV too")
    parser.add_argument("--f32-cv", action="store_true", help="also run the CV in float32 on the CV sizes "
                                                               "(ours-cv-f32, and ours-cv-f32-before with --before): "
                                                               "the dtype of the NSD preset, where no screen runs")
    parser.add_argument("--himalaya", action="store_true", help="also time himalaya's RidgeCV on the CV sizes "
                                                                 "(pip install himalaya; not a dependency)")
    # child mode
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--pred", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        child(args)
        return

    import torch

    header = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
              "cpus": os.cpu_count(), "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    import sklearn

    header["sklearn"] = sklearn.__version__
    print(json.dumps(header))
    total = time.perf_counter()
    results = []
    cv_sizes = set(args.cv_sizes.split(",")) if args.cv_sizes else set()
    for size in args.sizes.split(","):
        n, p, t = SIZES[size]
        data = args.workdir / size
        data.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        make_data(n, p, t, data)
        print(f"\n== {size}: n={n} trials, p={p} voxels, t={t} targets "
              f"(data written in {time.perf_counter() - started:.1f} s)", flush=True)
        alpha = args.alpha
        rows = {}
        methods = ((["ours-cv"] + (["ours-cv2"] if args.alpha_cost else []) + (["ours-cv-before"] if args.before else [])
                    + (["ours-cv-f32"] + (["ours-cv-f32-before"] if args.before else []) if args.f32_cv else [])
                    + (["himalaya-cv"] if args.himalaya else []) if size in cv_sizes else [])
                   + ["ours-chol", "ours-1a", "ours-1a-f32", "sklearn"])
        for method in methods:
            rows[method] = run_child(method, data, alpha, args.threads, data / f"pred-{method}.npy", args.before,
                                     args.parts and method in ("ours-cv", "ours-cv2"))
            if method == "ours-cv":
                alpha = rows[method]["alpha"]
            if method == "himalaya-cv":
                rows[method]["alpha_used"] = rows[method]["alpha"]
                print(f"{method:12s} fit {rows[method]['fit_s']:7.2f} s  peak RSS {rows[method]['peak_mb']:7.0f} MB  "
                      f"alpha {rows[method]['alpha']:g}", flush=True)
                continue
            rows[method]["alpha_used"] = alpha
            r = rows[method]
            if r.get("cv_screen"):
                print(f"{method:12s} screen: alphas computed in the fit's dtype "
                      f"{r['cv_screen'].get('exact', r['cv_screen'].get('recomputed'))}, "
                      f"its largest relative error seen {r['cv_screen']['drift']:.1e}, every alpha exact "
                      f"{r['cv_screen']['every_alpha_exact']}, left unfinished (provably far from the least) "
                      f"{r['cv_screen'].get('pruned', [])}; (fold, alpha) traces computed "
                      f"{r['cv_screen'].get('traces', '-')} of {r['cv_screen'].get('of', '-')}", flush=True)
            r["predicted_extra_mb"] = predicted_extra_mb(n, p, t, method)
            print(f"{method:12s} fit {r['fit_s']:7.2f} s  peak RSS {r['peak_mb']:7.0f} MB  "
                  f"(baseline {r['baseline_mb']:6.0f} MB, +{r['peak_mb'] - r['baseline_mb']:6.0f} MB; "
                  + (f"model +{r['predicted_extra_mb']:.0f} MB)  " if r["predicted_extra_mb"] is not None
                     else "model -)  ")
                  + f"alpha {alpha:g}" + (f"  solver {r['solver']}" if "solver" in r else "")
                  + (f"  form {r['form']}" if "form" in r else ""), flush=True)
        ref = np.load(data / "pred-sklearn.npy")
        for method in methods:
            if method != "sklearn":
                rows[method]["vs_sklearn"] = compare(np.load(data / f"pred-{method}.npy"), ref)
                d = rows[method]["vs_sklearn"]
                print(f"{method:12s} vs sklearn: max rel diff {d['max_rel']:.2e}, Frobenius rel {d['fro_rel']:.2e}")
        if "himalaya-cv" in rows:
            print(f"himalaya-cv / ours-cv: {rows['himalaya-cv']['fit_s'] / rows['ours-cv']['fit_s']:.2f}x the time")
        if "ours-cv" in rows:
            ratio = rows["ours-cv"]["fit_s"] / rows["ours-chol"]["fit_s"]
            print(f"ours-cv / ours-chol (13 alphas x 5 folds vs one Cholesky fit): {ratio:.1f}x"
                  + (f"; before this change {rows['ours-cv-before']['fit_s'] / rows['ours-chol']['fit_s']:.1f}x"
                     if "ours-cv-before" in rows else ""))
        if args.pairs and size in cv_sizes:
            ratios, changes = [], []
            for _ in range(args.pairs):
                fit = {method: run_child(method, data, alpha, args.threads, data / "pred-pair.npy", args.before)["fit_s"]
                       for method in ["ours-cv", "ours-chol"] + (["ours-cv-before"] if args.before else [])}
                ratios.append(fit["ours-cv"] / fit["ours-chol"])
                if args.before:
                    changes.append(fit["ours-cv"] - fit["ours-cv-before"])
            rows["pairs"], rows["pairs_minus_before_s"] = ratios, changes
            print(f"ours-cv / ours-chol over {args.pairs} more pairs, fitted in turn: median {np.median(ratios):.1f}x "
                  f"(min {min(ratios):.1f}x, max {max(ratios):.1f}x)", flush=True)
            if changes:
                print(f"ours-cv - ours-cv-before in the same turns: median {np.median(changes):+.2f} s (min "
                      f"{min(changes):+.2f} s, max {max(changes):+.2f} s; faster in {sum(c < 0 for c in changes)} of "
                      f"{len(changes)})", flush=True)
        for method in ("ours-cv", "ours-cv2"):
            if "parts" in rows.get(method, {}):
                print(f"{method} steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows[method]["parts"].items())
                      + f"; the rest {rows[method]['fit_s'] - sum(rows[method]['parts'].values()):.2f} s")
        if "ours-cv2" in rows:  # T(alphas) = shared + alphas x each: two grid sizes give both
            chol = rows["ours-chol"]["fit_s"]
            each = (rows["ours-cv"]["fit_s"] - rows["ours-cv2"]["fit_s"]) / (13 - 2)
            shared = rows["ours-cv2"]["fit_s"] - 2 * each
            print(f"ours-cv split: {shared:.2f} s shared by every alpha ({shared / chol:.1f}x one Cholesky fit) + "
                  f"{each:.2f} s per alpha ({13 * each / chol:.1f}x for 13 alphas)")
        results.append({"size": size, "n": n, "p": p, "t": t, "fits": rows})
        for f in data.glob("*.npy"):
            f.unlink()
    print("\n== NSD scale (analytic, not run): subj01 15,724 voxels x 257 x 768 = 197,376 targets; GB = 10^9 B")
    print("   Ridge.fit's memory by working_set (target blocks of 8,192), on top of X; the targets are the caller's:"
          " float16 in host memory as the trainer gathers them (n t x 2 B), or a memory map")
    for label, n in (("all training trials, repeats kept", 24980),
                     ("repeats averaged (MindEye1 / Brain-Diffuser)", 8859)):
        p, t = 15724, 197376
        form = "primal (p x p Gram)" if n >= p else "dual (n x n Gram)"
        print(f"n = {n:,} ({label}): {form}")
        for itemsize, name in ((8, "float64"), (4, "float32")):
            x_bytes, fit = n * p * itemsize / 1e9, working_set(n, p, t, True, screened=itemsize == 8) * itemsize / 1e9
            print(f"   {name}: X {x_bytes:.1f} GB + fit {fit:.1f} GB = {x_bytes + fit:.1f} GB on the fit's device "
                  f"(weights alone, p x t: {p * t * itemsize / 1e9:.1f} GB); targets {n * t * 2 / 1e9:.1f} GB "
                  f"in host memory, or none with a memory map")
        m = min(n, p)
        refit_flop = 2 * n * p * m + 2 * n * p * t + 2 * 2 * m * m * t  # Gram; X'Y or X'coef; Q'(.) and Q(.)
        v = 0.2 * n
        # per fold and alpha: L D M' (v^2 m), S (v^3), S L D (v^2 m), L D P P' (v m^2); once: P P' (m^2 t)
        cv_flop = 5 * 13 * 2 * (2 * v * v * m + 2 * v ** 3 + v * m * m) + 2 * m * m * t
        oof_flop = 5 * 2 * (v * p * t + v * v * t)  # oof_statistics: target, every fold's predictions formed
        group_flop = 5 * 2 * (2 * v * v * m + v ** 3) + 5 * 2 * 2 * n * t  # group: one alpha's traces, row sums
        print(f"   work: refit ~{refit_flop / 1e12:.0f} TFLOP + one eigh of {m:,} (~{9 * m ** 3 / 1e12:.0f} TFLOP); "
              f"CV (no refits, no per-alpha predictions) ~{cv_flop / 1e12:.0f} TFLOP; out-of-fold statistics "
              f"~{group_flop / 1e12:.1f} TFLOP by group (the default), ~{oof_flop / 1e12:.0f} TFLOP by target")
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
