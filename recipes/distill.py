"""Distil a student from a teacher and compare it with the student alone.

With no flags (the main job): scikit-learn's digits, offline; trains a
small teacher on the whole training split, then the small student alone and
with Hinton KD on the first 100 training images, prints a table (accuracy,
parameters, size) and exports the distilled student to TFLite.

    python recipes/distill.py
    python recipes/distill.py --dataset=cifar100 --teacher=resnet32x4 \
        --student=resnet8x4 --method=kd+fa --output_dir=runs/c100_kd_fa

`python recipes/distill.py --helpfull` documents every flag.
"""

from keras_kd.cli import distill

if __name__ == "__main__":
    distill.main()
