"""ReffAKD: distil without a teacher, from autoencoder soft labels.

Trains ReffAKD's small autoencoder on the student's training images, turns
its class similarities into a soft-label table, and trains the student with
`(1−α)·CE + α·T²·KL(P[y] ‖ softmax(z_s/T))` beside the student alone.

    python recipes/reffakd.py
    python recipes/reffakd.py --dataset=cifar100 --student=resnet8x4 \
        --reffakd_alpha=0.9 --reffakd_temperature=5

`python recipes/reffakd.py --helpfull` documents every flag.
"""

from keras_kd.cli import distill

if __name__ == "__main__":
    distill.reffakd_main()
