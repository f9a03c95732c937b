"""Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator computes them: k-th
nearest-neighbour radii of feature manifolds and membership in them, from float16 pairwise distances
(recomputed in float32 per reference block when a float16 value is not finite; see
:mod:`evaluations.metrics`), in torch, in bounded memory."""

import contextlib

import numpy as np

from .fp16_norms import _ceil_div, _torch, fp16_squared_norms

__all__ = ["manifold_radii", "manifold_membership", "manifold_coverage", "precision_recall"]

# The reference decides between float16 and float32 per block of this many rows x columns.
REFERENCE_BLOCK = 10000


def resolve_device(device):
    """A torch device: the given one, else CUDA when available, else the CPU."""
    torch = _torch()
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """Keep float32 matmuls in full float32 (no TF32 / bf16 shortcuts) inside the block, whatever the
    caller configured; the previous settings are restored afterwards."""
    torch = _torch()
    backends = [
        getattr(getattr(torch.backends, name, None), "matmul", None) for name in ("cuda", "mkldnn")
    ]
    backends = [b for b in backends if b is not None and hasattr(b, "fp32_precision")]
    if backends:  # torch >= 2.9
        saved = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "ieee"
        try:
            yield
        finally:
            for b, value in zip(backends, saved):
                b.fp32_precision = value
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _Features:
    """Features on the compute device with the squared norms both code paths need."""

    def __init__(self, feats, device, norms="tf_cpu"):
        torch = _torch()
        if hasattr(feats, "detach"):
            x = feats.detach().to(device=device, dtype=torch.float32)
        else:
            arr = np.asarray(feats)
            if arr.ndim != 2:
                raise ValueError(f"features must be a 2-D array [N, D]; got shape {arr.shape}")
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
        if x.ndim != 2:
            raise ValueError(f"features must be a 2-D array [N, D]; got shape {tuple(x.shape)}")
        self.x = x.contiguous()
        self.norm16 = fp16_squared_norms(self.x, norms)
        self.norm32 = torch.sum(self.x * self.x, dim=1)
        self._x16 = None
        self._mkldnn = {}

    def x16_mkldnn(self, rows):
        """``x16[rows]`` in oneDNN layout, converted once per row range (CPU only, else ``None``)."""
        if not _use_mkldnn(self.x):
            return None
        key = (rows.start, rows.stop)
        if key not in self._mkldnn:
            if len(self._mkldnn) >= 64:
                self._mkldnn.clear()
            self._mkldnn[key] = self.x16[rows].contiguous().to_mkldnn()
        return self._mkldnn[key]

    @property
    def x16(self):
        """The features rounded to float16, held as float32 (exactly) for a fast float32 GEMM."""
        if self._x16 is None:
            torch = _torch()
            self._x16 = self.x.to(torch.float16).to(torch.float32)
        return self._x16

    def __len__(self):
        return self.x.shape[0]


_MKLDNN_USABLE = None


def _use_mkldnn(t):
    torch = _torch()
    return t.device.type == "cpu" and _MKLDNN_USABLE is not False and torch.backends.mkldnn.is_available()


def _matmul_nt(a, b, a_mk=None, b_mk=None):
    """``a @ b.T`` in float32.  On CPU through oneDNN when torch has it: as exact, and on some CPUs
    (e.g. AMD, where MKL's SGEMM runs a slower code path) much faster than the default BLAS.
    ``a_mk`` / ``b_mk`` are the operands already converted with ``to_mkldnn()``, if at hand."""
    global _MKLDNN_USABLE
    torch = _torch()
    if _use_mkldnn(a):
        try:
            a_mk = a.contiguous().to_mkldnn() if a_mk is None else a_mk
            b_mk = b.contiguous().to_mkldnn() if b_mk is None else b_mk
            out = torch.nn.functional.linear(a_mk, b_mk).to_dense()
            _MKLDNN_USABLE = True
            return out
        except (RuntimeError, NotImplementedError):  # pragma: no cover - build without the kernel
            _MKLDNN_USABLE = False
    return torch.matmul(a, b.T)


