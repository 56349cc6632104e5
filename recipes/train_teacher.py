"""Train a model (typically a teacher) with cross-entropy.

    python recipes/train_teacher.py --model=digits_cnn_large \
        --output_dir=runs/teacher
    python recipes/distill.py --teacher=runs/teacher/model.keras

`python recipes/train_teacher.py --helpfull` documents every flag.
"""

from keras_kd.cli import train_teacher

if __name__ == "__main__":
    train_teacher.main()
