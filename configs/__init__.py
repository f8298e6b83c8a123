"""The training configs (YAML), installed as ``refmatch.configs``: ``refmatch train --config
configs/NAME.yaml`` finds them outside the repository too."""
