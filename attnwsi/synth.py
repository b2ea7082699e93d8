"""python -m attnwsi.synth out=DIR n_slides=N seed=S : write a synthetic haystack data set."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from attnwsi.console import entry_point
from attnwsi.data.synthetic import HaystackSpec, generate_haystack


@hydra.main(version_base="1.3", config_path="../conf", config_name="synth")
@entry_point
def main(cfg: DictConfig) -> None:
    options = OmegaConf.to_container(cfg, resolve=True)
    out, workers = options.pop("out"), options.pop("workers")
    with Console().status(f"writing {options['n_slides']} slides into {out}"):
        generate_haystack(out, HaystackSpec(**options), workers=workers)
    Console().print(f"{out}: slides/, annotations/, labels.csv")


if __name__ == "__main__":
    main()
