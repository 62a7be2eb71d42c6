"""Does fusion learn what no single modality shows? A diagnosis run on synthetic cohorts.

Builds a synthetic cohort (``--label-rule xor``: label = CT lesion XOR cardiac finding in the
note, each alone at chance; or ``majority``), ingests it in-process with a recipe, trains
every requested strategy plus unimodal baselines through the one loop
(``fusion.experiment.train_variant``) and prints, per variant: test AUROC with its 95% CI and
the number of test patients, best epoch, and the diagnostics that explain a failure:

* probe AUROC of each modality's pooled projected tokens for that modality's own latent
  finding (logistic regression fitted on train, scored on test): does the encoder see it?
* mean gradient norm per parameter group (encoders, projections, fusion, head) per epoch;
* attention entropy of cross-attention maps (normalised to [0, 1]: 1 = uniform).

Run: ``python bench/fusion_learning.py --patients 320 --fusion concat cross_attention``;
``--set key=value`` overrides the recipe as on the CLI (``--set train.max_epochs=40``).
The baseline this compares against is the unimodal models of the same run, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CLINFUSE_PSEUDONYM_KEY", "bench-key-0123456789abcdef")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import torch

from fusion.data import PreparedCohort
from fusion.experiment import Variant, split_cohort, train_variant
from fusion.train import make_loader
from modalities.errors import ConfigError
from modalities.ingest import ingest_manifest
from modalities.pseudonym import Pseudonymizer
from synth import SynthConfig, synth_cohort
from workflows.config import load_config


def _probe(model, cohort, rows, variant, truth, cfg) -> dict[str, float]:
    """Test AUROC of a logistic probe on each modality's pooled tokens for its finding."""
    from sklearn.linear_model import LogisticRegression

    out = {}
    for m in variant.modalities:
        feats, pats = [], []
        sub = rows[rows[f"{m}_status"] == "ok"]
        loader = make_loader(cohort.dataset(sub, [m]), _collate(cohort, [m]), cfg, False)
        model.eval()
        with torch.inference_mode():
            for batch in loader:
                tok = model.projections[m](model.encoders[m](**batch.inputs[m]))
                v = (tok.values * tok.mask.unsqueeze(-1)).sum(1) / tok.mask.sum(1, True)
                feats.append(v.numpy())
                pats += batch.patients
        x = np.concatenate(feats)
        y = truth.loc[pats, f"{m}_finding"].to_numpy()
        split = sub.set_index("patient").loc[pats, "split"].to_numpy()
        tr, te = split == "train", split == "test"
        if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
            continue
        clf = LogisticRegression(max_iter=2000).fit(x[tr], y[tr])
        from sklearn.metrics import roc_auc_score

        out[f"probe_{m}"] = float(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))
    return out


def _collate(cohort, mods):
    from fusion.data import Collator

    return Collator({m: cohort.mods[m] for m in mods}, cohort.task)


def _attention_entropy(model, cohort, rows, variant, cfg) -> float | None:
    """Mean normalised entropy of every cross-attention row on the test split."""
    has = np.zeros(len(rows), bool)
    for m in variant.modalities:
        has |= (rows[f"{m}_status"] == "ok").to_numpy()
    sub = rows[(rows["split"] == "test") & has]
    loader = make_loader(cohort.dataset(sub, list(variant.modalities)),
                         _collate(cohort, variant.modalities), cfg, False)
    ents = []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            out = model(batch.inputs, batch.present)
            for w in (out.get("attention") or {}).values():
                w = w.float().clamp_min(1e-12)
                n = w.shape[-1]
                if n < 2:
                    continue
                h = -(w * w.log()).sum(-1) / np.log(n)
                valid = w.sum(-1) > 0.5
                if valid.any():
                    ents.append(h[valid].mean().item())
    return float(np.mean(ents)) if ents else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=320)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label-rule", default="xor", choices=["xor", "majority"])
    ap.add_argument("--modalities", default="ct,note")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--fusion", nargs="+", default=["concat", "cross_attention"])
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    mods = [m.strip() for m in args.modalities.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clinfuse-fusion-bench-"))
    data = work / f"synth-{args.label_rule}-{args.patients}-{args.seed}"
    drop = [f"cohort.modalities.{m}=null" for m in ("ct", "mri", "note") if m not in mods]
    cfg = load_config(args.config, drop + args.overrides)
    t0 = time.perf_counter()
    if not (data / "manifest.csv").is_file():
        synth_cohort(data, patients=args.patients, seed=args.seed,
                     config=SynthConfig(label_rule=args.label_rule, modalities=tuple(mods)))
    import hashlib

    spec = hashlib.sha1(cfg.cohort.model_dump_json().encode()).hexdigest()[:10]
    prepared = work / f"prep-{data.name}-{spec}"
    try:
        cohort = PreparedCohort(prepared, cfg.cohort)
    except ConfigError:  # not prepared yet, or by another version of a modality: (re-)ingest
        ingest_manifest(data / "manifest.csv", cfg.cohort, data, prepared)
        cohort = PreparedCohort(prepared, cfg.cohort)
    print(f"data ready in {time.perf_counter() - t0:.1f}s ({work})", flush=True)

    rows = split_cohort(cohort, cfg.train)
    pseudo = Pseudonymizer.from_env()
    truth = pd.read_csv(data / "truth.csv", dtype={"patient_id": str})
    truth.index = [pseudo(p) for p in truth["patient_id"]]
    variants = [Variant(f, f, tuple(sorted(mods))) for f in args.fusion]
    if not args.no_baselines:
        variants += [Variant(f"unimodal_{m}", "concat", (m,)) for m in sorted(mods)]
    results = []
    for v in variants:
        t1 = time.perf_counter()
        hist: list[dict[str, float]] = []
        res = train_variant(cohort, rows, v, cfg.model, cfg.train,
                            on_epoch=lambda e, m, h=hist: h.append(m))
        met = res.test_metrics
        row = {
            "variant": v.name, "auroc": met.get("auroc"), "lo": met.get("auroc_ci_low"),
            "hi": met.get("auroc_ci_high"), "n_test": len(res.test.patients),
            "best_epoch": res.fit.best_epoch, "epochs": len(hist),
            "seconds": round(time.perf_counter() - t1, 1),
        }
        row |= _probe(res.model, cohort, rows, v, truth, cfg.train)
        ent = _attention_entropy(res.model, cohort, rows, v, cfg.train)
        if ent is not None:
            row["attn_entropy"] = ent
        grads = {k: float(np.mean([h[k] for h in hist if k in h]))
                 for k in hist[0] if k.startswith("grad_norm/")} if hist else {}
        row |= grads
        row["val_curve"] = [round(h.get("val_auroc", float("nan")), 3) for h in hist]
        row["train_loss_curve"] = [round(h.get("train_loss", float("nan")), 3) for h in hist]
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'variant':<18} {'AUROC':>6} {'95% CI':>14} {'n_test':>6} {'best/ep':>8}")
    for r in results:
        print(f"{r['variant']:<18} {r['auroc']:6.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
              f"{r['n_test']:>6} {r['best_epoch']:>3}/{r['epochs']:<3}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
