"""Distil a small GPT-2 from a larger one on Python's own source code.

With no flags: offline, on the standard library's .py files (bytes);
trains a 4-layer teacher, the 2-layer student alone and with token-level
KD, and reports each model's held-out test perplexity in results.json.

    python recipes/distill_lm.py
    python recipes/distill_lm.py --method=jsd --on_policy_fraction=0.5 \
        --output_dir=runs/lm_gkd

`python recipes/distill_lm.py --helpfull` documents every flag.
"""

from keras_kd.cli import distill_lm

if __name__ == "__main__":
    distill_lm.main()
