"""Train a model (typically a teacher) with cross-entropy.

    python recipes/train_teacher.py --model=digits_cnn_large \
        --output_dir=runs/teacher
    python recipes/distill.py --teacher=runs/teacher/model.keras

`python recipes/train_teacher.py --helpfull` documents every flag.
"""

from absl import flags

from keras_kd import recipes_lib

recipes_lib.define_common_flags(default_output_dir="runs/teacher")
flags.DEFINE_string(
    "model", None, "Zoo model name (see keras_kd.models.MODELS) or a .keras "
    "path to fine-tune. Protocol default: digits_cnn_large (digits), "
    "resnet32x4 (cifar).")

if __name__ == "__main__":
    recipes_lib.run(recipes_lib.train_teacher_main)
