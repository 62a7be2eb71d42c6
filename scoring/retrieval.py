"""Batch scoring of retrieval (embedding) models: embedding columns, export, top-k neighbours.

A retrieval model (a task whose ``scores`` is False, e.g. ``contrastive``) outputs one
L2-normalised embedding per tower. Batch scoring stores them like any prediction, through
the same exactly-once store (``embedding_<tower>``: a list of float32, null where the row
lacks that tower), and after the last batch writes two files next to
``predictions.parquet`` from the store's current rows of the model version:

- ``embeddings.parquet`` (the search export): one row per (patient, tower) that has an
  embedding, sorted by tower then patient: ``patient`` (pseudonym), ``tower``,
  ``embedding`` (fixed-size list of ``dim`` float32, unit length), ``model_name``,
  ``model_version``, ``input_hash``; the schema metadata names the towers and the dim;
- ``neighbours.parquet``: for every ordered pair of distinct towers (query, gallery) and
  every patient with the query tower, its ``k`` nearest patients with the gallery tower by
  cosine similarity, the query patient's own partner included: ``query_patient``,
  ``query_tower``, ``gallery_tower``, ``rank`` (1..k), ``neighbour_patient``,
  ``similarity`` (float32), ``model_name``, ``model_version``. Exactly ``min(k, gallery
  size)`` rows per query and pair; ties are broken by the neighbour's pseudonym, so the file
  depends only on the stored embeddings (a resumed run writes the same rows).

- ``zero_shot.parquet`` (only when the model's recipe has ``cohort.zero_shot``): the
  class prompts are embedded once by the model's text tower (``fusion.zero_shot``, the same
  code training evaluates with) and every other tower's embedding is given its nearest
  class: ``patient``, ``tower``, ``prediction`` (the label value), ``similarity`` (cosine
  to that class's prompt, float32), one ``probability_<class>`` column per class (softmax
  of the cosines at the model's learned temperature, as CLIP does), ``model_name``,
  ``model_version``. One row per (patient, tower) with an embedding, sorted like the
  export.

All hold pseudonyms only. Memory: the current embeddings of the version are held once
(patients x towers x dim float32: 100,000 patients x 2 towers x 128 dims is 100 MB) and the
similarities are computed in blocks of ``BLOCK`` queries (``BLOCK`` x gallery floats).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusion.data import collate_samples
from fusion.tasks.contrastive import embedding_column
from fusion.zero_shot import prompt_embeddings, text_tower, zero_shot_config
from modalities.cache import atomic_write
from scoring.errors import ScoringError

EMBEDDINGS_FILE = "embeddings.parquet"
NEIGHBOURS_FILE = "neighbours.parquet"
ZERO_SHOT_FILE = "zero_shot.parquet"
DEFAULT_TOP_K = 5
BLOCK = 512  # queries per similarity block: BLOCK x gallery float32 at a time
DRIFT_SKIPPED = (
    "retrieval model: outputs are embeddings, not probabilities, so score drift (PSI, "
    "prior) does not apply; distribution.partner_recall is the embedding-level check"
)


def embedding_columns(towers: Sequence[str]) -> list[str]:
    """The store's output columns of a retrieval model, one per tower."""
    return [embedding_column(t) for t in towers]


def embedding_arrays(towers: Sequence[str], emb: np.ndarray) -> dict[str, pa.Array]:
    """(B, T, D) embeddings (NaN rows: tower absent) -> ``embedding_<tower>`` list<float32>
    arrays, null where the row lacks the tower."""
    emb = np.asarray(emb, dtype=np.float32)
    out: dict[str, pa.Array] = {}
    for k, t in enumerate(towers):
        block = emb[:, k]
        valid = ~np.isnan(block).any(1)
        flat = pa.array(np.where(valid[:, None], block, 0.0).reshape(-1), pa.float32())
        offsets = pa.array(np.arange(len(block) + 1, dtype=np.int32) * block.shape[1])
        lists = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~valid))
        out[embedding_column(t)] = lists
    return out


