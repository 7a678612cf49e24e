"""Linear probe (the CONTRIQUE protocol): a frozen backbone's per-image features, a ridge regressor fitted on the
training part of each split (penalty by cross-validation on that part only, folds grouped by content), the
usual metrics on the test part.

Features: the backbone's pooled vector of each evaluation crop (the eval_grid x eval_grid grid the predictor
scores), pooled over the image's crops as the predictor pools crop scores: a plain mean, or, for a trained
model with `pooling = saliency`, weighted by the softmax of the crop saliency scores (prior + learned logit)."""
from __future__ import annotations

import numpy as np
import torch

from ..data import make_loader
from .metrics import compute_metrics
from .ridge import RidgeProbe


@torch.no_grad()
def extract_features(model, cfg, pipeline, dataset, indices, device, num_workers: int | None = None) -> dict:
    """Pooled features of dataset[indices]. `model`: an IQANet (its heads give the saliency weights when
    cfg.pooling is "saliency") or a bare backbone (mean pooling). Returns dict(features float64 [n, F],
    mos [n], rows (dataset row of each feature), skipped names)."""
    backbone = getattr(model, "backbone", model)
    was_training = model.training
    model.eval()
    indices = [int(i) for i in indices]
    loader = make_loader(dataset.subset(indices), cfg.batch_size, shuffle=False, seed=cfg.seed,
                         num_workers=cfg.num_workers if num_workers is None else num_workers, decoder=cfg.decoder,
                         device=str(device))
    feats, mos, rows, skipped = [], [], [], []
    try:
        for batch in loader:
            skipped += list(batch["skipped"])
            B = batch["images"].shape[0]
            if B == 0:
                continue
            crops, prior = pipeline.eval_crops(batch["images"].to(device), batch["heights"], batch["widths"])
            f = backbone.forward_features(crops.flatten(0, 1)).float()
            f = f.view(B, crops.shape[1], -1)
            if cfg.pooling == "saliency" and hasattr(model, "saliency"):
                logits = model.saliency(f.flatten(0, 1))
                scores = cfg.prior_weight * prior + logits.float().view_as(prior)
                pooled = (torch.softmax(scores, dim=1)[..., None] * f).sum(1)
            else:
                pooled = f.mean(1)
            feats.append(pooled.double().cpu())
            mos.append(batch["mos"].double().cpu())
            rows += [indices[i] for i in batch["index"].tolist()]
    finally:
        model.train(was_training)
    return {"features": torch.cat(feats).numpy() if feats else np.zeros((0, 0)),
            "mos": torch.cat(mos).numpy() if mos else np.zeros(0), "rows": rows, "skipped": skipped}


def probe_split(extracted: dict, train_idx, test_idx, groups: list, folds: int = 5, seed: int = 0) -> dict:
    """Fit the ridge probe on the rows of train_idx (CV folds grouped by `groups[row]`) and score test_idx.
    Rows that were unreadable are left out. Returns dict(metrics, pred, mos, alpha, rows): `alpha` is the chosen
    penalty as a multiple of the number of training rows."""
    pos = {r: k for k, r in enumerate(extracted["rows"])}
    tr = [pos[int(i)] for i in train_idx if int(i) in pos]
    te = [pos[int(i)] for i in test_idx if int(i) in pos]
    if len(te) < 3:
        raise ValueError(f"probe: {len(te)} readable test images; need at least 3 for the metrics")
    X, y = extracted["features"], extracted["mos"]
    ridge = RidgeProbe(folds=folds, seed=seed).fit(X[tr], y[tr], [groups[extracted["rows"][k]] for k in tr])
    pred = ridge.predict(X[te])
    return {"metrics": compute_metrics(pred, y[te]), "pred": pred, "mos": y[te], "alpha": ridge.alpha,
            "rows": [extracted["rows"][k] for k in te]}