def _dot16(u, v, rows, cols):
    """``u[rows] . v[cols]^T`` as a float16 GEMM computes it: float16 inputs, float32 accumulation,
    result rounded to float16.  It runs as a float32 GEMM on the float16-rounded inputs, which gives the
    same values and is much faster on CPUs without native float16 arithmetic."""
    torch = _torch()
    return _matmul_nt(u.x16[rows], v.x16[cols], u.x16_mkldnn(rows), v.x16_mkldnn(cols)).to(torch.float16)


def _combine16(norm_rows, dot16, norm_cols):
    """``max(norm_rows - 2 dot + norm_cols, 0)`` evaluated left to right, every op rounded to float16."""
    torch = _torch()
    return torch.clamp_min((norm_rows[:, None] - 2 * dot16) + norm_cols[None, :], 0)


def _distances_fp16(u, v, rows, cols):
    """Squared distances with the reference's float16 semantics (see the module docstring)."""
    return _combine16(u.norm16[rows], _dot16(u, v, rows, cols), v.norm16[cols])


def _distances_fp32(u, v, rows, cols):
    torch = _torch()
    dot = _matmul_nt(u.x[rows], v.x[cols])
    return torch.clamp_min((u.norm32[rows, None] - 2 * dot) + v.norm32[None, cols], 0)


def _all_finite(d):
    # distances are >= 0 after the clamp, so the maximum is finite iff every value is (NaN propagates)
    torch = _torch()
    return bool(torch.isfinite(d.amax()))


