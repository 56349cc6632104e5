"""Specialise a model to a few classes with SKD (feature-level KD only).

The teacher covers every class of the dataset (trained in the run, or
loaded with --teacher=PATH); the student has a head for the task's classes
only and learns from their labels and the teacher's feature maps. Reported
beside training from scratch, fine-tuning the teacher's backbone, and logit
KD against the teacher's renormalised softmax over the task classes.

    python recipes/specialize.py
    python recipes/specialize.py --dataset=cifar100 --teacher=runs/t/model.keras \
        --student=resnet8x4 --classes=beaver,dolphin,otter,seal,whale \
        --images_per_class=50

`python recipes/specialize.py --helpfull` documents every flag.
"""

from keras_kd.cli import specialize

if __name__ == "__main__":
    specialize.main()
