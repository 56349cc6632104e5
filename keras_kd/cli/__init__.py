"""The command-line recipes (the only place absl is used).

- `keras_kd.cli.flags`: flag definitions.
- `keras_kd.cli.protocols`: the `digits` and `cifar` training protocols.
- `keras_kd.cli.common`: errors, `run`, data/model resolution, phases.
- `keras_kd.cli.run_dir`: `flags.json` (resume or refuse) and `results.json`.
- `keras_kd.cli.report`: the printed configuration, table and export.
- `keras_kd.cli.distill`, `specialize`, `train_teacher`: the recipes, each
  with a `main` (the `keras-kd-*` console scripts; `recipes/*.py` call it).

Training itself is `keras_kd.training` (no absl) and the terms come from
`keras_kd.presets`.

Example (what `recipes/distill.py` does):

```python
from keras_kd.cli import distill

distill.main()
```
"""