@dataclass
class Embeddings:
    """The current embeddings of one model version, rows sorted by patient pseudonym."""

    patients: list[str]
    hashes: list[str]
    towers: list[str]
    values: np.ndarray  # (N, T, D) float32, NaN where the patient lacks the tower

    def present(self, k: int) -> np.ndarray:
        return ~np.isnan(self.values[:, k]).any(1)


def read_embeddings(
    rows: Iterable[pa.Table], current: set[tuple[str, str]], towers: Sequence[str], dim: int
) -> Embeddings:
    """Collect the stored rows (``patient``, ``input_hash``, embedding columns) that are
    current (``Plan.current``), one per patient, sorted by pseudonym."""
    patients: list[str] = []
    hashes: list[str] = []
    parts: list[np.ndarray] = []
    for t in rows:
        pats = t.column("patient").to_pylist()
        hs = t.column("input_hash").to_pylist()
        keep = np.array([(p, h) in current for p, h in zip(pats, hs, strict=True)], bool)
        if not keep.any():
            continue
        t = t.filter(pa.array(keep))
        block = np.full((len(t), len(towers), dim), np.nan, np.float32)
        for k, tower in enumerate(towers):
            col = t.column(embedding_column(tower)).combine_chunks()
            valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
            if valid.any():
                vals = col.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
                block[valid, k] = np.asarray(vals, np.float32).reshape(int(valid.sum()), dim)
        patients += t.column("patient").to_pylist()
        hashes += t.column("input_hash").to_pylist()
        parts.append(block)
    values = (np.concatenate(parts) if parts
              else np.zeros((0, len(towers), dim), np.float32))
    order = np.argsort(np.asarray(patients, dtype=object), kind="stable")
    return Embeddings([patients[i] for i in order], [hashes[i] for i in order],
                      list(towers), values[order])


