"""``python -m sr_ablate evaluate``: evaluate bicubic or a trained run on any set and scale.

    python -m sr_ablate evaluate model=bicubic eval.data=<HR folder> scale=<s>
    python -m sr_ablate evaluate model=<MLflow run id | runs:/<id> | models:/<name>@<alias> |
        models:/<name>/<version> | final.pt> eval.sets=[set5,set14]

Other keys: any ``eval.*`` (protocol, color, tile, format=json ...), ``tracking.uri``,
``trainer.device``. Prints a per-image table and the mean per set; with ``eval.format=json``
the last line is one JSON object {"psnr", "ssim", "images": [{"name", "psnr", "ssim"}]}
(several sets: {"sets": {name: {...}}}).
"""
from __future__ import annotations

import json

import torch

from sr_ablate import UserError, tracking
from sr_ablate.cli.args import run
from sr_ablate.config.validation import validate
from sr_ablate.inference.trained import check_scale
from sr_ablate.training.job import build_evaluators
from sr_ablate.training.speed import pick_device


def load_model(spec: str, uri: str, scale: float, device) -> torch.nn.Module | None:
    """None for ``bicubic``; else the network at ``spec`` (a run id, ``runs:/<id>``,
    ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a final.pt file), on
    ``device``, refused in one line when it was trained for another scale."""
    if spec == "bicubic":
        return None
    trained = tracking.load_trained(spec, uri)
    check_scale(trained, scale)
    return trained.to(device).model


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, argv, _evaluate)


def _evaluate(argv: list[str]) -> int:
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("model=")), None)
    if spec is None:
        raise UserError("say what to evaluate: model=bicubic or model=<MLflow run id>")
    rest = [a for a in argv if not a.startswith("model=")]
    cfg = validate(rest, targets=())  # the model comes from model=, not from conf/model
    ev_cfg = cfg.eval
    sets = [ev_cfg.data] if ev_cfg.data else [s for s in ev_cfg.sets if s != "val"]
    if not sets:
        raise UserError("no evaluation set: pass eval.data=<HR folder> or eval.sets=[set5,...]")
    ev_cfg.sets = sets
    evaluators, tags = build_evaluators(ev_cfg, [cfg.scale], None)
    device = pick_device(cfg.trainer.device)
    model = None if spec == "bicubic" else load_model(
        spec, tracking.store_uri(cfg.tracking.uri), cfg.scale, device)
    results = {}
    for ev in evaluators:
        if model is None:
            metrics, rows = ev.bicubic_only()
        else:
            metrics = ev(model)
            rows = [{"image": r["image"], "psnr": r["psnr"], "ssim": r["ssim"]}
                    for r in ev.per_image]
        results[ev.prefix] = (metrics, rows)
        print(f"# {ev.prefix} x{cfg.scale} ({ev.protocol.name} protocol, {ev.protocol.color}, "
              f"model={spec}): {len(rows)} images in {metrics[f'{ev.prefix}/seconds']:.2f} s")
        print(f"{'image':<24} {'psnr':>8} {'ssim':>8}")
        for r in rows:
            print(f"{r['image']:<24} {r['psnr']:8.4f} {r['ssim']:8.4f}")
        mean_psnr, mean_ssim = metrics[f"{ev.prefix}/psnr"], metrics[f"{ev.prefix}/ssim"]
        print(f"{'mean':<24} {mean_psnr:8.4f} {mean_ssim:8.4f}")
    if cfg.eval.format == "json":
        objs = {name: {"psnr": m[f"{name}/psnr"], "ssim": m[f"{name}/ssim"],
                       "images": [{"name": r["image"], "psnr": r["psnr"], "ssim": r["ssim"]}
                                  for r in rows],
                       "scale": cfg.scale, "fingerprint": tags["eval.fingerprint"],
                       **{k: v for k, v in tags.items() if not k.startswith("eval.fingerprint")
                          and k.count(".") == 1}}
                for name, (m, rows) in results.items()}
        print(json.dumps(next(iter(objs.values())) if len(objs) == 1 else {"sets": objs}))
    return 0
