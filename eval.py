"""Evaluate checkpoints with real bitstreams: `python eval.py ckpt_path=<ckpts> data=<set>`.

`ckpt_path` is a checkpoint, a glob or a list of them (a rate sweep gives one RD curve). A list of
values of an encoding or decoding option sweeps one checkpoint into one curve, one point per value
(per combination when several options are lists): `encoding='{lmbda: [1, 2, 5, 10, 20]}'`,
`decoding='{steps: [1, 17, 65]}'`. Every point evaluated into the output folder stays in its
results.json and summary.md, one curve per sweep and fixed (single-valued) option setting.

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
    write_curves,
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


def curve_name(name: str, *options: dict[str, Any] | None) -> str:
    """Name of the RD curve of a sweep evaluated with the fixed (single-valued) options given."""
    fixed = {k: v for given in options if given for k, v in given.items()}
    if not fixed:
        return name
    return f"{name} ({', '.join(f'{k}={v}' for k, v in sorted(fixed.items()))})"


def data_settings(datamodule: Any) -> dict[str, Any]:
    """The evaluation set's settings that change a number (its folder resolved): resume key."""
    spec = {k: v for k, v in datamodule.specs["test"].items() if k != "homepage"}
    if spec.get("root") is not None:
        spec["root"] = str(Path(spec["root"]).resolve())
    return spec


def option_grid(options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The settings an `encoding`/`decoding` option dict asks for: a list value is a sweep, and
    several lists give every combination ([{}] for no options); and the fixed (non-list) ones,
    which name the curve."""
    options = OmegaConf.to_container(options) if options else {}
    if not isinstance(options, dict):
        raise ConfigError(f"coding options must be a mapping like '{{steps: 17}}', not {options}")
    names = list(options)
    values = [v if isinstance(v, list) else [v] for v in options.values()]
    if any(not v for v in values):
        raise ConfigError(f"an option sweep needs at least one value, got {options}")
    fixed = {k: v for k, v in options.items() if not isinstance(v, list)}
    return [dict(zip(names, combination, strict=True)) for combination in product(*values)], fixed


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of `cfg.ckpt_path` on every set; returns, per set, the
    results.json of its folder (every curve evaluated there)."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError(
            "ckpt_path is required: python eval.py ckpt_path=<checkpoint, glob or list> "
            "data=<set> (see python eval.py --help)"
        )
    checkpoints = expand_checkpoints(cfg.ckpt_path)
    device = init_distributed(cfg.device)
    rank, world = rank_and_world()
    (encodings, fixed_encoding), (decodings, fixed_decoding) = (
        option_grid(cfg.encoding),
        option_grid(cfg.decoding),
    )
    settings = list(product(encodings, decodings))
    curve = curve_name(cfg.experiment_name, fixed_encoding, fixed_decoding)
    out_dir = Path(cfg.paths.output_dir)
    metrics = metric_suite(cfg.metrics, device)
    sets = [hydra.utils.instantiate(c, _convert_="all") for c in dataset_configs(cfg)]
    hardware = f"{world} × {device_name(device)}"
    for ckpt_path in checkpoints:
        codec = load_codec(
            ckpt_path,
            map_location=device,
            backbone_path=cfg.backbone.path,
            weights_dir=cfg.paths.weights_dir,
        )
        for encoding, decoding in settings:
            codec.set_encoding(**encoding)
            codec.set_decoding(**decoding)
            label = point_label(ckpt_path, encoding, decoding)
            for datamodule in sets:
                evaluate_point(
                    codec,
                    datamodule.eval_images(),
                    metrics,
                    out_dir / datamodule.test_name / label,
                    name=experiment_name_of(ckpt_path),
                    description=f"{datamodule.test_name}; {ckpt_path}; {hardware}",
                    meta={
                        "checkpoint": str(Path(ckpt_path).resolve()),
                        "dataset": datamodule.test_name,
                        "data": data_settings(datamodule),
                    },
                    save_outputs=cfg.save_outputs,
                    resume=cfg.resume,
                    fid_min_patches=cfg.metrics.fid_min_patches,
                    curve=curve,
                )
    curves = {}
    if rank == 0:
        for datamodule in sets:
            dataset = datamodule.test_name
            curves[dataset] = write_curves(out_dir / dataset, dataset)
        summary = write_summary(out_dir / "summary.md", hardware)
        log.info(f"Results in {out_dir}\n{summary}")
    return curves


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
@task_wrapper
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