def _row_chunk(num_cols, max_elements):
    return max(1, min(REFERENCE_BLOCK, max_elements // max(1, num_cols)))


def _default_max_elements(device):
    return 1 << 27 if device.type == "cuda" else 1 << 23


def _reduce_block(u, v, rows, cols, reduce_fn, chunk_rows, fp16=True):
    """Apply ``reduce_fn(dist, row_slice)`` to row chunks of the ``rows x cols`` distance block.

    The block is first computed in float16; if any of its values is not finite, the whole block is
    recomputed in float32 (the reference's per-block fallback).  Returns ``[(row_slice, result)]``.
    """
    torch = _torch()
    if fp16:
        results = []
        for start in range(rows.start, rows.stop, chunk_rows):
            sub = slice(start, min(start + chunk_rows, rows.stop))
            d = _distances_fp16(u, v, sub, cols)
            if not _all_finite(d):
                break
            results.append((sub, reduce_fn(d.to(torch.float32), sub)))
        else:
            return results
    results = []
    for start in range(rows.start, rows.stop, chunk_rows):
        sub = slice(start, min(start + chunk_rows, rows.stop))
        results.append((sub, reduce_fn(_distances_fp32(u, v, sub, cols), sub)))
    return results


def _reduce_blocks(u, v, row_batch_size, col_batch_size, max_block_elements, reduce_fn):
    """Apply ``reduce_fn(dist, row_slice, col_slice)`` to the whole ``u x v`` distance matrix, block by block
    (row blocks outermost) and in row chunks of at most ``max_block_elements`` distances, each block as
    :func:`_reduce_block` computes it.  Yields ``(row_slice, col_slice, result)`` per chunk."""
    max_elements = max_block_elements or _default_max_elements(u.x.device)
    for r0 in range(0, len(u), row_batch_size):
        rows = slice(r0, min(r0 + row_batch_size, len(u)))
        for c0 in range(0, len(v), col_batch_size):
            cols = slice(c0, min(c0 + col_batch_size, len(v)))
            chunk = _row_chunk(cols.stop - cols.start, max_elements)
            def reduce_block(d, sub, cols=cols):
                return reduce_fn(d, sub, cols)
            for sub, result in _reduce_block(u, v, rows, cols, reduce_block, chunk):
                yield sub, cols, result


def _smallest_in_rows(f, rows, cols, keep, chunk, fp16=True):
    """The ``keep`` smallest distances of each row of the ``rows x cols`` block (unsorted)."""
    torch = _torch()
    keep = min(keep, cols.stop - cols.start)

    def smallest(d, _sub):
        return torch.topk(d, keep, dim=1, largest=False, sorted=False).values

    return torch.cat([p for _, p in _reduce_block(f, f, rows, cols, smallest, chunk, fp16)], dim=0)


def _merge_smallest(best, new, keep):
    """Keep the ``keep`` smallest of ``best`` and ``new`` along dim 1 (both ``[rows, *]``)."""
    torch = _torch()
    both = torch.cat([best, new], dim=1)
    return torch.topk(both, keep, dim=1, largest=False, sorted=False).values


def manifold_radii(
    feats,
    k=3,
    *,
    device=None,
    row_batch_size=REFERENCE_BLOCK,
    col_batch_size=REFERENCE_BLOCK,
    max_block_elements=None,
    norms="tf_cpu",
    _prepared=None,
):
    """Squared distance from each row of ``feats`` to its k-th nearest neighbour in ``feats``.

    The row itself (distance 0, or its float16 rounding) counts as a neighbour, as in the reference's
    ``np.partition(..., kth=k)``: the radius is the (k+1)-th smallest squared distance.  Returns float32
    ``[N]``.

    With equal row and column block sizes (the default) only half of the GEMMs are done: for sub-blocks
    ``p != q`` one product ``x_p . x_q^T`` gives both ``D[p, q] = (|x_p|^2 - 2 x_p.x_q) + |x_q|^2`` and
    ``D[q, p] = (|x_q|^2 - 2 x_p.x_q) + |x_p|^2``, each rounded as the reference rounds it.  The float32
    fallback is still decided per reference block (``row_batch_size x col_batch_size``).
    """
    torch = _torch()
    device = resolve_device(device)
    f = _prepared if _prepared is not None else _Features(feats, device, norms)
    n = len(f)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if n < k + 1:
        raise ValueError(
            f"precision/recall with k={k} needs at least {k + 1} feature rows per set; got {n}. "
            "Evaluate more samples (or lower k)."
        )
    max_elements = max_block_elements or _default_max_elements(device)
    keep = k + 1
    with torch.no_grad(), _ieee_fp32_matmul():
        if row_batch_size != col_batch_size:
            radii = np.empty(n, dtype=np.float32)
            for r0 in range(0, n, row_batch_size):
                rows = slice(r0, min(r0 + row_batch_size, n))
                parts = []
                for c0 in range(0, n, col_batch_size):
                    cols = slice(c0, min(c0 + col_batch_size, n))
                    chunk = _row_chunk(cols.stop - cols.start, max_elements)
                    parts.append(_smallest_in_rows(f, rows, cols, keep, chunk))
                cand = torch.cat(parts, dim=1)
                radii[rows] = torch.kthvalue(cand, keep, dim=1).values.cpu().numpy()
            return radii

        block = row_batch_size
        num_tiles = _ceil_div(n, block)
        side = max(1, min(block, int(max_elements**0.5)))
        # sub-blocks never straddle a reference block
        subs = [
            (t, slice(s, min(s + side, (t + 1) * block, n)))
            for t in range(num_tiles)
            for s in range(t * block, min((t + 1) * block, n), side)
        ]
        inf = float("inf")
        # best[i, t]: the `keep` smallest float16 distances from row i to the columns of block t
        best = torch.full((n, num_tiles, keep), inf, device=device)
        finite = np.ones((num_tiles, num_tiles), dtype=bool)
        for pi, (tp, p) in enumerate(subs):
            norm_p = f.norm16[p]
            for tq, q in subs[pi:]:
                if not (finite[tp, tq] or finite[tq, tp]):
                    continue
                dot = _dot16(f, f, p, q)
                norm_q = f.norm16[q]
                if finite[tp, tq]:
                    d = _combine16(norm_p, dot, norm_q)
                    if _all_finite(d):
                        take = min(keep, d.shape[1])
                        small = torch.topk(d, take, dim=1, largest=False).values.to(torch.float32)
                        best[p, tq] = _merge_smallest(best[p, tq], small, keep)
                    else:
                        finite[tp, tq] = False
                if q != p and finite[tq, tp]:
                    # rows of q against the columns of p, laid out as [p, q]: reduce over dim 0
                    d = torch.clamp_min((norm_q[None, :] - 2 * dot) + norm_p[:, None], 0)
                    if _all_finite(d):
                        take = min(keep, d.shape[0])
                        small = torch.topk(d, take, dim=0, largest=False).values.to(torch.float32)
                        best[q, tp] = _merge_smallest(best[q, tp], small.T, keep)
                    else:
                        finite[tq, tp] = False
        # reference blocks with a non-finite float16 value: float32 distances, as the reference does
        for ti, tj in zip(*np.nonzero(~finite)):
            rows = slice(ti * block, min((ti + 1) * block, n))
            cols = slice(tj * block, min((tj + 1) * block, n))
            chunk = _row_chunk(cols.stop - cols.start, max_elements)
            small = _smallest_in_rows(f, rows, cols, keep, chunk, fp16=False)
            fill = torch.full((small.shape[0], keep), inf, device=device)
            fill[:, : small.shape[1]] = small
            best[rows, tj] = fill
        radii = torch.kthvalue(best.reshape(n, -1), keep, dim=1).values
    return radii.cpu().numpy()


def _paired_features(ref_feats, sample_feats, device, norms):
    """The reference and sample features on `device`, checked to have one dimension."""
    u, v = _Features(ref_feats, device, norms), _Features(sample_feats, device, norms)
    if u.x.shape[1] != v.x.shape[1]:
        raise ValueError(
            f"reference and sample features differ in dimension: {u.x.shape[1]} vs {v.x.shape[1]}"
        )
    return u, v


class _MembershipScan:
    """The comparisons behind manifold membership, block by block, with the options of
    :func:`manifold_membership`: features and radii on the device, checked to pair up."""

    def __init__(self, ref_feats, ref_radii, sample_feats, sample_radii, *, device=None,
                 row_batch_size=REFERENCE_BLOCK, col_batch_size=REFERENCE_BLOCK, max_block_elements=None,
                 norms="tf_cpu", _prepared=None):
        torch = _torch()
        self.device = resolve_device(device)
        if _prepared is None:
            _prepared = _paired_features(ref_feats, sample_feats, self.device, norms)
        self.ref, self.sample = _prepared
        self.ref_radii, self.sample_radii = (
            torch.as_tensor(np.asarray(r, dtype=np.float32).reshape(-1), device=self.device)
            for r in (ref_radii, sample_radii))
        if self.ref_radii.shape[0] != len(self.ref) or self.sample_radii.shape[0] != len(self.sample):
            raise ValueError("radii must have one entry per feature row")
        self.block_options = (row_batch_size, col_batch_size, max_block_elements)

    def none_inside(self, n):
        """`n` False values on the device, for results to be or-ed into."""
        torch = _torch()
        return torch.zeros(n, dtype=torch.bool, device=self.device)

    def blocks(self, reduce_inside):
        """Yields ``(sub, cols, reduce_inside(inside), covered)`` per row chunk ``sub`` of the reference and
        column block ``cols`` of the samples: ``inside[i, j]`` says whether reference point ``sub[i]`` is in
        the ball of sample ``cols[j]``, ``covered[j]`` whether sample ``cols[j]`` is in the ball of some
        reference point of the chunk."""
        torch = _torch()

        def compare(d, sub, cols):
            return reduce_inside(d <= self.sample_radii[None, cols]), (d <= self.ref_radii[sub, None]).any(dim=0)

        with torch.no_grad(), _ieee_fp32_matmul():
            for sub, cols, (inside, covered) in _reduce_blocks(self.ref, self.sample, *self.block_options, compare):
                yield sub, cols, inside, covered


def manifold_membership(ref_feats, ref_radii, sample_feats, sample_radii, **options):
    """Which samples fall inside some reference ball, and which reference points inside some sample ball.

    Returns boolean arrays ``(sample_in_ref_manifold [N_sample], ref_in_sample_manifold [N_ref])``;
    their means are precision and recall.  A point is inside a ball when its squared distance to the
    centre is ``<=`` the centre's radius.  The keyword options are ``device`` (default: CUDA when
    available), ``row_batch_size`` and ``col_batch_size`` (the block the reference decides between float16
    and float32 for), ``max_block_elements`` (distances computed at once; default by device) and ``norms``
    (see :mod:`evaluations.fp16_norms`).
    """
    scan = _MembershipScan(ref_feats, ref_radii, sample_feats, sample_radii, **options)
    ref_in, smp_in = scan.none_inside(len(scan.ref)), scan.none_inside(len(scan.sample))
    # ref row i is covered when some sample j has d_ij <= radius_j, and vice versa.
    for sub, cols, ref_hit, smp_hit in scan.blocks(lambda inside: inside.any(dim=1)):
        ref_in[sub] |= ref_hit
        smp_in[cols] |= smp_hit
    return smp_in.cpu().numpy(), ref_in.cpu().numpy()


def precision_recall(
    ref_feats,
    sample_feats,
    k=3,
    *,
    device=None,
    ref_radii=None,
    sample_radii=None,
    row_batch_size=REFERENCE_BLOCK,
    col_batch_size=REFERENCE_BLOCK,
    max_block_elements=None,
    norms="tf_cpu",
):
    """Improved precision and recall of ``sample_feats`` against ``ref_feats`` (k-NN manifolds).

    precision = fraction of samples inside the reference manifold; recall = fraction of reference points
    inside the sample manifold; returns the pair ``(precision, recall)``.  Radii are computed with
    :func:`manifold_radii` unless given.
    """
    device = resolve_device(device)
    u, v = _paired_features(ref_feats, sample_feats, device, norms)
    for name, f in (("reference", u), ("sample", v)):
        if len(f) < k + 1:
            raise ValueError(
                f"precision/recall with k={k} needs at least {k + 1} {name} feature rows; got {len(f)}. "
                "Evaluate more images (or lower k)."
            )
    opts = dict(
        device=device,
        row_batch_size=row_batch_size,
        col_batch_size=col_batch_size,
        max_block_elements=max_block_elements,
    )
    if ref_radii is None:
        ref_radii = manifold_radii(None, k, _prepared=u, **opts)
    if sample_radii is None:
        sample_radii = manifold_radii(None, k, _prepared=v, **opts)
    smp_in, ref_in = manifold_membership(
        None, ref_radii, None, sample_radii, _prepared=(u, v), **opts
    )
    precision = float(np.count_nonzero(smp_in)) / len(smp_in)
    recall = float(np.count_nonzero(ref_in)) / len(ref_in)
    return precision, recall


def manifold_coverage(ref_feats, ref_radii, sample_feats, sample_radii, *, max_pairs=1 << 27, **options):
    """Which samples fall inside the reference manifold, and which sample balls hold each reference point.

    Returns ``(sample_in_ref_manifold [N_sample], (ref_index, sample_index))``: the pairs with the reference
    point inside the sample's ball, as int64 arrays (``None`` when there would be more than ``max_pairs``).
    The distances and comparisons are those of :func:`manifold_membership`, so the reference rows that appear
    in some pair are exactly its ``ref_in_sample_manifold``.  The pairs give the recall of any subset (or
    resample) of the samples with their radii kept, without computing a distance again.
    """
    torch = _torch()
    scan = _MembershipScan(ref_feats, ref_radii, sample_feats, sample_radii, **options)
    smp_in = scan.none_inside(len(scan.sample))
    ref_idx, smp_idx, count = [], [], 0
    for sub, cols, hits, smp_hit in scan.blocks(torch.nonzero):
        smp_in[cols] |= smp_hit
        if ref_idx is None:
            continue
        count += hits.shape[0]
        if count > max_pairs:
            ref_idx = smp_idx = None
            continue
        ref_idx.append((hits[:, 0] + sub.start).cpu().numpy())
        smp_idx.append((hits[:, 1] + cols.start).cpu().numpy())
    if ref_idx is None:
        return smp_in.cpu().numpy(), None
    empty = np.zeros(0, np.int64)
    return smp_in.cpu().numpy(), (
        np.concatenate(ref_idx) if ref_idx else empty,
        np.concatenate(smp_idx) if smp_idx else empty,
    )