def top_k(query: np.ndarray, gallery: np.ndarray, gallery_ids: Sequence[str], k: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k') gallery indices and cosine similarities of each query's nearest rows, best
    first, ties broken by ``gallery_ids`` ascending; k' = min(k, len(gallery))."""
    q = _unit(query)
    g = _unit(gallery)
    kk = min(k, len(g))
    idx = np.zeros((len(q), kk), np.int64)
    sims = np.zeros((len(q), kk), np.float32)
    if kk == 0:
        return idx, sims
    # Gallery order by id: a stable sort on -similarity then keeps ids ascending in ties.
    by_id = np.argsort(np.asarray(gallery_ids, dtype=object), kind="stable")
    g = g[by_id]
    for lo in range(0, len(q), BLOCK):
        s = q[lo:lo + BLOCK] @ g.T  # (b, G)
        if kk < len(g):
            cand = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            kth = np.take_along_axis(s, cand, 1).min(1, keepdims=True)
            # A tie with the k-th best outside the chosen set: argpartition picked among
            # equals arbitrarily; order those rows fully (rare: exact float ties).
            for r in np.nonzero((s >= kth).sum(1) > kk)[0]:
                cand[r] = np.argsort(-s[r], kind="stable")[:kk]
        else:
            cand = np.broadcast_to(np.arange(len(g)), s.shape)
        cs = np.take_along_axis(s, cand, 1)
        # Best first; equal similarities by position, i.e. by id (the gallery is sorted).
        order = np.lexsort((cand, -cs), axis=1)
        cand = np.take_along_axis(cand, order, 1)
        idx[lo:lo + BLOCK] = by_id[cand]
        sims[lo:lo + BLOCK] = np.take_along_axis(cs, order, 1)
    return idx, sims


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (the model's are already; this makes the file cosine)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def neighbours_table(emb: Embeddings, k: int, model_name: str, model_version: str
                     ) -> tuple[pa.Table, dict[str, float]]:
    """Top-k neighbours for every ordered pair of distinct towers, and per pair the share
    of queries whose own partner is among them (``partner_recall``)."""
    cols: dict[str, list[Any]] = {c: [] for c in (
        "query_patient", "query_tower", "gallery_tower", "rank", "neighbour_patient",
        "similarity")}
    recall: dict[str, float] = {}
    ids = np.asarray(emb.patients, dtype=object)
    for a, qa in enumerate(emb.towers):
        for b, gb in enumerate(emb.towers):
            if a == b:
                continue
            qm, gm = emb.present(a), emb.present(b)
            q_rows, g_rows = np.nonzero(qm)[0], np.nonzero(gm)[0]
            idx, sims = top_k(emb.values[q_rows, a], emb.values[g_rows, b],
                              list(ids[g_rows]), k)
            n_q, kk = idx.shape
            found = g_rows[idx]  # (n_q, kk) row numbers of the neighbours
            cols["query_patient"] += np.repeat(ids[q_rows], kk).tolist()
            cols["query_tower"] += [qa] * (n_q * kk)
            cols["gallery_tower"] += [gb] * (n_q * kk)
            cols["rank"] += np.tile(np.arange(1, kk + 1), n_q).tolist()
            cols["neighbour_patient"] += ids[found.reshape(-1)].tolist()
            cols["similarity"] += sims.reshape(-1).tolist()
            has_partner = gm[q_rows]  # the query patient is in the gallery too
            if has_partner.any():
                hit = (found == q_rows[:, None]).any(1)
                recall[f"{qa}_to_{gb}"] = float(hit[has_partner].mean())
    n = len(cols["rank"])
    table = pa.table({
        "query_patient": pa.array(cols["query_patient"], pa.string()),
        "query_tower": pa.array(cols["query_tower"], pa.string()),
        "gallery_tower": pa.array(cols["gallery_tower"], pa.string()),
        "rank": pa.array(cols["rank"], pa.int32()),
        "neighbour_patient": pa.array(cols["neighbour_patient"], pa.string()),
        "similarity": pa.array(cols["similarity"], pa.float32()),
        "model_name": pa.array([model_name] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
    })
    return table, recall


def embeddings_table(emb: Embeddings, model_name: str, model_version: str) -> pa.Table:
    """The search export: one row per (patient, tower) with an embedding."""
    dim = emb.values.shape[2]
    pats: list[str] = []
    towers: list[str] = []
    hashes: list[str] = []
    vecs: list[np.ndarray] = []
    for k, t in enumerate(emb.towers):
        m = emb.present(k)
        pats += [p for p, keep in zip(emb.patients, m, strict=True) if keep]
        hashes += [h for h, keep in zip(emb.hashes, m, strict=True) if keep]
        towers += [t] * int(m.sum())
        vecs.append(emb.values[m, k])
    flat = np.concatenate(vecs).reshape(-1) if vecs else np.zeros(0, np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    meta = {b"clinfuse.towers": ",".join(emb.towers).encode(),
            b"clinfuse.embedding_dim": str(dim).encode(),
            b"clinfuse.normalisation": b"L2 (unit length): dot product = cosine similarity"}
    n = len(pats)
    return pa.table({
        "patient": pa.array(pats, pa.string()),
        "tower": pa.array(towers, pa.string()),
        "embedding": vectors,
        "model_name": pa.array([model_name] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "input_hash": pa.array(hashes, pa.string()),
    }).replace_schema_metadata(meta)


@dataclass(frozen=True)
class ZeroShotPrompts:
    """Class prompts embedded by a retrieval model's text tower (``cohort.zero_shot``)."""

    text: str  # the tower that embedded them (its own rows are not classified)
    classes: list[str]  # label values, in class-index order
    embeddings: np.ndarray  # (K, D) unit vectors
    scale: float  # the model's learned logit scale (softmax temperature)


def zero_shot_prompts(predictor: Any) -> ZeroShotPrompts | None:
    """The prompts of a retrieval ``fusion.predictor.Predictor`` whose recipe sets
    ``cohort.zero_shot`` and whose model has that text tower; None otherwise."""
    zs = zero_shot_config(predictor.cohort)
    if zs is None or predictor.towers is None:
        return None
    tower = text_tower(predictor.cohort, zs)
    if tower not in predictor.towers:
        return None
    head = predictor.model.head
    emb = prompt_embeddings(
        predictor.model, tower, zs.prompts(), predictor.mods,
        lambda items: collate_samples(items, predictor.mods, predictor.task_rules),
        predictor.device, predictor.task_rules)
    scale = float(head.logit_scale.detach().clamp(max=np.log(100.0)).exp())
    return ZeroShotPrompts(tower, list(zs.class_words()), emb, scale)


def zero_shot_table(emb: Embeddings, zs: ZeroShotPrompts, model_name: str,
                    model_version: str) -> pa.Table:
    """Nearest class prompt, its cosine and the class probabilities per (patient, tower)."""
    pats: list[str] = []
    towers: list[str] = []
    sims: list[np.ndarray] = []
    for k, t in enumerate(emb.towers):
        if t == zs.text:
            continue
        m = emb.present(k)
        pats += [p for p, keep in zip(emb.patients, m, strict=True) if keep]
        towers += [t] * int(m.sum())
        sims.append(_unit(emb.values[m, k]) @ zs.embeddings.T.astype(np.float32))
    cos = np.concatenate(sims) if sims else np.zeros((0, len(zs.classes)), np.float32)
    logits = zs.scale * cos
    prob = np.exp(logits - logits.max(1, keepdims=True)) if len(cos) else cos
    prob = prob / prob.sum(1, keepdims=True) if len(cos) else prob
    best = cos.argmax(1) if len(cos) else np.zeros(0, int)
    n = len(pats)
    cols: dict[str, pa.Array] = {
        "patient": pa.array(pats, pa.string()),
        "tower": pa.array(towers, pa.string()),
        "prediction": pa.array([zs.classes[i] for i in best], pa.string()),
        "similarity": pa.array(cos[np.arange(n), best] if n else [], pa.float32()),
    }
    for j, c in enumerate(zs.classes):
        cols[f"probability_{c}"] = pa.array(prob[:, j] if n else [], pa.float32())
    cols["model_name"] = pa.array([model_name] * n, pa.string())
    cols["model_version"] = pa.array([model_version] * n, pa.string())
    return pa.table(cols)


def write_table(table: pa.Table, path: Path) -> None:
    """Write ``path`` atomically (a reader sees the old file or the new one)."""
    try:
        atomic_write(path, lambda p: pq.write_table(table, p))
    except OSError as err:
        raise ScoringError(f"could not write {path} ({type(err).__name__}); check disk "
                           "space and permissions, then re-run (nothing is scored again)"
                           ) from None


def export_retrieval(
    rows: Iterable[pa.Table], current: set[tuple[str, str]], towers: Sequence[str],
    dim: int, out: Path | None, k: int, model_name: str, model_version: str,
    zero_shot: ZeroShotPrompts | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the version's current embeddings, write the export, the neighbours and (with
    ``zero_shot``) the zero-shot classes under ``out`` (when given); return the summary's
    ``distribution`` and ``extras``."""
    emb = read_embeddings(rows, current, towers, dim)
    neighbours, recall = neighbours_table(emb, k, model_name, model_version)
    distribution: dict[str, Any] = {
        "n": len(emb.patients),
        "embeddings": {t: int(emb.present(i).sum()) for i, t in enumerate(emb.towers)},
        "partner_recall": {"k": k, **recall},
    }
    extras: dict[str, Any] = {"top_k": k, "neighbour_rows": neighbours.num_rows}
    if out is not None:
        write_table(embeddings_table(emb, model_name, model_version), out / EMBEDDINGS_FILE)
        write_table(neighbours, out / NEIGHBOURS_FILE)
        extras |= {"embeddings_path": str(out / EMBEDDINGS_FILE),
                   "neighbours_path": str(out / NEIGHBOURS_FILE)}
    if zero_shot is not None:
        table = zero_shot_table(emb, zero_shot, model_name, model_version)
        counts = Counter(table.column("prediction").to_pylist())
        distribution["zero_shot"] = {"classes": zero_shot.classes, "text": zero_shot.text,
                                     "predicted": {c: counts.get(c, 0)
                                                   for c in zero_shot.classes}}
        extras["zero_shot_rows"] = table.num_rows
        if out is not None:
            write_table(table, out / ZERO_SHOT_FILE)
            extras["zero_shot_path"] = str(out / ZERO_SHOT_FILE)
    return distribution, extras
