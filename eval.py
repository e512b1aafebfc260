"""Evaluate checkpoints with real bitstreams: `python eval.py ckpt_path=<ckpts> data=<set>`.

`ckpt_path` is a checkpoint, a glob or a list of them (a rate sweep gives one RD curve). A list of
values of an encoding or decoding option sweeps one checkpoint into one curve, one point per value
(per combination when several options are lists): `encoding='{lmbda: [1, 2, 5, 10, 20]}'`,
`decoding='{steps: [1, 17, 65]}'`.

Several sets: `datasets=[kodak,tecnick]`; several GPUs: `torchrun --nproc_per_node=N eval.py ...`
(images are sharded over the ranks). Re-running the same command resumes where it stopped.
"""

from __future__ import annotations

import logging
from itertools import product
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from modules.base import load_codec
from modules.evaluation import (
    device_name,
    evaluate_point,
    init_distributed,
    metric_suite,
    rank_and_world,
    write_curve,
    write_summary,
)
from modules.utils import (
    ConfigError,
    expand_checkpoints,
    experiment_name_of,
    register_resolvers,
    task_wrapper,
)

log = logging.getLogger(__name__)
register_resolvers()
DATA_CONFIGS = Path(__file__).parent / "configs" / "data"


def dataset_configs(cfg: DictConfig) -> list[DictConfig]:
    """The data configs to evaluate: `datasets=[names]` (configs/data/<name>.yaml), else `data`."""
    if not cfg.get("datasets"):
        return [cfg.data]
    configs = []
    for name in cfg.datasets:
        path = DATA_CONFIGS / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in DATA_CONFIGS.glob("*.yaml"))
            raise ConfigError(f"datasets: no data config {name!r}; known: {known}")
        root = cfg.copy()
        with open_dict(root):
            root.data = OmegaConf.load(path)  # interpolations resolve against this run's paths
        configs.append(root.data)
    return configs


def point_label(ckpt_path: str, *options: dict[str, Any] | None) -> str:
    """Folder name of one point's results: experiment, file stem and the options given
    (encoding, then decoding)."""
    label = f"{experiment_name_of(ckpt_path)}-{Path(ckpt_path).stem}"
    for given in options:
        if given:
            label += "-" + ",".join(f"{k}={v}" for k, v in sorted(given.items()))
    return label


def option_grid(options: Any) -> list[dict[str, Any]]:
    """The settings an `encoding`/`decoding` option dict asks for: a list value is a sweep, and
    several lists give every combination ([{}] for no options)."""
    options = OmegaConf.to_container(options) if options else {}
    if not isinstance(options, dict):
        raise ConfigError(f"coding options must be a mapping like '{{steps: 17}}', not {options}")
    names = list(options)
    values = [v if isinstance(v, list) else [v] for v in options.values()]
    if any(not v for v in values):
        raise ConfigError(f"an option sweep needs at least one value, got {options}")
    return [dict(zip(names, combination, strict=True)) for combination in product(*values)]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of `cfg.ckpt_path` on every set; returns the RD curves by set."""
    checkpoints = expand_checkpoints(cfg.ckpt_path)
    device = init_distributed(cfg.device)
    rank, world = rank_and_world()
    settings = list(product(option_grid(cfg.encoding), option_grid(cfg.decoding)))
    out_dir = Path(cfg.paths.output_dir)
    metrics = metric_suite(cfg.metrics, device)
    sets = [hydra.utils.instantiate(c, _convert_="all") for c in dataset_configs(cfg)]
    points: dict[str, list[tuple[str, dict[str, Any]]]] = {d.test_name: [] for d in sets}
    hardware = f"{world} × {device_name(device)}"
    for ckpt_path in checkpoints:
        codec = load_codec(ckpt_path, map_location=device)
        for encoding, decoding in settings:
            codec.set_encoding(**encoding)
            codec.set_decoding(**decoding)
            label = point_label(ckpt_path, encoding, decoding)
            for datamodule in sets:
                results = evaluate_point(
                    codec,
                    datamodule.eval_images(),
                    metrics,
                    out_dir / datamodule.test_name / label,
                    name=experiment_name_of(ckpt_path),
                    description=f"{datamodule.test_name}; {ckpt_path}; {hardware}",
                    meta={
                        "checkpoint": str(Path(ckpt_path).resolve()),
                        "dataset": datamodule.test_name,
                    },
                    save_outputs=cfg.save_outputs,
                    resume=cfg.resume,
                    fid_min_patches=cfg.metrics.fid_min_patches,
                )
                points[datamodule.test_name].append((label, results))
    curves = {}
    if rank == 0:
        for dataset, dataset_points in points.items():
            curve_path = out_dir / dataset / "results.json"
            curves[dataset] = write_curve(curve_path, cfg.experiment_name, dataset, dataset_points)
        summary = write_summary(out_dir / "summary.md", curves, hardware)
        log.info(f"Results in {out_dir}\n{summary}")
    return curves


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
@task_wrapper
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
